"""The flight recorder's file format: a header and fixed-size binary records of gate decisions.

Pure: layouts, codes and the decoder of a file's bytes. It never opens a file or maps
memory (the sidecar's `runtime.ring` writes the ring; `killswitch recorder` reads files).

A file is a 256-byte header and `slots` records of 160 bytes. In a ring file (`KIND_RING`)
record seq `n` (from 1) lives in slot `n % slots`, and the header's `index` is the next seq
to be written: every record below it is complete. The writer packs a record (`struct`
zero-fills it, then writes its fields) and only then stores `index + 1`, so a writer killed
at any instruction leaves at most one slot in flux, the one `index` points at, and the
decoder skips exactly that slot. A ring of `slots` slots therefore keeps the newest
`slots - 1` records (the sidecar makes `--recorder-size N` records `N + 1` slots). A frozen
file (`KIND_FROZEN`, the records around one kill) holds `index` records in slots 0.. in order.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAGIC = b"KSFLTREC"
VERSION = 1
KIND_RING = 0
KIND_FROZEN = 1

# magic, version, header size, record size, slots, index (next seq), created ns, kind,
# complete (a frozen file whose "after" part is written), epoch and kill time (frozen), the
# freeze span in seconds, node, host.
HEADER = struct.Struct("<8sHHIQQqBB6xQqI4x64s64s56x")
HEADER_SIZE = HEADER.size  # 256
INDEX_OFFSET = 24  # where `index` lives: the one header field written per record
# seq, wall time ns, epoch, qty, price, release and limits short ids (8 bytes each), side,
# decision, reason, source, order id (first 64 bytes), symbol (first 32 bytes).
RECORD = struct.Struct("<QqQqd8s8sBBBB4x64s32s")
RECORD_SIZE = RECORD.size  # 160
# The same bytes for the writer's hot path, in fewer arguments (each costs a conversion):
# the two short ids as one 16-byte field, the four one-byte codes as one little-endian u32
# (side | decision << 8 | reason << 16 | source << 24).
RECORD_FAST = struct.Struct("<QqQqd16sI4x64s32s")
assert RECORD_FAST.size == RECORD_SIZE

# Decisions (one byte): an order allowed or blocked, a cancel (always allowed), and the
# marker a host writes when it applies a kill (its epoch; reason the kill's word).
ALLOW, BLOCK, CANCEL, KILL = 1, 2, 3, 4
DECISIONS = {ALLOW: "allow", BLOCK: "block", CANCEL: "cancel", KILL: "kill"}
# Sources (one byte): who asked the gate (`host`: the sidecar itself, for kill markers).
HOST, INPROC, LINE, FIX = 0, 1, 2, 3
SOURCES = {HOST: "host", INPROC: "inproc", LINE: "line", FIX: "fix"}
SIDES = {"": 0, "BUY": 1, "SELL": 2}
SIDE_NAMES = {v: k for k, v in SIDES.items()}
# The gate protocol's reason words; code 255 is "another word" (decoded as "other").
REASONS = {
    "": 0,
    "killed": 1,
    "unarmed": 2,
    "stale": 3,
    "unlisted": 4,
    "limit": 5,
    "unproven": 6,
}
OTHER_REASON = 255
REASON_NAMES = {v: k for k, v in REASONS.items()} | {OTHER_REASON: "other"}


class FormatError(ValueError):
    """Bytes that are not a recorder file this version reads; the message is one line."""


@dataclass(frozen=True, slots=True)
class Header:
    version: int
    slots: int
    index: int
    created_ns: int
    kind: int
    node: str
    host: str
    complete: bool = False
    epoch: int = 0  # frozen: the kill's epoch
    kill_ns: int = 0  # frozen: when the host applied the kill (wall ns)
    freeze_s: int = 0  # seconds before and after a kill that a freeze keeps


@dataclass(frozen=True, slots=True)
class Entry:
    """One decoded record, with its host's names from the header."""

    t_ns: int
    node: str
    host: str
    seq: int
    source: str
    order_id: str
    symbol: str
    side: str
    qty: int
    price: float
    decision: str
    reason: str
    epoch: int
    release: str  # short id (hex), "" when the host attested nothing
    limits: str

    def to_json(self) -> dict[str, object]:
        return {
            "t_ns": self.t_ns, "node": self.node, "host": self.host, "seq": self.seq,
            "source": self.source, "order_id": self.order_id, "symbol": self.symbol,
            "side": self.side, "qty": self.qty, "price": self.price, "decision": self.decision,
            "reason": self.reason, "epoch": self.epoch, "release": self.release,
            "limits": self.limits,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Decoded:
    """A file's records, oldest first, and how many slots were skipped as torn or foreign."""

    header: Header
    entries: tuple[Entry, ...]
    skipped: int


def short_id(digest: str) -> bytes:
    """The 8 bytes a record keeps of a hex digest ("" or non-hex: zeros)."""
    try:
        return bytes.fromhex(digest[:16]).ljust(8, b"\0")
    except ValueError:
        return b"\0" * 8


def reason_code(reason: str) -> int:
    return REASONS.get(reason, OTHER_REASON)


def kind(decision: int, reason: str, source: int) -> int:
    """A record's decision, reason and source in one int (see RECORD_FAST): the gate
    computes it once per kind of decision, so the order path does not."""
    return (decision & 0xFF) << 8 | reason_code(reason) << 16 | (source & 0xFF) << 24


def pack_header(h: Header) -> bytes:
    return HEADER.pack(
        MAGIC, h.version, HEADER_SIZE, RECORD_SIZE, h.slots, h.index, h.created_ns, h.kind,
        int(h.complete), h.epoch, h.kill_ns, h.freeze_s, _name(h.node), _name(h.host),
    )  # fmt: skip


def pack_entry(e: Entry) -> bytes:
    """The record bytes of `e` (the writer's hot path packs the same layout in place)."""
    return RECORD.pack(
        e.seq, e.t_ns, e.epoch, e.qty, e.price, short_id(e.release), short_id(e.limits),
        SIDES.get(e.side, 0), _code(DECISIONS, e.decision), reason_code(e.reason),
        _code(SOURCES, e.source), e.order_id.encode()[:64], e.symbol.encode()[:32],
    )  # fmt: skip


def read_header(buf: bytes | memoryview) -> Header:
    """The header at the start of `buf`; FormatError (one line) for anything but this
    format version."""
    if len(buf) < 10 or bytes(buf[:8]) != MAGIC:
        raise FormatError("not a killswitch recorder file (bad magic)")
    version = struct.unpack_from("<H", buf, 8)[0]
    if version != VERSION:
        raise FormatError(
            f"recorder format version {version}; this killswitch reads version {VERSION} only"
        )
    if len(buf) < HEADER_SIZE:
        raise FormatError("truncated recorder header")
    (_, _, hsize, rsize, slots, index, created, kind, complete, epoch, kill_ns, freeze_s,
     node, host) = HEADER.unpack_from(buf)  # fmt: skip
    if hsize != HEADER_SIZE or rsize != RECORD_SIZE or kind not in (KIND_RING, KIND_FROZEN):
        raise FormatError(f"recorder header of version {VERSION} with a foreign layout")
    return Header(
        version, slots, index, created, kind, _text(node), _text(host), bool(complete), epoch,
        kill_ns, freeze_s,
    )  # fmt: skip


def decode(buf: bytes | memoryview) -> Decoded:
    """Every complete record of a ring or frozen file, oldest first."""
    h = read_header(buf)
    if len(buf) < HEADER_SIZE + h.slots * RECORD_SIZE:
        raise FormatError(f"truncated recorder file: {h.slots} slots declared")
    entries: list[Entry] = []
    skipped = 0
    for slot, seq in _slots(h):
        rec = RECORD.unpack_from(buf, HEADER_SIZE + slot * RECORD_SIZE)
        if rec[0] != seq and h.kind == KIND_RING:
            skipped += 1  # not the record this slot should hold: never a guess
            continue
        entries.append(_entry(h, rec))
    if h.kind == KIND_RING and h.slots and h.index:
        # the slot `index` points at: the record in flux when the writer stopped
        in_flux = RECORD.unpack_from(buf, HEADER_SIZE + (h.index % h.slots) * RECORD_SIZE)[0]
        skipped += in_flux != max(h.index - h.slots, 0)
    return Decoded(h, tuple(entries), skipped)


def _slots(h: Header) -> Iterator[tuple[int, int]]:
    """(slot, expected seq) of the records to read, oldest first."""
    if h.kind == KIND_FROZEN:
        for i in range(min(h.index, h.slots)):
            yield i, 0
        return
    if not h.slots:
        return
    for seq in range(max(1, h.index - h.slots + 1), h.index):
        yield seq % h.slots, seq


def _entry(h: Header, rec: tuple[Any, ...]) -> Entry:
    seq, t_ns, epoch, qty, price, rel, lim, side, decision, reason, source, oid, sym = rec
    return Entry(
        t_ns=t_ns, node=h.node, host=h.host, seq=seq, source=SOURCES.get(source, "?"),
        order_id=_text(oid), symbol=_text(sym), side=SIDE_NAMES.get(side, "?"), qty=qty,
        price=price, decision=DECISIONS.get(decision, "?"), reason=REASON_NAMES.get(reason, "?"),
        epoch=epoch, release=_hex(rel), limits=_hex(lim),
    )  # fmt: skip


def _hex(b: bytes) -> str:
    return "" if not any(b) else b.hex()[:12]


def _text(b: bytes) -> str:
    return b.rstrip(b"\0").decode("utf-8", "replace")


def _name(s: str) -> bytes:
    return s.encode()[:64]


def _code(table: dict[int, str], word: str) -> int:
    for k, v in table.items():
        if v == word:
            return k
    return 0


def ring_slots(buf: bytes | memoryview, h: Header) -> list[tuple[int, int, int]]:
    """(seq, wall ns, byte offset) of every complete record of a ring, oldest first."""
    # The slots written, as at most two runs of adjacent slots, each unpacked in one C loop:
    # a kill's freeze reads every record of a ring of up to 65,536, and one `unpack_from` a
    # slot took ten times as long. An almost empty ring costs almost nothing.
    out = []
    view = memoryview(buf)
    for first, n, seq in _runs(h):
        off = HEADER_SIZE + first * RECORD_SIZE
        heads = _SEQ_TIME_RECORD.iter_unpack(view[off : off + n * RECORD_SIZE])
        for i, (got, t_ns) in enumerate(heads):
            if got == seq + i or h.kind == KIND_FROZEN:
                out.append((got, t_ns, off + i * RECORD_SIZE))
    return out


def _runs(h: Header) -> Iterator[tuple[int, int, int]]:
    """(first slot, slots, seq expected in the first) of the records `_slots` reads."""
    if h.kind == KIND_FROZEN:
        yield 0, min(h.index, h.slots), 0
        return
    lo = max(1, h.index - h.slots + 1)
    n = h.index - lo
    if not h.slots or n <= 0:
        return
    first = lo % h.slots
    head = min(n, h.slots - first)
    yield first, head, lo
    if n > head:
        yield 0, n - head, lo + head


def frozen_file(h: Header, records: list[bytes]) -> bytes:
    """A frozen file: `h` (kind, epoch, kill time, span) over these raw records, in order."""
    body = b"".join(records)
    head = Header(
        VERSION, len(records), len(records), h.created_ns, KIND_FROZEN, h.node, h.host,
        h.complete, h.epoch, h.kill_ns, h.freeze_s,
    )  # fmt: skip
    return pack_header(head) + body


_SEQ_TIME_RECORD = struct.Struct(f"<Qq{RECORD_SIZE - 16}x")  # a record's seq and wall time
