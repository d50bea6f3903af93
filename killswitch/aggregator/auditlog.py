"""The aggregator's local copy of the node's audit chain, one JSON object a line, so the
trail survives a wiped or rewritten Redis (`killswitch audit --verify --file PATH`).

Append-only: it never rewrites a line. When what Redis holds no longer continues the copy
(entries removed, the chain restarted after Redis lost its data) it writes a `break` line
saying so, logs AUDIT_CHAIN_BROKEN, and goes on copying the new chain.

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
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from killswitch.core.bounds import parse_uint
from killswitch.store.store import Store

BATCH = 500
COPY_EVERY_S = 1.0  # pause after a failed read before trying again
BLOCK_MS = 1000  # one blocking read waits this long for a new entry (below socket_timeout)
CHECK_EVERY_S = 5.0  # full comparison of the copy with what Redis holds


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
                    "audit_log_failed", error=f"{type(e).__name__}: {e}", file=str(self.path)
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
            self.log.error("AUDIT_CHAIN_DISAGREES", first=bad[0], entries=len(bad),
                           file=str(self.path),
                           reason="Redis no longer holds what this copy holds")  # fmt: skip
        self.chain_ok = ok
        return ok

    def _load(self) -> None:
        """Resume after the last entry already in the file (a restart copies nothing twice)."""
        if not self.path.exists():
            return
        for line in self.path.read_text("utf-8", errors="replace").splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if "break" in obj:
                self.last_seq, self.last_hash = 0, ""
                self._hashes.clear()
            elif isinstance(obj, dict) and "fields" in obj:
                fields = {str(k): str(v) for k, v in obj["fields"]}
                self.last_id = str(obj.get("id", self.last_id))
                self.last_seq = parse_uint(fields.get("seq")) or 0
                self.last_hash = fields.get("hash", "")
                self._hashes[self.last_id] = self.last_hash

    async def sync(self) -> int:
        """Copy every entry after the last copied one; returns how many were copied."""
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
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
