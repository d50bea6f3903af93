"""The flight recorder's memory-mapped ring (`runtime.ring`), a kill's freeze
(`sidecar.recording.freeze`) and the sidecar's recording collaborator, on real files."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.recfmt import ALLOW, BLOCK, FIX, INPROC, LINE, FormatError, decode
from killswitch.core.node.state import HostView, NodeState
from killswitch.runtime import ring as ringmod
from killswitch.runtime.errors import StartupError
from killswitch.runtime.ring import Ring
from killswitch.sidecar.recording import Recording, freeze, ring_path
from killswitch.sidecar.settings import SidecarSettings

NS = 1_000_000_000


def fill(ring: Ring, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        ring.record(LINE, f"o{i}", "KCG", "BUY", 100, 10.5, ALLOW, "", 3)


def ids(data: bytes) -> list[str]:
    return [e.order_id for e in decode(data).entries]


class TestRingFile:
    def test_wrap_around_keeps_the_newest_n_records(self, tmp_path: Path) -> None:
        """A ring of N records (N + 1 slots) written 3N + 2 times holds the newest N, in
        order, live and once closed."""
        ring = Ring(str(tmp_path / "r.rec"), 9, "smars", "or-01")
        fill(ring, 26)
        want = [f"o{i}" for i in range(18, 26)]
        assert ids(ring.snapshot()) == want
        ring.close()
        assert ids((tmp_path / "r.rec").read_bytes()) == want

    def test_a_reopened_ring_continues_where_it_stopped(self, tmp_path: Path) -> None:
        """The same path and size again: new records follow the old ones, seq unbroken."""
        path = str(tmp_path / "r.rec")
        ring = Ring(path, 5, "smars", "or-01")
        fill(ring, 3)
        ring.close()
        ring = Ring(path, 5, "smars", "or-01")
        fill(ring, 2, start=3)
        ring.close()
        d = decode(Path(path).read_bytes())
        assert [(e.seq, e.order_id) for e in d.entries] == [
            (2, "o1"),
            (3, "o2"),
            (4, "o3"),
            (5, "o4"),
        ]

    def test_another_size_starts_anew_with_the_newest_records_carried(self, tmp_path: Path) -> None:
        """A ring reopened with fewer slots keeps what fits of the newest records."""
        path = str(tmp_path / "r.rec")
        ring = Ring(path, 10, "smars", "or-01")
        fill(ring, 7)
        ring.close()
        ring = Ring(path, 4, "smars", "or-01")
        ring.close()
        assert ids(Path(path).read_bytes()) == ["o4", "o5", "o6"]

    @pytest.mark.parametrize(
        ("data", "says"),
        [(b"KSFLTREC\x07\x00" + bytes(400), "format version 7"),
         (b"my precious trading config\n", "bad magic")],
    )  # fmt: skip
    def test_a_foreign_file_is_refused_and_left_as_it_was(
        self, tmp_path: Path, data: bytes, says: str
    ) -> None:
        """Another format version, or not a recorder file at all: refused, never overwritten."""
        path = tmp_path / "r.rec"
        path.write_bytes(data)
        with pytest.raises(FormatError, match=says):
            Ring(str(path), 5, "smars", "or-01")
        assert path.read_bytes() == data

    def test_odd_types_are_recorded_as_best_they_can_and_never_raise(self, tmp_path: Path) -> None:
        """A float qty, a str price, a list for a symbol: recorded, coerced; after close()
        a record is counted as dropped instead of raising into the order path."""
        ring = Ring(str(tmp_path / "r.rec"), 5, "smars", "or-01")
        ring.record(INPROC, "o1", ["KCG"], "BUY", 1.5, "x", BLOCK, "limit", 3)  # type: ignore[arg-type]
        ring.record(INPROC, 7, "KCG", None, 10**30, 1.0, ALLOW, None, -1)  # type: ignore[arg-type]
        [a, b] = decode(ring.snapshot()).entries
        assert (a.symbol, a.qty, a.price, a.reason) == ("['KCG']", 1, 0.0, "limit")
        assert (b.order_id, b.side, b.qty, b.reason, b.epoch) == ("7", "", 2**63 - 1, "other", 0)
        ring.close()
        ring.record(INPROC, "late", "KCG", "BUY", 1, 1.0, ALLOW, "", 3)
        assert ring.dropped == 1

    def test_a_new_symbol_or_side_word_is_recorded_the_first_time_and_after(
        self, tmp_path: Path
    ) -> None:
        """A symbol and a side word the writer has not seen (a FIX side code): recorded at
        once, and the same again once they are known (symbol kept, side none)."""
        ring = Ring(str(tmp_path / "r.rec"), 5, "smars", "or-01")
        for oid in ("a", "b"):
            ring.record(INPROC, oid, "ESZ6", "7", 1, 1.0, ALLOW, "", 3)
        got = [(e.order_id, e.symbol, e.side) for e in decode(ring.snapshot()).entries]
        assert got == [("a", "ESZ6", ""), ("b", "ESZ6", "")]
        ring.close()

    def test_a_snapshot_while_another_thread_writes_holds_only_whole_records(
        self, tmp_path: Path
    ) -> None:
        """Snapshots taken while a writer thread floods the ring: each decodes, and every
        record in it is one the writer wrote whole (its id matches its seq)."""
        ring = Ring(str(tmp_path / "r.rec"), 64, "smars", "or-01")
        stop = threading.Event()

        def write() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                ring.record(LINE, f"o{i}", "KCG", "BUY", i, float(i), ALLOW, "", i)

        t = threading.Thread(target=write)
        t.start()
        try:
            for _ in range(200):
                for e in decode(ring.snapshot()).entries:
                    assert (e.order_id, e.qty, e.epoch) == (f"o{e.seq}", e.seq, e.seq)
        finally:
            stop.set()
            t.join()
        ring.close()


class TestGateHook:
    def test_the_gate_records_each_decision_once_with_its_source(self, tmp_path: Path) -> None:
        """allow(), check() from the line protocol, a limit refusal, a cancel and a block:
        one record each, with the decision, reason, epoch and source the gate used."""
        from killswitch.core.enforce.limits import Limit, Limits

        ring = Ring(str(tmp_path / "r.rec"), 16, "smars", "or-01")
        g = Gate("smars", "or-01", clock=lambda: 1.0, limits=Limits(Limit(max_qty=10), {}),
                 log=CapturingLogger())  # fmt: skip
        g.set_recorder(ring.write)
        g.check("b0", "KCG", "BUY", 1, 0.0, LINE)
        g.apply(HostView(5, NodeState.ARMED, NodeState.ARMED, 5), lease_deadline=9.0)
        g.allow("a1", "KCG", "BUY", 5, 1.0)
        g.check("l2", "KCG", "SELL", 50, 2.0, LINE)
        g.cancel("c3", "a1", LINE)
        g.set_recorder(None)
        g.allow("unrecorded", "KCG", "BUY", 5, 1.0)
        got = [(e.order_id, e.source, e.decision, e.reason, e.epoch, e.qty)
               for e in decode(ring.snapshot()).entries]  # fmt: skip
        assert got == [
            ("b0", "line", "block", "stale", 0, 1),  # a gate at boot
            ("a1", "inproc", "allow", "", 5, 5),
            ("l2", "line", "block", "limit", 5, 50),
            ("c3", "line", "cancel", "", 5, 0),
        ]
        ring.close()


class TestFreeze:
    def test_a_freeze_copies_only_the_slots_written(self, tmp_path: Path) -> None:
        """A ring of 100 slots holding 3 records (seq n in slot n): the freeze's snapshot is
        the header and slots 0-4 (slot 4, the next, may be in flux), and freezes to the same
        file as the whole ring's bytes."""
        ring = Ring(str(tmp_path / "r.rec"), 100, "smars", "or-01")
        fill(ring, 3)
        part, whole = ring.snapshot(whole=False), ring.snapshot()
        assert (len(part), len(whole)) == (256 + 5 * 160, 256 + 100 * 160)
        assert whole[: len(part)] == part and not any(whole[len(part) :])
        t = decode(whole).entries[1].t_ns
        assert freeze(part, b"", 7, t, 60, True) == freeze(whole, b"", 7, t, 60, True)
        ring.close()

    def test_a_flood_after_the_kill_cannot_erase_what_was_frozen_before_it(
        self, tmp_path: Path
    ) -> None:
        """Frozen at confirmation, then the ring wraps twice before the freeze completes: the
        completed file still holds the records before the kill, then the newest after it."""
        clock = [100 * NS]

        def now() -> int:
            clock[0] += 1000
            return clock[0]

        ring = Ring(str(tmp_path / "r.rec"), 9, "smars", "or-01", clock_ns=now)
        fill(ring, 5)
        kill_ns = clock[0]
        first = freeze(ring.snapshot(whole=False), b"", 7, kill_ns, 60, final=False)
        assert ids(first) == [f"o{i}" for i in range(5)]
        fill(ring, 20, start=5)
        done = decode(freeze(ring.snapshot(whole=False), first, 7, kill_ns, 60, final=True))
        assert [e.order_id for e in done.entries] == [f"o{i}" for i in (*range(5), *range(17, 25))]
        assert (done.header.epoch, done.header.kill_ns, done.header.complete) == (7, kill_ns, True)
        ring.close()

    def test_records_outside_the_span_are_not_frozen(self, tmp_path: Path) -> None:
        """Records older than S seconds before the kill (or newer than S after) stay out."""
        clock = [0]

        def now() -> int:
            clock[0] += NS
            return clock[0]

        ring = Ring(str(tmp_path / "r.rec"), 32, "smars", "or-01", clock_ns=now)
        clock[0] = 0  # (the header's creation time took a tick)
        fill(ring, 20)  # o0 at 1 s ... o19 at 20 s
        got = ids(freeze(ring.snapshot(), b"", 7, 10 * NS, 3, final=True))
        assert got == [f"o{i}" for i in range(6, 13)]  # 7 s .. 13 s
        ring.close()


class TestRecordingCollaborator:
    @pytest.mark.parametrize(
        ("recorder", "state_dir", "want"),
        [(None, "/var/lib/ks", "/var/lib/ks/smars@or-01.rec"), (None, "", ""),
         ("", "/var/lib/ks", ""), ("/data/r.rec", "/var/lib/ks", "/data/r.rec")],
    )  # fmt: skip
    def test_ring_path(self, recorder: str | None, state_dir: str, want: str) -> None:
        """--recorder as given ('' none), else <state-dir>/<node>@<host>.rec, else none."""
        s = SidecarSettings("smars", "or-01", "redis://x", state_dir=state_dir, recorder=recorder)
        assert ring_path(s) == want

    async def test_a_gateway_records_beside_the_gate_and_nothing_without_a_ring(
        self, tmp_path: Path
    ) -> None:
        """`Recording.record` appends a FIX decision to the ring (making the state
        directory), and is a no-op when the recorder is off."""
        gate = Gate("smars", "or-01", log=CapturingLogger())

        def sidecar(recorder: str | None) -> SimpleNamespace:
            s = SidecarSettings("smars", "or-01", "redis://x", state_dir=str(tmp_path / "st"),
                                recorder=recorder, recorder_size=16)  # fmt: skip
            return SimpleNamespace(s=s, gate=gate, log=CapturingLogger(),
                                   registry=CollectorRegistry())  # fmt: skip

        on = Recording(sidecar(None))  # type: ignore[arg-type]
        on.record(FIX, "f1", "KCG", "SELL", 7, 1.5, BLOCK, "limit", 9)
        assert on.ring is not None
        [e] = decode(on.ring.snapshot()).entries
        assert (e.source, e.order_id, e.decision, e.reason, e.epoch) == (
            "fix",
            "f1",
            "block",
            "limit",
            9,
        )
        await on.close()
        off = Recording(sidecar(""))  # type: ignore[arg-type]
        off.record(FIX, "f2", "KCG", "SELL", 7, 1.5, ALLOW, "", 9)
        assert off.ring is None and ids((tmp_path / "st" / "smars@or-01.rec").read_bytes()) == [
            "f1"
        ]


class TestWriterChoice:
    @pytest.mark.parametrize("writer", ["auto", "python"])
    async def test_the_start_event_names_the_writer(self, tmp_path: Path, writer: str) -> None:
        """RECORDER_STARTED, said once the sidecar has started, names which writer the ring
        runs: the C writer for "auto" where it is built, else the Python writer."""
        log = CapturingLogger()
        s = SidecarSettings("smars", "or-01", "redis://x", state_dir=str(tmp_path),
                            recorder_size=16, recorder_writer=writer)  # fmt: skip
        sc = SimpleNamespace(s=s, gate=Gate("smars", "or-01", log=CapturingLogger()), log=log,
                             registry=CollectorRegistry())  # fmt: skip
        rec = Recording(sc)  # type: ignore[arg-type]
        assert not [c for c in log.calls if c.args == ("RECORDER_STARTED",)]  # not before start
        rec.announce()
        [call] = [c for c in log.calls if c.args == ("RECORDER_STARTED",)]
        want = "native" if writer == "auto" and ringmod.NATIVE else "python"
        assert call.kwargs["writer"] == want and call.kwargs["records"] == 16
        await rec.close()

    def test_a_native_writer_that_was_not_built_refuses_the_start(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--recorder-writer native where the C writer did not build: exit 2, one line."""
        monkeypatch.setattr(ringmod, "NATIVE", False)
        s = SidecarSettings("smars", "or-01", "redis://x", state_dir=str(tmp_path),
                            recorder_size=16, recorder_writer="native")  # fmt: skip
        sc = SimpleNamespace(s=s, gate=Gate("smars", "or-01", log=CapturingLogger()),
                             log=CapturingLogger(), registry=CollectorRegistry())  # fmt: skip
        with pytest.raises(StartupError, match="not built") as e:
            Recording(sc)  # type: ignore[arg-type]
        assert e.value.code == 2 and "\n" not in str(e.value)


class TestFixSource:
    def test_the_fix_gateways_orders_and_cancels_are_recorded_as_fix(self, tmp_path: Path) -> None:
        """The FIX gateway asks the gate with source FIX: its decisions read `fix` in the ring."""
        from killswitch.sidecar.fixgateway import FixGateway

        ring = Ring(str(tmp_path / "r.rec"), 8, "smars", "or-01")
        gate = Gate("smars", "or-01", clock=lambda: 1.0, log=CapturingLogger())
        gate.set_recorder(ring.write)
        gw = FixGateway(gate, [], logger=CapturingLogger())
        assert gw.check("c1", "KCG", "BUY", 5, 2.0) == (False, 0, "stale")
        gate.cancel(source=FIX)
        got = [(e.order_id, e.source, e.decision) for e in decode(ring.snapshot()).entries]
        assert got == [("c1", "fix", "block"), ("-", "fix", "cancel")]
        ring.close()
