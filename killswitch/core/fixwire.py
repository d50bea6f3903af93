"""FIX on the wire: framing (BeginString, BodyLength, CheckSum), field access and encoding.

Pure bytes in, messages or a refusal out; no I/O. This sits on the order path of the FIX
gateway, so a message that passes is never copied field by field: the framer checks it and
hands back the very bytes it read. It must never let a message through whose framing it did
not verify, and never buffer more than one message's worth of a peer's bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

SOH = b"\x01"
MAX_BODY = 64 * 1024  # a FIX message larger than this is not an order: refused, not buffered
# BeginStrings the gateway relays (FIXT.1.1 carries FIX.5.0 application messages).
BEGIN_STRINGS = frozenset({b"FIX.4.2", b"FIX.4.3", b"FIX.4.4", b"FIXT.1.1"})
_MAX_PREFIX = 32  # "8=FIXT.1.1\x019=65536\x01" fits with room to spare

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
    """FIX CheckSum: the sum of every byte before the `10=` field, modulo 256."""
    return sum(data) & 0xFF


class Framer:
    """Cuts a peer's byte stream into FIX messages, verifying each one's framing.

    `feed()` returns the complete messages so far, each as the exact bytes received, and the
    number of messages dropped for a bad CheckSum (FIX: a garbled message is ignored; the
    sequence gap it leaves is recovered by a ResendRequest). Anything that cannot be framed
    raises FrameError; after that the framer must not be used again.
    """

    __slots__ = ("_buf", "bad_checksums", "max_body")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self.max_body = max_body
        self.bad_checksums = 0

    @property
    def pending(self) -> int:
        """Bytes of a message not complete yet (a slow-loris peer holds some forever)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos, n = 0, len(buf)
        while pos < n:
            end = self._frame_end(buf, pos, n)
            if end < 0:
                break
            body_end = end - 7  # the SOH before "10=NNN\x01" is the body's last byte
            if checksum(memoryview(buf)[pos:body_end]) != _three_digits(buf, body_end + 3):
                self.bad_checksums += 1
            else:
                out.append(bytes(buf[pos:end]))
            pos = end
        if pos:
            del buf[:pos]
        return out

    def _frame_end(self, buf: bytearray, pos: int, n: int) -> int:
        """The end of the message starting at `pos`, or -1 if more bytes are needed."""
        if buf[pos : pos + 2] != b"8="[: n - pos]:
            raise FrameError(
                GARBAGE, f"a message must start with 8=, got {bytes(buf[pos : pos + 16])!r}"
            )
        soh = buf.find(SOH, pos, pos + _MAX_PREFIX)
        if soh < 0:
            if n - pos >= _MAX_PREFIX:
                raise FrameError(GARBAGE, "no BeginString field")
            return -1
        begin = bytes(buf[pos + 2 : soh])
        if begin not in BEGIN_STRINGS:
            raise FrameError(GARBAGE, f"BeginString {begin[:16]!r} is not relayed")
        start = soh + 1
        if buf[start : start + 2] != b"9="[: max(0, n - start)]:
            raise FrameError(GARBAGE, "the second field must be BodyLength (9=)")
        soh = buf.find(SOH, start, pos + _MAX_PREFIX)
        if soh < 0:
            if n - pos >= _MAX_PREFIX:
                raise FrameError(GARBAGE, "BodyLength is not a number")
            return -1
        digits = bytes(buf[start + 2 : soh])
        if not digits.isdigit() or len(digits) > 7:
            raise FrameError(GARBAGE, f"BodyLength {digits[:16]!r} is not a number")
        length = int(digits)
        if length > self.max_body:
            raise FrameError(OVERSIZE, f"BodyLength {length} over {self.max_body}")
        body = soh + 1
        end = body + length + 7
        if n < end:
            return -1
        if buf[body : body + 3] != b"35=":
            raise FrameError(GARBAGE, "the third field must be MsgType (35=)")
        if buf[body + length - 1] != 1 or buf[body + length : body + length + 3] != b"10=":
            raise FrameError(BODY_LENGTH, f"BodyLength {length} does not end at the CheckSum")
        if buf[end - 1] != 1 or not bytes(buf[end - 4 : end - 1]).isdigit():
            raise FrameError(GARBAGE, "CheckSum is not three digits")
        return end


def _three_digits(buf: bytearray, at: int) -> int:
    return (buf[at] - 48) * 100 + (buf[at + 1] - 48) * 10 + (buf[at + 2] - 48)


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
