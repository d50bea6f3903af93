"""The aggregator's local copy of the node's audit chain, one JSON object a line, so the
trail survives a wiped or rewritten Redis (`killswitch audit --verify --file PATH`).

Append-only: it never rewrites a line. When what Redis holds no longer continues the copy
(entries removed, the chain restarted after Redis lost its data) it writes a `break` line
saying so, logs AUDIT_CHAIN_BROKEN, and goes on copying the new chain.

At start it reads whatever the file holds (`core.proof.auditcopy`: other chains, break markers,
junk, a torn last line) and, before copying anything, checks that Redis still holds the
copy's last entry. A copy that does not belong to the chain Redis holds (an earlier
deployment's, or one Redis lost) is renamed aside, kept as `<file>.orphaned-<time>`, and a
fresh copy is started: AUDIT_COPY_ROTATED, `killswitch_audit_copy_rotations_total`.

It follows the stream with a blocking read (XREAD BLOCK), so an entry is copied within
milliseconds of being written: a Redis writer has no window to replace it first. Every
`CHECK_EVERY_S` it compares what Redis holds with the copy (`chain_ok`, exported as
`killswitch_audit_chain_ok`): an entry rewritten (even with its hash recomputed), removed or
cut off in Redis makes them disagree. A break keeps it 0 until the aggregator restarts (an
operator runs `audit --verify --file` first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from killswitch.core.node.bounds import parse_uint
from killswitch.core.proof import auditcopy
from killswitch.store.store import Store

BATCH = 500
COPY_EVERY_S = 1.0  # pause after a failed read before trying again
BLOCK_MS = 1000  # one blocking read waits this long for a new entry (below socket_timeout)
CHECK_EVERY_S = 5.0  # full comparison of the copy with what Redis holds
ORPHANED = ".orphaned-"  # the suffix of a copy rotated aside, before its UTC time
STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # what XRANGE accepts; a junk id never belongs


class AuditMirror:
    """Copies new chain entries from Redis to `path`; `sync()` once per few ticks."""

    def __init__(self, store: Store, path: str, log: Any) -> None:
        self.store = store
        self.path = Path(path)
        self.log = log
        self.last_id = ""
        self.last_seq = 0
        self.last_hash = ""
        self.copied = 0
        self.breaks = 0
        self.rotations = 0  # copies renamed aside because Redis holds another chain
        self.adopted = False  # the copy was checked against Redis (or rotated aside)
        self._contents = auditcopy.parse("")
        self._torn = False  # the file's last line has no newline: start the next on a new one
        self.chain_ok = True  # the copy and Redis agree on every entry copied since a break
        self._hashes: dict[str, str] = {}  # id -> hash of every entry copied since a break
        self._checked_at = -1e9
        self._load()

    async def run(self, stop: asyncio.Event) -> None:
        """`sync()` as soon as a new entry is written (a blocking read), and compare with Redis
        every CHECK_EVERY_S, until `stop` is set; a failure is logged and retried, never raised
        (junk in Redis, a full disk, Redis away)."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                await self.sync()
                if loop.time() - self._checked_at >= CHECK_EVERY_S:
                    self._checked_at = loop.time()
                    await self.check()
                await self._wait_for_entry()
            except (OSError, RedisError) as e:
                self.log.error(
                    "AUDIT_LOG_FAILED", error=f"{type(e).__name__}: {e}", file=str(self.path)
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), COPY_EVERY_S)

    async def _wait_for_entry(self) -> None:
        """Block (at most BLOCK_MS) until the stream has an entry after the last copied."""
        await self.store.redis.xread(
            {self.store.keys.audit: self.last_id or "0-0"}, count=1, block=BLOCK_MS
        )

    async def check(self) -> bool:
        """Compare every entry copied since the last break with what Redis holds now."""
        if not self._hashes:
            return self.chain_ok
        entries, _ = await self.store.audit_chain()
        held = {str(i): f.get("hash", "") for i, f in entries}
        bad = [i for i, h in self._hashes.items() if held.get(i) != h]
        ok = not bad and not self.breaks  # a break stays flagged until a restart
        if not ok and self.chain_ok:
            self.log.error("AUDIT_CHAIN_DISAGREES", first=bad[0] if bad else "", entries=len(bad),
                           file=str(self.path),
                           reason="Redis no longer holds what this copy holds")  # fmt: skip
        self.chain_ok = ok
        return ok

    def _load(self) -> None:
        """Resume after the last entry already in the file (a restart copies nothing twice)."""
        try:
            text = self.path.read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return
        except OSError as e:  # a directory in its place, no permission: the writes say it again
            self.log.error(
                "AUDIT_LOG_FAILED", error=f"{type(e).__name__}: {e}", file=str(self.path)
            )
            return
        c = self._contents = auditcopy.parse(text)
        self._torn = c.torn
        if c.junk:
            self.log.warning("AUDIT_COPY_JUNK", lines=c.junk, torn=c.torn, file=str(self.path),
                             action="skipped: every readable entry is kept")  # fmt: skip
        self._hashes = {e.id: e.fields.get("hash", "") for e in c.current}
        last = c.last
        if last is not None:
            self.last_id = last.id
            self.last_seq = parse_uint(last.fields.get("seq")) or 0
            self.last_hash = last.fields.get("hash", "")

    async def adopt(self) -> None:
        """Check once that Redis holds the copy's last entry; else rotate the copy aside."""
        c, last = self._contents, self._contents.last
        if c.empty:
            self.adopted = True
            return
        head: dict[str, str] = {}
        if last is not None and STREAM_ID.fullmatch(last.id):
            redis, keys = self.store.redis, self.store.keys
            pipe = redis.pipeline(transaction=True)
            pipe.xrange(keys.audit, min=last.id, max=last.id, count=1)
            pipe.hgetall(keys.audit_head)
            found, raw_head = await pipe.execute()
            head = {str(k): str(v) for k, v in dict(raw_head).items()}
            held = {str(k): str(v) for k, v in dict(found[0][1]).items()} if found else {}
            if held and held.get("hash", "") == last.fields.get("hash", ""):
                self.adopted = True
                return
            why = (
                f"Redis does not hold this copy's last entry {last.id} (seq "
                f"{last.fields.get('seq', '?')}); its chain is at seq {head.get('seq', '0')}"
            )
        else:
            why = "the copy holds no chain entry (with a stream id) after its last break marker"
        await asyncio.to_thread(self._rotate, why, head)
        self.adopted = True

    def _rotate(self, why: str, head: dict[str, str]) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}{ORPHANED}{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}{ORPHANED}{stamp}-{n}")
        os.replace(self.path, target)
        c = self._contents
        self.rotations += 1
        self.log.error(
            "AUDIT_COPY_ROTATED", reason=why, file=str(self.path), moved_to=str(target),
            entries=len(c.entries), chains=c.chains, junk_lines=c.junk,
            redis_head_seq=head.get("seq", ""),
            action="kept aside; a fresh copy of the chain Redis holds is started",
        )  # fmt: skip
        self.last_id, self.last_seq, self.last_hash = "", 0, ""
        self._torn = False
        self._contents = auditcopy.parse("")
        self._hashes.clear()

    async def sync(self) -> int:
        """Copy every entry after the last copied one; returns how many were copied."""
        if not self.adopted:
            await self.adopt()
        entries, head = await self._read()
        head_seq = parse_uint(head.get("seq")) or 0
        lines: list[str] = []
        if self.last_seq and head_seq < self.last_seq and not entries:
            lines.append(self._break(f"Redis chain holds {head_seq} entries, this copy "
                                     f"{self.last_seq}: Redis lost or cut its trail"))  # fmt: skip
            self.last_id = ""
        for entry_id, f in entries:
            seq = parse_uint(f.get("seq")) or 0
            linked = seq == self.last_seq + 1 and (
                f.get("prev", "") == self.last_hash or self.last_seq == 0
            )
            if not linked:
                lines.append(self._break(
                    f"entry {entry_id} has seq {f.get('seq')!r}, prev does"
                    f"{'' if f.get('prev') == self.last_hash else ' not'} link; "
                    f"this copy ends at seq {self.last_seq}"
                ))  # fmt: skip
            lines.append(json.dumps({"id": entry_id, "fields": list(f.items())}))
            self.last_id, self.last_seq, self.last_hash = entry_id, seq, f.get("hash", "")
            self._hashes[entry_id] = self.last_hash
            self.copied += 1
        if lines:
            await asyncio.to_thread(self._write, lines)  # fsync off the event loop
        return len(entries)

    async def _read(self) -> tuple[list[tuple[str, dict[str, str]]], dict[str, str]]:
        redis, keys = self.store.redis, self.store.keys
        pipe = redis.pipeline(transaction=True)
        pipe.xrange(keys.audit, min=f"({self.last_id}" if self.last_id else "-", count=BATCH)
        pipe.hgetall(keys.audit_head)
        entries, head = await pipe.execute()
        return [(str(i), dict(f)) for i, f in entries], dict(head)

    def _break(self, why: str) -> str:
        self.breaks += 1
        self.log.error("AUDIT_CHAIN_BROKEN", reason=why, file=str(self.path))
        self.chain_ok = False
        self.last_seq, self.last_hash = 0, ""
        self._hashes.clear()
        return json.dumps({"break": why})

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            # a line cut short by a crash is ended first, or the next entry would join it
            fh.write(("\n" if self._torn else "") + "\n".join(lines) + "\n")
            self._torn = False
            fh.flush()
            os.fsync(fh.fileno())


def history(path: str) -> list[dict[str, str]]:
    """Every entry's fields in the local copy and in the copies rotated aside beside it, of
    every chain, whatever else the files hold (none if absent or unreadable).

    The aggregator's own record, which no Redis writer reaches: what it saw finish stays
    finished after a rotation too."""
    if not path:
        return []
    p = Path(path)
    out: list[dict[str, str]] = []
    # The copy first, then the rotated ones: a rotation between the two reads is still seen.
    files = [p]
    with contextlib.suppress(OSError):
        files += sorted(p.parent.glob(f"{glob_escape(p.name)}{ORPHANED}*"))
    for f in files:
        with contextlib.suppress(OSError):
            out += auditcopy.parse(f.read_text("utf-8", errors="replace")).fields()
    return out


def glob_escape(name: str) -> str:
    return "".join(f"[{ch}]" if ch in "*?[" else ch for ch in name)
