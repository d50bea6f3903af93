"""What a sidecar does when Redis's ACL refuses its round trip (NOPERM): it fails closed, as
on any failed round trip, and says why: the command Redis refused and the rule to add.

An ACL file from before a release that needs one more command (`+function|list`, or what
redis-py's Cluster client sends) refuses every round trip of the upgraded sidecars. They
block, as they must; this watch makes the cause plain instead of a generic SYNC_FAILED: an
`ACL_DENIED` log event (at once, then every `LOG_EVERY` refused rounds), `/healthz`, the
host's report (`status` shows it though the host is not alive: `hosts[H].acl`) and
`killswitch_acl_denials_total{permission}`. The next successful round trip clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from killswitch.store.noperm import Denial, redis_user
from killswitch.store.store import Store

__all__ = ["FIELD", "LOG_EVERY", "AclWatch"]

FIELD = "acl"  # the host report's field that names the refused permission ("" none)
LOG_EVERY = 100  # refused rounds between repeats of the log event while it lasts


class _Host(Protocol):
    gate: Any
    store: Store
    log: Any
    s: Any


class AclWatch:
    """The sidecar's view of its Redis permissions: `problem` is "" while they suffice."""

    def __init__(self, host: _Host) -> None:
        self.host = host
        self.user = redis_user(host.s.redis_url)
        self.problem = ""
        self.rounds = 0  # round trips refused in the current episode
        self.denials: dict[str, int] = {}  # refused round trips by permission (for metrics)

    async def denied(self, d: Denial) -> bool:
        """Close the gate, count, log and report why; the caller's next round tries again."""
        h = self.host
        h.gate.close()
        line = d.line(self.user)
        first = line != self.problem
        if first:
            self.rounds = 0
        if self.rounds % LOG_EVERY == 0:
            h.log.error("ACL_DENIED", permission=d.permission, rule=d.rule, user=self.user,
                        reason=line, rounds=self.rounds)  # fmt: skip
        self.rounds += 1
        self.denials[d.permission] = self.denials.get(d.permission, 0) + 1
        self.problem = line
        if first:  # best effort: its own report key may still be writable
            await self._report(line)
        return False

    async def granted(self) -> None:
        """A round trip succeeded: whatever was refused is allowed now."""
        if not self.problem:
            return
        self.problem, self.rounds = "", 0
        await self._report("")

    async def _report(self, text: str) -> None:
        h = self.host
        with contextlib.suppress(Exception):
            async with asyncio.timeout(h.s.stale_after):
                await h.store.report_fields(h.s.host, [(FIELD, text)])
