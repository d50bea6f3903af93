"""The flight recorder's file format (`core.enforce.recfmt`) and timeline (`core.enforce.timeline`): pure,
no file and no server; tables and properties."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.core.enforce.recfmt import (
    HEADER_SIZE,
    INDEX_OFFSET,
    KIND_FROZEN,
    KIND_RING,
    RECORD,
    RECORD_SIZE,
    VERSION,
    Entry,
    FormatError,
    Header,
    decode,
    frozen_file,
    pack_entry,
    pack_header,
    read_header,
    ring_slots,
    short_id,
)
from killswitch.core.enforce.timeline import NS, Span, around, kill_time, merge, select

NAMES = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)


def entry(seq: int, t_ns: int | None = None, host: str = "or-01", **kw: object) -> Entry:
    fields: dict[str, object] = {
        "t_ns": seq * 1000 if t_ns is None else t_ns, "node": "smars", "host": host, "seq": seq,
        "source": "line", "order_id": f"o{seq}", "symbol": "KCG", "side": "BUY", "qty": 100,
        "price": 10.5, "decision": "allow", "reason": "", "epoch": 3, "release": "abcdef012345",
        "limits": "",
    }  # fmt: skip
    fields.update(kw)
    return Entry(**fields)  # type: ignore[arg-type]


def ring_bytes(slots: int, entries: list[Entry], host: str = "or-01") -> bytearray:
    """A ring as the writer leaves it: each record packed into slot seq % slots, then the
    header's index moved past it."""
    buf = bytearray(HEADER_SIZE + slots * RECORD_SIZE)
    buf[:HEADER_SIZE] = pack_header(Header(VERSION, slots, 1, 0, KIND_RING, "smars", host))
    for e in entries:
        off = HEADER_SIZE + e.seq % slots * RECORD_SIZE
        buf[off : off + RECORD_SIZE] = pack_entry(e)
        struct.pack_into("<Q", buf, INDEX_OFFSET, e.seq + 1)
    return buf


class TestLayout:
    def test_sizes_are_fixed(self) -> None:
        """A header is 256 bytes and a record 160, whatever the platform."""
        assert (HEADER_SIZE, RECORD_SIZE) == (256, 160)

    @pytest.mark.parametrize(
        ("digest", "stored", "shown"),
        [
            ("ab" * 32, bytes.fromhex("ab" * 8), "abababababab"),
            ("", bytes(8), ""),
            ("not hex at all", bytes(8), ""),
            ("abc", bytes(8), ""),  # an odd hex length is no digest
        ],
    )
    def test_short_ids(self, digest: str, stored: bytes, shown: str) -> None:
        """A digest keeps its first 8 bytes and is shown as 12 hex characters; junk is none."""
        assert short_id(digest) == stored
        e = decode(ring_bytes(4, [entry(1, release=digest)])).entries[0]
        assert e.release == shown

    @given(
        oid=NAMES, symbol=NAMES, side=st.sampled_from(["BUY", "SELL", ""]),
        qty=st.integers(0, 2**63 - 1), price=st.floats(0, 1e12),
        decision=st.sampled_from(["allow", "block", "cancel", "kill"]),
        reason=st.sampled_from(["", "killed", "unarmed", "stale", "unlisted", "limit", "unproven"]),
        source=st.sampled_from(["host", "inproc", "line", "fix"]), epoch=st.integers(0, 2**53),
    )  # fmt: skip
    def test_a_record_round_trips(self, **kw: object) -> None:
        """Every field of a record comes back from its bytes as written."""
        e = entry(1, **{k: v for k, v in kw.items() if k != "oid"}, order_id=kw["oid"])
        assert decode(ring_bytes(4, [e])).entries == (e,)

    @pytest.mark.parametrize(
        ("field", "value", "shown"),
        [("reason", "bizarre", "other"), ("order_id", "x" * 80, "x" * 64),
         ("symbol", "S" * 40, "S" * 32)],
    )  # fmt: skip
    def test_what_does_not_fit_is_cut_or_named_other(
        self, field: str, value: str, shown: str
    ) -> None:
        """An unknown reason word is `other`; ids and symbols keep their first 64/32 bytes."""
        e = decode(ring_bytes(4, [entry(1, **{field: value})])).entries[0]
        assert getattr(e, field) == shown


class TestFormatRefusal:
    @pytest.mark.parametrize(
        ("data", "says"),
        [
            (b"", "bad magic"),
            (b"NOTAFILE" + bytes(300), "bad magic"),
            (b"KSFLTREC\x02\x00" + bytes(300), "recorder format version 2; this killswitch reads version 1"),
            (b"KSFLTREC\x00\x00", "format version 0"),
            (b"KSFLTREC\x01\x00" + bytes(10), "truncated recorder header"),
        ],
    )  # fmt: skip
    def test_foreign_bytes_are_refused_in_one_line(self, data: bytes, says: str) -> None:
        """Anything but a version-1 recorder file is a FormatError whose message is one line."""
        with pytest.raises(FormatError) as err:
            decode(data)
        assert says in str(err.value) and "\n" not in str(err.value)

    def test_a_file_shorter_than_its_slots_is_refused(self) -> None:
        """A header that declares more slots than the file holds is not read past its end."""
        with pytest.raises(FormatError, match="truncated recorder file: 4 slots"):
            decode(bytes(ring_bytes(4, [entry(1)]))[:-1])


class TestRing:
    @pytest.mark.parametrize(("slots", "n"), [(4, 0), (4, 2), (4, 3), (4, 4), (4, 11), (1, 5)])
    def test_a_ring_keeps_its_newest_records(self, slots: int, n: int) -> None:
        """After n records a ring of `slots` slots gives back the newest min(n, slots - 1)."""
        d = decode(ring_bytes(slots, [entry(s) for s in range(1, n + 1)]))
        keep = min(n, slots - 1)
        assert [e.seq for e in d.entries] == list(range(n - keep + 1, n + 1))
        assert d.skipped == 0

    @settings(max_examples=200)
    @given(
        slots=st.integers(2, 9), n=st.integers(0, 40),
        torn=st.lists(st.integers(0, RECORD_SIZE - 1), unique=True),
    )  # fmt: skip
    def test_a_torn_write_skips_only_the_record_in_flux(
        self, slots: int, n: int, torn: list[int]
    ) -> None:
        """Any subset of the next record's bytes written over its slot, the index not yet
        moved: the decoder gives exactly the committed records, and skips at most that one."""
        committed = [entry(s) for s in range(1, n + 1)]
        buf = ring_bytes(slots, committed)
        nxt = pack_entry(entry(n + 1, order_id="torn"))
        off = HEADER_SIZE + (n + 1) % slots * RECORD_SIZE
        for i in torn:
            buf[off + i] = nxt[i]
        d = decode(bytes(buf))
        assert d.entries == tuple(committed[len(committed) - min(n, slots - 1) :])
        assert d.skipped <= 1

    def test_a_slot_holding_a_foreign_seq_is_skipped_not_guessed(self) -> None:
        """A record whose seq is not the one its slot must hold is skipped and counted."""
        buf = ring_bytes(4, [entry(s) for s in range(1, 4)])
        RECORD.pack_into(
            buf, HEADER_SIZE + 2 * RECORD_SIZE, 99, *RECORD.unpack(pack_entry(entry(2)))[1:]
        )
        d = decode(bytes(buf))
        assert [e.seq for e in d.entries] == [1, 3] and d.skipped == 1

    @given(slots=st.integers(1, 9), n=st.integers(0, 40))
    def test_ring_slots_lists_the_records_decode_reads(self, slots: int, n: int) -> None:
        """Before and after any number of wraps: the same records as `decode`, oldest first,
        each with its time and the offset of its slot."""
        buf = bytes(ring_bytes(slots, [entry(s) for s in range(1, n + 1)]))
        got = ring_slots(buf, read_header(buf))
        assert got == [
            (e.seq, e.t_ns, HEADER_SIZE + e.seq % slots * RECORD_SIZE) for e in decode(buf).entries
        ]

    def test_ring_slots_and_frozen_file_keep_the_raw_records(self) -> None:
        """A frozen file of some ring records decodes to the same entries, header kept."""
        buf = bytes(ring_bytes(8, [entry(s) for s in range(1, 7)]))
        h = read_header(buf)
        picked = [buf[off : off + RECORD_SIZE] for seq, _, off in ring_slots(buf, h) if seq > 3]
        frozen = Header(VERSION, 0, 0, 0, KIND_FROZEN, "smars", "or-01", True, 7, 5000, 60)
        d = decode(frozen_file(frozen, picked))
        assert [e.seq for e in d.entries] == [4, 5, 6]
        assert (d.header.kind, d.header.epoch, d.header.kill_ns, d.header.complete) == (
            KIND_FROZEN, 7, 5000, True,
        )  # fmt: skip


class TestTimeline:
    def test_merge_orders_by_time_then_host_then_seq(self) -> None:
        """Hosts' records interleave by wall time; ties by host name, then seq."""
        a = [entry(1, 10, "or-02"), entry(2, 30, "or-02")]
        b = [entry(1, 10, "or-01"), entry(2, 20, "or-01"), entry(3, 20, "or-01")]
        got = [(e.host, e.seq) for e in merge([a, b])]
        assert got == [("or-01", 1), ("or-02", 1), ("or-01", 2), ("or-01", 3), ("or-02", 2)]

    @given(st.lists(st.lists(st.integers(0, 10**6), max_size=20), max_size=4))
    def test_merge_keeps_every_record_oldest_first(self, times: list[list[int]]) -> None:
        """A merge loses nothing and its times never go back."""
        files = [[entry(i + 1, t, f"h{k}") for i, t in enumerate(ts)] for k, ts in enumerate(times)]
        out = merge(files)
        assert sorted(out, key=lambda e: (e.host, e.seq)) == sorted(
            (e for f in files for e in f), key=lambda e: (e.host, e.seq)
        )
        assert [e.t_ns for e in out] == sorted(e.t_ns for e in out)

    @pytest.mark.parametrize(
        ("span", "kept"),
        [
            (Span(), [1, 2, 3, 4]),
            (Span(since_ns=2000), [2, 3, 4]),
            (Span(until_ns=2000), [1, 2]),
            (Span(since_ns=2000, until_ns=3000), [2, 3]),
            (Span(hosts=frozenset({"or-02"})), []),
            (Span(hosts=frozenset({"or-01"}), since_ns=4000), [4]),
        ],
    )
    def test_span_cuts_by_time_and_host(self, span: Span, kept: list[int]) -> None:
        """--since and --until are inclusive; --host keeps only the hosts named."""
        d = decode(ring_bytes(8, [entry(s) for s in range(1, 5)]))
        assert [e.seq for e in select([d], span, None, 60)] == kept

    @pytest.mark.parametrize(
        ("entries", "want"),
        [
            ([entry(1, 5, epoch=3), entry(2, 7, epoch=4, decision="kill")], 7),
            ([entry(1, 5, epoch=4), entry(2, 7, epoch=4, decision="kill")], 7),
            ([entry(1, 5, epoch=3), entry(2, 9, epoch=4)], 9),  # marker overwritten
            ([entry(1, 5, epoch=5)], 5),  # the kill's records gone, a later epoch's kept
            ([entry(1, 5, epoch=3)], None),
        ],
    )
    def test_kill_time(self, entries: list[Entry], want: int | None) -> None:
        """A host's kill is its marker, else its first record at that epoch or later."""
        assert kill_time(entries, 4) == want

    def test_around_cuts_each_ring_at_its_own_kill_and_takes_frozen_files_whole(self) -> None:
        """--around: each ring keeps its freeze span either side of its own kill marker; a
        frozen file of the epoch is taken whole; a host that never saw the kill adds nothing."""
        s = NS
        one = [entry(1, 1 * s, epoch=3), entry(2, 50 * s, epoch=3),
               entry(3, 100 * s, epoch=4, decision="kill"), entry(4, 170 * s, epoch=4)]  # fmt: skip
        two = [entry(1, 10 * s, "or-02", epoch=3)]
        d1 = decode(ring_bytes(8, one))
        d2 = decode(ring_bytes(8, two, "or-02"))
        assert [e.seq for e in around([d1, d2], 4, 60)] == [2, 3]
        frozen = Header(VERSION, 0, 0, 0, KIND_FROZEN, "smars", "or-03", True, 4, 100 * s, 1)
        d3 = decode(frozen_file(frozen, [pack_entry(entry(9, 5 * s, "or-03"))]))
        assert [(e.host, e.seq) for e in around([d1, d3], 4, 60)] == [
            ("or-03", 9), ("or-01", 2), ("or-01", 3),
        ]  # fmt: skip


class TestHostStatus:
    def test_the_confirmation_names_the_frozen_file_and_the_report_the_metrics_address(
        self,
    ) -> None:
        """`status --json` hosts[H]: `recorder` from the confirmation hash (None without a
        frozen file), `metrics` from the report."""
        from killswitch.core.node.roster import host_status

        report = {"ts_ms": "1000", "metrics": "127.0.0.1:9100"}
        confirm = {"epoch": "7", "recorder_file": "/s/smars@or-01.7.rec",
                   "recorder_digest": "ab" * 32, "recorder_complete": "1"}  # fmt: skip
        got = host_status("or-01", report, confirm, 1000).to_json()
        assert got["metrics"] == "127.0.0.1:9100"
        assert got["recorder"] == {
            "file": "/s/smars@or-01.7.rec", "digest": "ab" * 32, "complete": True,
        }  # fmt: skip
        assert host_status("or-01", report, {"epoch": "7"}, 1000).to_json()["recorder"] is None
