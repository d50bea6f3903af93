"""The flight recorder's ring: gate decisions appended to a memory-mapped file.

`Ring.write` (the gate's hook) is on the order path: the record's bytes into the mapped file,
then one 8-byte store of the header's index; no system call, no lock. Two writers do exactly
that, in the same bytes: the C extension `runtime._ringwrite` (built at install where a C
compiler and Python's headers exist; it allocates nothing for an ASCII order id), and the
Python writer below (one `struct.pack_into`; it allocates the order id's bytes and the wall
time's int), which runs where the C writer is not built or the ring has an injected clock,
takes whatever the C writer hands it (anything unusual), and is the reference the C writer
is tested against. The file's blocks are allocated when it is made, so a full disk fails the
start, never a write. The kernel writes the pages back; a sidecar killed with SIGKILL leaves
them in the page cache, so the file stays readable, with at most the one record in flux
skipped (see `core.enforce.recfmt`). One writer thread at a time, as the gate.
"""

from __future__ import annotations

import errno
import itertools
import mmap
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from killswitch.core.enforce.gate import Recorder
from killswitch.core.enforce.recfmt import (
    HEADER_SIZE,
    INDEX_OFFSET,
    KIND_RING,
    RECORD_FAST,
    RECORD_SIZE,
    SIDES,
    VERSION,
    FormatError,
    Header,
    decode,
    kind,
    pack_entry,
    pack_header,
    read_header,
    short_id,
)
from killswitch.core.settings.options import option

try:
    from killswitch.runtime import _ringwrite

    NATIVE = True  # the C writer was built at install
except ImportError:  # no C compiler or Python headers where it was installed
    NATIVE = False

WRITERS: tuple[str, ...] = option("recorder-writer").choices  # the one table's choices
_MAX_SYMBOLS = 16_384  # symbols whose bytes are kept; past that a symbol takes the slow path


class Ring:
    """A ring file of `slots` record slots at `path` (created, or continued if it is one).

    Refuses (FormatError, one line) a file of another format version, or one that is not a
    recorder file: it never overwrites what it does not recognise. A ring of another size is
    started anew with the old ring's newest records carried over. `writer`: "native" (the C
    writer; ValueError when it is not built, or with an injected `clock_ns`, which only the
    Python writer calls), "python", or "auto" (native when it can); `self.writer` says which.
    """

    def __init__(
        self,
        path: str,
        slots: int,
        node: str,
        host: str,
        *,
        freeze_s: int = 60,
        clock_ns: Callable[[], int] = time.time_ns,
        writer: str = "auto",
    ) -> None:
        self.writer = _which(writer, clock_ns)
        self.path = path
        self.slots = slots
        self._ids = [b"\0" * 16]  # the release and limits short ids every record carries
        self.dropped = 0  # decisions that could not be recorded (bad types, closed ring)
        self._clock_ns = clock_ns
        self._symbols: dict[str, bytes] = {}
        self._sides = dict(SIDES)  # and any other side word seen, as code 0 (a few at most)
        carried = self._existing(path, slots)
        size = HEADER_SIZE + slots * RECORD_SIZE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            if carried is not None:
                os.ftruncate(fd, 0)  # another size: start anew (the newest records carry over)
            os.ftruncate(fd, size)
            _reserve(fd, size)
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        index = 1
        if carried is None and _is_ring(self._mm, slots):
            index = max(read_header(self._mm[:HEADER_SIZE]).index, 1)
        else:
            head = Header(VERSION, slots, 1, clock_ns(), KIND_RING, node, host, freeze_s=freeze_s)
            self._mm[:HEADER_SIZE] = pack_header(head)
        self._index = memoryview(self._mm)[INDEX_OFFSET : INDEX_OFFSET + 8].cast("Q")
        self._index[0] = index
        self.started = index  # the next seq when this process mapped the ring (metrics)
        self._seq = itertools.count(index)
        self._pack_fast = RECORD_FAST.pack_into
        self.write: Recorder = self._writer()
        for raw in carried or ():
            seq = next(self._seq)
            off = HEADER_SIZE + seq % slots * RECORD_SIZE
            self._mm[off : off + RECORD_SIZE] = raw
            _SEQ.pack_into(self._mm, off, seq)
            self._index[0] = seq + 1
        self._native: _ringwrite.Writer | None = None
        if self.writer == "native":
            self._native = _ringwrite.Writer(
                self._mm, slots, int(self._index[0]), self._ids[0], self._sides, self._slow
            )  # fmt: skip
            self.write = self._native  # from the seq the Python writer would have taken next

    @staticmethod
    def _existing(path: str, slots: int) -> list[bytes] | None:
        """None: no file, or a ring of this size to continue; else the records to carry."""
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER_SIZE)
                if not head:
                    return None
                h = read_header(head)  # FormatError: not ours, or another version
                size = os.fstat(f.fileno()).st_size
                if (h.kind, h.slots, size) == (KIND_RING, slots, HEADER_SIZE + slots * RECORD_SIZE):
                    return None
                d = decode(head + f.read())
        except FileNotFoundError:
            return None
        return [pack_entry(e) for e in d.entries[-(slots - 1) :]] if slots > 1 else []

    def _writer(self) -> Recorder:
        """`write(kind, order_id, symbol, side, qty, price, epoch)`: append one gate decision
        (`kind` from `core.enforce.recfmt.kind`); never raises. A closure over locals, not a
        method: on the order path every attribute lookup, method call and branch is a cost
        (measured in bench/gate_check.py), so the common case is subscripts and one
        `pack_into`; a symbol or side not in its table takes the `except` path."""
        mm, slots, pack, clock = self._mm, self.slots, RECORD_FAST.pack_into, self._clock_ns
        base, size, index, seqs, nxt = HEADER_SIZE, RECORD_SIZE, self._index, self._seq, next
        symbols, sides, slow = self._symbols, self._sides, self._slow
        ids = self._ids[0]  # rebound by `set_ids` (a closure cell reads faster than a list)

        def set_ids(value: bytes) -> None:
            nonlocal ids
            ids = value

        self._set_ids = set_ids

        def write(code: int, order_id: str, symbol: str, side: str, qty: int, price: float,
                  epoch: int) -> None:  # fmt: skip
            seq = nxt(seqs)
            try:
                # the lookups before the clock: a miss reads it once, in `slow`
                sym, codes = symbols[symbol], code | sides[side]
                pack(
                    mm, base + seq % slots * size, seq, clock(), epoch, qty, price, ids, codes,
                    order_id.encode(), sym,
                )  # fmt: skip
                index[0] = seq + 1
            except Exception:  # a new symbol, or odd types from a caller: never raised
                slow(seq, code, order_id, symbol, side, qty, price, epoch)

        return write

    def record(
        self,
        source: int,
        order_id: str,
        symbol: str,
        side: str,
        qty: int,
        price: float,
        decision: int,
        reason: str,
        epoch: int,
    ) -> None:
        """Append one decision made outside the gate (e.g. a gateway's): codes from
        `core.enforce.recfmt` (source FIX, decision ALLOW/BLOCK/CANCEL, a reason word). Never raises."""
        try:
            code = kind(decision, reason, source)
        except Exception:
            code = 0
        self.write(code, order_id, symbol, side, qty, price, epoch)

    def _slow(self, seq: int, code: object, order_id: object, symbol: object, side: object,
              qty: object, price: object, epoch: object) -> None:  # fmt: skip
        """The writer's `except` path: a symbol or side word seen for the first time (kept,
        up to `_MAX_SYMBOLS` and 64), else whatever the caller passed, coerced; a ring that
        cannot be written (closed) counts the record in `dropped`. A value the fast path
        could pack is recorded as it would have (so a record's bytes do not depend on which
        path, or which writer, took it); only what it could not is coerced."""
        try:
            if isinstance(symbol, str):
                sym = symbol.encode()[:32]
                if len(self._symbols) < _MAX_SYMBOLS:
                    self._symbols[symbol] = sym
            else:
                sym = str(symbol).encode("utf-8", "replace")[:32]
            if isinstance(side, str) and side not in self._sides and len(self._sides) < 64:
                self._sides[side] = 0  # another word for a side (e.g. a FIX code): none
            if not isinstance(order_id, str):
                order_id = str(order_id)
            side_code = SIDES.get(str(side), 0)
            codes = code | side_code if isinstance(code, int) else -1
            if not 0 <= codes <= _U32:
                codes = (_clamp(code) & 0xFFFFFF00) | side_code
            if not (isinstance(epoch, int) and 0 <= epoch <= _U64):
                epoch = max(_clamp(epoch), 0)
            self._pack_fast(
                self._mm, HEADER_SIZE + seq % self.slots * RECORD_SIZE, seq, self._clock_ns(),
                epoch, _clamp(qty), _float(price), self._ids[0], codes,
                order_id.encode("utf-8", "replace"), sym,
            )  # fmt: skip
            self._index[0] = seq + 1
        except Exception:
            self.dropped += 1

    def set_ids(self, release: str, limits: str) -> None:
        """The release and limits digests the next records carry (their short ids)."""
        self._ids[0] = ids = short_id(release) + short_id(limits)
        self._set_ids(ids)
        if self._native is not None:
            self._native.set_ids(ids)

    def next_seq(self) -> int:
        """The seq the next record gets: records this process wrote are `next_seq() - started`
        (read at scrape time; the order path keeps no counter of its own)."""
        return int(self._index[0]) if not self._mm.closed else self.started

    def span_ns(self) -> int:
        """Wall time from the oldest record the ring holds to the newest (0 with fewer than
        two): how far back a freeze can reach at this order rate."""
        if self._mm.closed:
            return 0
        newest = int(self._index[0]) - 1
        oldest = max(newest - self.slots + 2, 1)
        if newest <= oldest:
            return 0
        (t_old,) = _TIME.unpack_from(self._mm, HEADER_SIZE + oldest % self.slots * RECORD_SIZE + 8)
        (t_new,) = _TIME.unpack_from(self._mm, HEADER_SIZE + newest % self.slots * RECORD_SIZE + 8)
        return max(int(t_new) - int(t_old), 0)

    def snapshot(self, whole: bool = True) -> bytearray:
        """A consistent copy of the ring file's bytes, safe while a writer appends: a slot the
        writer may have reached during the copy is blanked (the decoder skips it). Slots no
        record has reached yet are not copied: zeros as in the file, or, not `whole`, left
        out (enough for `ring_slots`): a kill's freeze of a ring holding a few records
        copies those, not the whole file."""
        before = int(self._index[0])
        used = HEADER_SIZE + min(before + 1, self.slots) * RECORD_SIZE
        with memoryview(self._mm) as mapped:
            data = bytearray(mapped[:used])
        after = int(self._index[0])
        data[INDEX_OFFSET : INDEX_OFFSET + 8] = before.to_bytes(8, "little")
        for seq in range(max(before + 1, after - self.slots + 1), after + 1):
            off = HEADER_SIZE + seq % self.slots * RECORD_SIZE
            if off < used:
                data[off : off + 8] = bytes(8)
        if whole:
            data += bytes(len(self._mm) - used)
        return data

    def close(self) -> None:
        """Unmap (the file stays). Later `record()` calls are counted in `dropped`."""
        if self._mm.closed:
            return
        if self._native is not None:
            self._native.close()  # its hold on the mapping first: an exported buffer blocks unmapping
        self._mm.flush()
        self._index.release()
        self._mm.close()


def _which(writer: str, clock_ns: Callable[[], int]) -> str:
    """The writer a ring runs: "native" or "python" (see `Ring`)."""
    if writer not in WRITERS:
        raise ValueError(f"recorder writer {writer!r}: one of {', '.join(WRITERS)}")
    default_clock = clock_ns is time.time_ns
    if writer == "native" and not NATIVE:
        raise ValueError(
            "the native recorder writer is not built here (no C compiler or Python headers "
            "when killswitch was installed): use the python writer"
        )
    if writer == "native" and not default_clock:
        raise ValueError("the native recorder writer reads the wall clock itself: no clock_ns")
    return "native" if writer != "python" and NATIVE and default_clock else "python"


def _reserve(fd: int, size: int) -> None:
    """Allocate the file's blocks now: a write into a mapped page the filesystem cannot
    back (a full disk) is a SIGBUS that would end the sidecar; this fails at start instead
    (OSError ENOSPC). A filesystem that cannot preallocate keeps the sparse file."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def _is_ring(mm: mmap.mmap, slots: int) -> bool:
    try:
        h = read_header(mm[:HEADER_SIZE])
    except FormatError:
        return False
    return h.kind == KIND_RING and h.slots == slots


def _clamp(v: Any) -> int:
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        return 0
    return max(-(2**63), min(n, 2**63 - 1))


def _float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return 0.0


_U32, _U64 = 2**32 - 1, 2**64 - 1
_SEQ = struct.Struct("<Q")
_TIME = struct.Struct("<q")  # a record's wall time, 8 bytes after its seq
