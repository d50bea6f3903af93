"""FIX framing, checksum and encoding (core.enforce.fixwire), checked against simplefix, a FIX
encoder and parser nobody here wrote."""

from __future__ import annotations

import pytest
import simplefix
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.enforce.fixwire import (
    BODY_LENGTH,
    GARBAGE,
    OVERSIZE,
    FrameError,
    Framer,
    checksum,
    encode,
    fields,
    first,
    msg_type,
)


def order(seq: int = 2, clordid: str = "o-1", begin: str = "FIX.4.4") -> bytes:
    m = simplefix.FixMessage()
    m.append_pair(8, begin, header=True)
    m.append_pair(35, "D", header=True)
    m.append_pair(49, "CLIENT", header=True)
    m.append_pair(56, "VENUE", header=True)
    m.append_pair(34, seq, header=True)
    m.append_pair(52, "20260101-00:00:00.000", header=True)
    for tag, value in ((11, clordid), (55, "AAPL"), (54, 1), (38, 100), (40, 2), (44, "10.5")):
        m.append_pair(tag, value)
    return bytes(m.encode())


values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40)
# user-defined tags: none of them is a raw-data length that changes how simplefix parses
bodies = st.lists(st.tuples(st.integers(5000, 9999), values), max_size=12)


def encoded(body: list[tuple[int, str]], seq: int) -> bytes:
    m = simplefix.FixMessage()
    m.append_pair(8, "FIX.4.4", header=True)
    m.append_pair(35, "D", header=True)
    m.append_pair(34, seq, header=True)
    for tag, value in body:
        m.append_pair(tag, value)
    return bytes(m.encode())


class TestChecksum:
    @pytest.mark.parametrize(
        ("data", "want"),
        [(b"", 0), (b"\x01", 1), (b"\xff\x01", 0), (b"8=FIX.4.4\x01", sum(b"8=FIX.4.4\x01") % 256)],
    )
    def test_table(self, data: bytes, want: int) -> None:
        """The checksum is the byte sum modulo 256."""
        assert checksum(data) == want

    @given(st.binary(max_size=2000) | st.integers(0, 1100).map(lambda n: b"\xff" * n))
    def test_is_the_byte_sum_at_every_length(self, data: bytes) -> None:
        """Computed in 256-byte chunks, it is the plain byte sum modulo 256 at any length,
        all-0xFF runs across the chunk edges included."""
        assert checksum(data) == sum(data) % 256
        assert checksum(memoryview(data)) == sum(data) % 256

    def test_agrees_with_simplefix(self) -> None:
        """The CheckSum simplefix writes is the one computed here."""
        msg = order()
        assert b"10=%03d\x01" % checksum(msg[: msg.rindex(b"10=")]) == msg[msg.rindex(b"10=") :]


class TestFramer:
    def test_one_message_returned_as_received(self) -> None:
        """A complete message comes back as the very bytes fed."""
        msg = order()
        assert Framer().feed(msg) == [msg]

    def test_many_messages_and_a_partial_one(self) -> None:
        """Several messages in one read are all framed; a trailing partial one waits."""
        a, b, c = order(2, "a"), order(3, "b"), order(4, "c")
        f = Framer()
        assert f.feed(a + b + c[:10]) == [a, b]
        assert f.pending == 10
        assert f.feed(c[10:]) == [c]
        assert f.pending == 0

    @given(st.lists(bodies, min_size=1, max_size=5), st.data())
    def test_any_cut_of_the_stream_frames_the_same(
        self, msgs: list[list[tuple[int, str]]], data: st.DataObject
    ) -> None:
        """However the stream is cut into reads, the same messages come out, in order."""
        wire = [encoded(body, i + 1) for i, body in enumerate(msgs)]
        stream = b"".join(wire)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
        f, out, last = Framer(), [], 0
        for cut in [*cuts, len(stream)]:
            out += f.feed(stream[last:cut])
            last = cut
        assert out == wire and f.pending == 0

    @given(bodies, st.data())
    def test_one_changed_byte_is_never_passed_on(
        self, body: list[tuple[int, str]], data: st.DataObject
    ) -> None:
        """A message with any one byte changed is dropped or refused, never returned."""
        msg = bytearray(encoded(body, 7))
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = (msg[i] + data.draw(st.integers(1, 255))) % 256
        f = Framer()
        try:
            out = f.feed(bytes(msg))
        except FrameError:
            return
        assert out == []

    def test_bad_checksum_is_dropped_and_the_next_message_framed(self) -> None:
        """A message whose CheckSum is wrong is dropped and counted; the stream goes on."""
        bad = bytearray(order(2))
        bad[-4:-1] = b"%03d" % ((int(bad[-4:-1]) + 1) % 256)
        good = order(3)
        f = Framer()
        assert f.feed(bytes(bad) + good) == [good]
        assert f.bad_checksums == 1

    @pytest.mark.parametrize(
        "data",
        [
            b"hello world\x01",
            b"9=5\x0135=0\x01",
            b"8=FIX.9.9\x019=5\x0135=0\x0110=000\x01",
            b"8=FIX.4.4\x0135=0\x01" + b"x" * 40,
            b"8=FIX.4.4\x019=abc\x01",
            b"8=FIX.4.4\x019=5\x0149=0\x0110=000\x01",
            b"8=FIX.4.4" + b"x" * 40,
            b"8=FIX.4.4\x019=5\x0135=0\x0110=0a0\x01",
        ],
    )
    def test_garbage_is_refused(self, data: bytes) -> None:
        """Bytes that are not a FIX message cannot be framed: the connection is to be closed."""
        with pytest.raises(FrameError) as e:
            Framer().feed(data)
        assert e.value.reason == GARBAGE

    def test_oversize_is_refused_before_its_body_arrives(self) -> None:
        """A BodyLength over the bound is refused on the header alone: nothing is buffered."""
        with pytest.raises(FrameError) as e:
            Framer(max_body=64 * 1024).feed(b"8=FIX.4.4\x019=1048576\x0135=D\x01")
        assert e.value.reason == OVERSIZE

    def test_body_length_that_misses_the_checksum(self) -> None:
        """A BodyLength that does not end where 10= starts is refused."""
        msg = order()
        bad = msg.replace(b"\x019=", b"\x019=1", 1)  # ten times longer than the body
        bad = bad + b"x" * (len(bad) * 10)
        with pytest.raises(FrameError) as e:
            Framer().feed(bad)
        assert e.value.reason == BODY_LENGTH


class TestFields:
    def test_msg_type_and_fields(self) -> None:
        """MsgType and the fields of a framed message are read in order."""
        msg = order(9, "x-9")
        fs = fields(msg)
        assert msg_type(msg) == b"D"
        assert fs[0] == (b"8", b"FIX.4.4") and fs[-1][0] == b"10"
        assert (first(fs, b"11"), first(fs, b"34"), first(fs, b"999")) == (b"x-9", b"9", b"")

    @given(bodies)
    def test_encode_is_read_back_by_simplefix(self, body: list[tuple[int, str]]) -> None:
        """What `encode` writes, simplefix parses to the same fields, CheckSum included."""
        raw = encode(b"FIX.4.2", [(b"35", b"8"), *((b"%d" % t, v.encode()) for t, v in body)])
        p = simplefix.FixParser()
        p.append_buffer(raw)
        m = p.get_message()
        assert m is not None and m.get(35) == b"8"
        got = [(t, v) for t, v in m.pairs if t not in (b"8", b"9", b"10", b"35")]
        assert got == [(b"%d" % t, v.encode()) for t, v in body]
        assert Framer().feed(raw) == [raw]


class TestAnyInput:
    @given(st.binary(max_size=300), st.integers(1, 300))
    def test_any_bytes_frame_or_refuse(self, data: bytes, step: int) -> None:
        """Whatever a peer sends, in reads of any size, the framer returns messages or raises
        FrameError: nothing else escapes to stop the relay."""
        f = Framer()
        try:
            for i in range(0, len(data), step):
                for m in f.feed(data[i : i + step]):
                    assert m.startswith(b"8=") and m.endswith(b"\x01")
        except FrameError:
            pass
