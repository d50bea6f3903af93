"""FIX on the wire: framing (BeginString, BodyLength, CheckSum), field access and encoding.

Pure bytes in, messages or a refusal out; no I/O. This sits on the order path of the FIX
gateway, so a message that passes is never copied field by field: the framer checks it and
hands back the very bytes it read. It must never let a message through whose framing it did
not verify, and never buffer more than one message's worth of a peer's bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from zlib import adler32

SOH = b"\x01"
MAX_BODY = 64 * 1024  # a FIX message larger than this is not an order: refused, not buffered
# BeginStrings the gateway relays (FIXT.1.1 carries FIX.5.0 application messages).
BEGIN_STRINGS = frozenset({b"FIX.4.2", b"FIX.4.3", b"FIX.4.4", b"FIXT.1.1"})
_MAX_PREFIX = 32  # "8=FIXT.1.1\x019=65536\x01" fits with room to spare
# A well-formed start of a message up to its MsgType tag, matched in one call; anything else
# (garbage, or a start not complete yet) takes the field-by-field checks that say what is wrong.
_HEAD = re.compile(
    rb"8=(?:%s)\x019=([0-9]{1,7})\x0135=" % b"|".join(re.escape(b) for b in sorted(BEGIN_STRINGS))
)
_CHUNK = 256  # adler32's first sum of up to 256 bytes never wraps (1 + 256 * 255 < 65521)

# Reason words of a refusal (log lines and metrics).
GARBAGE = "garbage"  # not a FIX message at all: the stream cannot be resynchronised
OVERSIZE = "oversize"  # BodyLength over the bound: refused before the body is read
BODY_LENGTH = "body_length"  # BodyLength does not end where the CheckSum field starts
CHECKSUM = "checksum"  # framed, but the CheckSum is wrong: the message is dropped


class FrameError(ValueError):
    """The peer's byte stream cannot be framed: the connection must be closed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def checksum(data: bytes | bytearray | memoryview) -> int:
    """FIX CheckSum: the sum of every byte before the `10=` field, modulo 256.

    The sum is adler32's first half (1 + the byte sum, modulo 65521), exact for a chunk of up
    to 256 bytes: a C loop, several times faster than `sum()` over the bytes (per message).
    """
    if len(data) <= _CHUNK:
        return (adler32(data) - 1) & 0xFF
    view = memoryview(data)
    total = 0
    for i in range(0, len(view), _CHUNK):
        total += (adler32(view[i : i + _CHUNK]) & 0xFFFF) - 1
    return total & 0xFF


class Framer:
    """Cuts a peer's byte stream into FIX messages, verifying each one's framing.

    `feed()` returns the complete messages so far, each as the exact bytes received, and
    counts in `bad_checksums` the messages dropped for a bad CheckSum (FIX: a garbled message
    is ignored; the sequence gap it leaves is recovered by a ResendRequest). Anything that
    cannot be framed raises FrameError; after that the framer must not be used again.
    """

    __slots__ = ("_buf", "bad_checksums", "max_body")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buf = b""
        self.max_body = max_body
        self.bad_checksums = 0

    @property
    def pending(self) -> int:
        """Bytes of a message not complete yet (a slow-loris peer holds some forever)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        # One straight pass over immutable bytes: this runs for every message relayed.
        if self._buf:
            data = self._buf + data
        out: list[bytes] = []
        pos, n = 0, len(data)
        head_at, max_body = _HEAD.match, self.max_body
        while pos < n:
            if (m := head_at(data, pos)) is not None:  # the usual case: a well-formed start
                length, length_end = int(m[1]), m.end(1)
            else:
                length, length_end = self._head(data, pos, n)
                if length_end < 0:
                    break  # a start that is not complete yet
            if length > max_body:
                raise FrameError(OVERSIZE, f"BodyLength {length} over {max_body}")
            body_end = length_end + 1 + length  # the CheckSum field starts here
            end = body_end + 7
            if end > n:
                break
            if data[length_end + 1 : length_end + 4] != b"35=":
                raise FrameError(GARBAGE, "the third field must be MsgType (35=)")
            if data[body_end - 1 : body_end + 3] != b"\x0110=":
                raise FrameError(BODY_LENGTH, f"BodyLength {length} does not end at the CheckSum")
            given = data[body_end + 3 : end - 1]
            if data[end - 1] != 1 or not given.isdigit():
                raise FrameError(GARBAGE, "CheckSum is not three digits")
            if checksum(data[pos:body_end]) == int(given):
                out.append(data[pos:end])
            else:
                self.bad_checksums += 1
            pos = end
        self._buf = data[pos:]
        return out

    @classmethod
    def _head(cls, data: bytes, pos: int, n: int) -> tuple[int, int]:
        """The BodyLength of a message starting at `pos` and where its field ends (its SOH),
        checking BeginString and BodyLength field by field; (0, -1): not all there yet."""
        head = data.find(SOH, pos, pos + _MAX_PREFIX)  # end of BeginString
        length_end = data.find(SOH, head + 1, pos + _MAX_PREFIX) if head >= 0 else -1
        if length_end < 0:
            cls._check_prefix(data, pos, head, n)
            return 0, -1
        if data[pos + 2 : head] not in BEGIN_STRINGS or data[pos : pos + 2] != b"8=":
            raise FrameError(GARBAGE, f"not a FIX BeginString: {data[pos:head][:16]!r}")
        if data[head + 1 : head + 3] != b"9=":
            raise FrameError(GARBAGE, "the second field must be BodyLength (9=)")
        digits = data[head + 3 : length_end]
        if not digits.isdigit() or len(digits) > 7:
            raise FrameError(GARBAGE, f"BodyLength {digits[:16]!r} is not a number")
        return int(digits), length_end

    @staticmethod
    def _check_prefix(data: bytes, pos: int, head: int, n: int) -> None:
        """The start of a message whose BodyLength is not complete yet: garbage or wait."""
        if data[pos : pos + 2] != b"8="[: n - pos]:
            raise FrameError(GARBAGE, f"a message must start with 8=, got {data[pos : pos + 16]!r}")
        if head >= 0:
            if data[pos + 2 : head] not in BEGIN_STRINGS:
                raise FrameError(GARBAGE, f"not a FIX BeginString: {data[pos:head][:16]!r}")
            if data[head + 1 : head + 3] != b"9="[: max(0, n - head - 1)]:
                raise FrameError(GARBAGE, "the second field must be BodyLength (9=)")
            if not data[head + 3 : n].isdigit() and n > head + 3:
                raise FrameError(GARBAGE, "BodyLength is not a number")
        if n - pos >= _MAX_PREFIX:
            raise FrameError(GARBAGE, "no BeginString and BodyLength in the first bytes")


def msg_type(msg: bytes) -> bytes:
    """The MsgType of a framed message (the framer guarantees `35=` is the third field)."""
    start = msg.index(b"\x0135=") + 4
    return msg[start : msg.index(SOH, start)]


def begin_string(msg: bytes) -> bytes:
    return msg[2 : msg.index(SOH)]


Field = tuple[bytes, bytes]


def fields(msg: bytes) -> list[Field]:
    """Every (tag, value) of a framed message in order, BeginString..CheckSum included."""
    out: list[Field] = []
    for f in msg.split(SOH)[:-1]:
        tag, _, value = f.partition(b"=")
        out.append((tag, value))
    return out


def first(fs: Sequence[Field], tag: bytes, default: bytes = b"") -> bytes:
    for t, v in fs:
        if t == tag:
            return v
    return default


def encode(begin: bytes, fs: Iterable[Field]) -> bytes:
    """A message with BodyLength and CheckSum computed; `fs` starts with MsgType (35)."""
    body = b"".join(t + b"=" + v + SOH for t, v in fs)
    head = b"8=" + begin + SOH + b"9=" + str(len(body)).encode() + SOH
    msg = head + body
    return msg + b"10=" + b"%03d" % checksum(msg) + SOH
