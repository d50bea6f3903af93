"""The flight recorder's C writer (`runtime._ringwrite`, used by `runtime.ring.Ring`) against
the Python writer it replaces on the order path: the same bytes for the same calls, whatever
they are given; on real files, no server."""

from __future__ import annotations

import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.recfmt import (
    ALLOW,
    HEADER_SIZE,
    INDEX_OFFSET,
    INPROC,
    LINE,
    RECORD_FAST,
    RECORD_SIZE,
    SIDES,
    decode,
    kind,
    short_id,
)
from killswitch.core.node.state import HostView, NodeState
from killswitch.runtime import ring as ringmod
from killswitch.runtime.ring import Ring

# A machine without a C compiler or Python's headers installs the Python writer only; the
# suite then says so instead of passing over it, unless told that is expected.
PURE_ALLOWED = os.environ.get("KILLSWITCH_ALLOW_PURE_RECORDER") == "1"
native = pytest.mark.skipif(
    not ringmod.NATIVE and PURE_ALLOWED,
    reason="the C writer is not built and KILLSWITCH_ALLOW_PURE_RECORDER=1 allows that",
)
CREATED = slice(32, 40)  # the header's creation time (HEADER: 8s H H I Q Q q ...)


def masked(data: bytes) -> bytes:
    """A ring file's bytes with its wall times zeroed: the header's creation time and every
    record's time (8 bytes after its seq), the only bytes two writers may differ in."""
    out = bytearray(data)
    out[CREATED] = bytes(8)
    for off in range(HEADER_SIZE + 8, len(out), RECORD_SIZE):
        out[off : off + 8] = bytes(8)
    return bytes(out)


class TestBuilt:
    def test_the_native_writer_is_built_where_it_can_be(self) -> None:
        """The C writer imports, and a ring with the default clock runs it: a failed build
        fails here (set KILLSWITCH_ALLOW_PURE_RECORDER=1 where no compiler is expected)."""
        if PURE_ALLOWED and not ringmod.NATIVE:
            with tempfile.TemporaryDirectory() as d:
                ring = Ring(str(Path(d) / "r.rec"), 4, "smars", "or-01")
                assert ring.writer == "python"
                ring.close()
            return
        assert ringmod.NATIVE, (
            "killswitch.runtime._ringwrite did not build (no C compiler or Python headers at "
            "install?): run `pip install -e .` again and read its output"
        )

    @native
    def test_the_c_layout_constants_are_the_formats(self) -> None:
        """The sizes and the index's offset compiled into the writer are recfmt's."""
        from killswitch.runtime import _ringwrite

        assert (_ringwrite.HEADER_SIZE, _ringwrite.INDEX_OFFSET, _ringwrite.RECORD_SIZE) == (
            HEADER_SIZE,
            INDEX_OFFSET,
            RECORD_SIZE,
        )


class TestChoice:
    def test_an_injected_clock_runs_the_python_writer(self, tmp_path: Path) -> None:
        """Only the Python writer calls an injected clock: "auto" picks it, and "native"
        with a clock is refused."""
        ring = Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01", clock_ns=lambda: 5)
        ring.write(kind(ALLOW, "", LINE), "o1", "KCG", "BUY", 1, 1.0, 3)
        [e] = decode(ring.snapshot()).entries
        assert (ring.writer, e.t_ns) == ("python", 5)
        ring.close()
        with pytest.raises(ValueError, match="clock"):
            Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01", clock_ns=lambda: 5, writer="native")
        with pytest.raises(ValueError, match="one of auto, native, python"):
            Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01", writer="fast")

    def test_without_the_c_writer_auto_runs_python_and_native_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """As on a machine where it did not build: "auto" runs the Python writer and asking
        for "native" says why it cannot."""
        monkeypatch.setattr(ringmod, "NATIVE", False)
        ring = Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01")
        assert ring.writer == "python"
        ring.close()
        with pytest.raises(ValueError, match="not built"):
            Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01", writer="native")

    @native
    def test_auto_runs_the_native_writer(self, tmp_path: Path) -> None:
        """With the default clock, a ring runs the C writer and the gate calls it directly."""
        from killswitch.runtime import _ringwrite

        ring = Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01")
        assert ring.writer == "native" and isinstance(ring.write, _ringwrite.Writer)
        ring.close()


# -- the same bytes, whatever the writers are given ---------------------------------------

_SURROGATE = "\ud800"
# What the gate passes (text of any length, known and unknown words, numbers to the edges of
# their fields) ...
KINDS = st.builds(lambda d, r, s: d << 8 | r << 16 | s << 24, st.integers(0, 255),
                  st.integers(0, 255), st.integers(0, 255))  # fmt: skip
TEXT = st.text(max_size=90) | st.sampled_from(["", "é" * 40, "€" * 11, "x" * 64, "y" * 65])
WORDS = st.sampled_from(["KCG", "AAPL", "", "ÄÖÜ" * 12, "S" * 40, "€" * 11]) | TEXT
SIDES_SEEN = st.sampled_from(["BUY", "SELL", "", "7", "buy", "ÄÖ"])
QTYS = st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 2**63 - 1, -(2**63)])
PRICES = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**60), 2**60)
EPOCHS = st.integers(0, 2**64 - 1) | st.sampled_from([0, 2**63 - 1, 2**63, 2**64 - 1])
VALID = st.tuples(KINDS, TEXT, WORDS, SIDES_SEEN, QTYS, PRICES, EPOCHS)
# ... and what a careless caller might: wrong types, out of range, lone surrogates.
JUNK = st.tuples(
    KINDS | st.integers(-(2**70), 2**70) | st.sampled_from([0x105, 2**32, -1, True, 1.5, None]),
    TEXT | st.sampled_from([7, None, b"o1", _SURROGATE]),
    WORDS | st.sampled_from([12, None, ("K",), b"KCG", _SURROGATE]),
    SIDES_SEEN | st.sampled_from([None, 1, b"BUY", _SURROGATE]),
    QTYS | st.integers(-(2**70), 2**70) | st.sampled_from([1.5, "12", None, [1], True]),
    PRICES | st.integers(-(2**1100), 2**1100) | st.sampled_from(["1.5", None, True, -0.0]),
    EPOCHS | st.integers(-(2**70), 2**70) | st.sampled_from([-1, 2**64, 1.5, None, True]),
)
CALLS = VALID | VALID | JUNK
HEXES = st.text("0123456789abcdef", max_size=70) | st.sampled_from(["", "zz", "ab" * 32])
STEPS = st.lists(st.tuples(st.just("write"), CALLS) | st.tuples(st.just("ids"), st.tuples(HEXES, HEXES)),
                 max_size=25)  # fmt: skip


def run(steps: list[tuple[str, Any]], writer: str, path: str, slots: int) -> tuple[bytes, int]:
    """The ring file's bytes after `steps` with `writer`, and the records it dropped."""
    ring = Ring(path, slots, "smars", "or-01", writer=writer)
    for what, args in steps:
        if what == "ids":
            ring.set_ids(*args)
        else:
            assert ring.write(*args) is None
    data = ring.snapshot()
    ring.close()
    assert Path(path).read_bytes() == data
    return data, ring.dropped


@native
class TestParity:
    @settings(max_examples=300, deadline=None)
    @given(steps=STEPS, slots=st.integers(2, 7))
    def test_the_c_writer_writes_the_python_writers_bytes(
        self, steps: list[tuple[str, Any]], slots: int
    ) -> None:
        """Random orders, ids changes and junk (symbols non-ASCII or over 32 bytes, order ids
        over 64 bytes, unknown sides, extreme and wrong-typed numbers, lone surrogates), over
        a ring small enough to wrap: both writers leave the same file but for the wall times,
        and drop the same records."""
        with tempfile.TemporaryDirectory() as d:
            py = run(steps, "python", str(Path(d) / "py.rec"), slots)
            c = run(steps, "native", str(Path(d) / "c.rec"), slots)
        assert (masked(c[0]), c[1]) == (masked(py[0]), py[1])

    def test_the_record_is_recfmts_layout(self, tmp_path: Path) -> None:
        """One record by the C writer is RECORD_FAST.pack of the same fields, its wall time
        read from the real clock."""
        ring = Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01")
        ring.set_ids("ab" * 32, "cd" * 32)
        code = kind(ALLOW, "", LINE)
        before = time.time_ns()
        ring.write(code, "o-1", "AAPL", "SELL", -7, 187.5, 2**64 - 1)
        after = time.time_ns()
        data = ring.snapshot()
        ring.close()
        rec = data[HEADER_SIZE + RECORD_SIZE : HEADER_SIZE + 2 * RECORD_SIZE]
        (t_ns,) = struct.unpack_from("<q", rec, 8)
        assert before <= t_ns <= after
        want = RECORD_FAST.pack(1, t_ns, 2**64 - 1, -7, 187.5,
                                short_id("ab" * 32) + short_id("cd" * 32), code | SIDES["SELL"],
                                b"o-1", b"AAPL")  # fmt: skip
        assert rec == want
        assert int.from_bytes(data[INDEX_OFFSET : INDEX_OFFSET + 8], "little") == 2


@native
class TestNativeRing:
    def test_wrap_around_keeps_the_newest_records_and_the_index(self, tmp_path: Path) -> None:
        """A 5-slot ring written 23 times holds the newest 4 in order, and the header's index
        is the next seq."""
        ring = Ring(str(tmp_path / "r.rec"), 5, "smars", "or-01")
        for i in range(23):
            ring.write(kind(ALLOW, "", LINE), f"o{i}", "KCG", "BUY", i, 1.0, 3)
        d = decode(ring.snapshot())
        ring.close()
        assert [(e.seq, e.order_id, e.qty) for e in d.entries] == [
            (20, "o19", 19), (21, "o20", 20), (22, "o21", 21), (23, "o22", 22)
        ]  # fmt: skip
        assert (d.header.index, d.skipped) == (24, 0)

    def test_set_ids_marks_the_records_after_it(self, tmp_path: Path) -> None:
        """Records carry the release and limits ids set before them, none before the first."""
        ring = Ring(str(tmp_path / "r.rec"), 8, "smars", "or-01")
        ring.write(kind(ALLOW, "", INPROC), "a", "KCG", "BUY", 1, 1.0, 3)
        ring.set_ids("0123456789abcdef" * 4, "fedcba9876543210" * 4)
        ring.write(kind(ALLOW, "", INPROC), "b", "KCG", "BUY", 1, 1.0, 3)
        ring.set_ids("", "")
        ring.write(kind(ALLOW, "", INPROC), "c", "KCG", "BUY", 1, 1.0, 3)
        got = [(e.order_id, e.release, e.limits) for e in decode(ring.snapshot()).entries]
        ring.close()
        assert got == [("a", "", ""), ("b", "0123456789ab", "fedcba987654"), ("c", "", "")]

    def test_a_closed_ring_counts_a_drop_and_never_raises(self, tmp_path: Path) -> None:
        """After close() the writer lets go of the mapping (the ring unmaps), and each later
        record is counted in `dropped`, nothing raised into the order path."""
        path = tmp_path / "r.rec"
        ring = Ring(str(path), 4, "smars", "or-01")
        g = Gate("smars", "or-01")
        g.apply(HostView(3, NodeState.ARMED, NodeState.ARMED, 3), time.monotonic() + 60)
        g.set_recorder(ring.write)
        assert g.allow("o1", "KCG", "BUY", 1, 1.0)
        ring.close()
        assert g.allow("o2", "KCG", "BUY", 1, 1.0)
        ring.record(INPROC, "o3", "KCG", "BUY", 1, 1.0, ALLOW, "", 3)
        assert ring.dropped == 2
        assert [e.order_id for e in decode(path.read_bytes()).entries] == ["o1"]

    def test_a_reopened_ring_continues_after_the_carried_records(self, tmp_path: Path) -> None:
        """A ring reopened with another size carries its newest records over; the C writer's
        first record follows them, seq unbroken."""
        path = str(tmp_path / "r.rec")
        ring = Ring(path, 10, "smars", "or-01")
        for i in range(6):
            ring.write(kind(ALLOW, "", LINE), f"o{i}", "KCG", "BUY", 1, 1.0, 3)
        ring.close()
        ring = Ring(path, 4, "smars", "or-01")
        ring.write(kind(ALLOW, "", LINE), "new", "KCG", "BUY", 1, 1.0, 3)
        d = decode(ring.snapshot())
        ring.close()
        assert [(e.seq, e.order_id) for e in d.entries] == [(2, "o4"), (3, "o5"), (4, "new")]

    def test_the_writer_takes_exactly_seven_arguments(self, tmp_path: Path) -> None:
        """Too few arguments, or keywords (the gate passes seven, by position): a TypeError,
        a caller's bug rather than a record; nothing is written."""
        ring = Ring(str(tmp_path / "r.rec"), 4, "smars", "or-01")
        with pytest.raises(TypeError):
            ring.write(1, "o1", "KCG")  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            ring.write(1, "o1", "KCG", "BUY", 1, 1.0, epoch=3)  # type: ignore[call-arg]
        assert decode(ring.snapshot()).entries == ()
        ring.close()
