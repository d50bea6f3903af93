"""The aggregator's local copy of the node's audit chain, one JSON object a line, so the
trail survives a wiped or rewritten Redis (`killswitch audit --verify --file PATH`).

Append-only: it never rewrites a line. When what Redis holds no longer continues the copy
(entries removed, the chain restarted after Redis lost its data) it writes a `break` line
saying so, logs AUDIT_CHAIN_BROKEN, and goes on copying the new chain.
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
COPY_EVERY_S = 1.0


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
        self._load()

    async def run(self, stop: asyncio.Event) -> None:
        """`sync()` every COPY_EVERY_S until `stop` is set; a failure is logged and retried,
        never raised (junk in Redis, a full disk, Redis away)."""
        while not stop.is_set():
            try:
                await self.sync()
            except (OSError, RedisError) as e:
                self.log.error(
                    "audit_log_failed", error=f"{type(e).__name__}: {e}", file=str(self.path)
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), COPY_EVERY_S)

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
            elif isinstance(obj, dict) and "fields" in obj:
                fields = {str(k): str(v) for k, v in obj["fields"]}
                self.last_id = str(obj.get("id", self.last_id))
                self.last_seq = parse_uint(fields.get("seq")) or 0
                self.last_hash = fields.get("hash", "")

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
        self.last_seq, self.last_hash = 0, ""
        return json.dumps({"break": why})

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
