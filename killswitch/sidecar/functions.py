"""What a sidecar does when Redis has no Functions library of its version: it fails closed.

Its round trip is a function of the library the aggregator (or an operator) loads; a sidecar
may not load one, nor run a script of its own (docs/SECURITY.md). So a missing library, or
one of another version only, closes the gate at once, says why in the log, in `/healthz` and
in the host's report (`status` shows it though the host is not alive), and every round tries
again. It never falls back to EVAL.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol

from killswitch.store.scripts import FunctionsMissing
from killswitch.store.store import Store

__all__ = ["FIELD", "LOG_EVERY", "FunctionsMissing", "LibraryWatch"]

FIELD = "functions"  # the host report's field that names the missing library ("" none)
LOG_EVERY = 100  # rounds between repeats of the log event while the library stays missing


class _Host(Protocol):
    gate: Any
    store: Store
    log: Any
    s: Any


class LibraryWatch:
    """The sidecar's view of its Functions library: `problem` is "" while it answers."""

    def __init__(self, host: _Host) -> None:
        self.host = host
        self.problem = ""
        self.rounds = 0  # round trips refused for it in the current episode

    async def missing(self, e: FunctionsMissing) -> bool:
        """Close the gate, log and report why; the caller's next round tries again."""
        h = self.host
        h.gate.close()
        first = not self.problem
        if self.rounds % LOG_EVERY == 0:
            h.log.error("FUNCTIONS_MISSING", library=e.library, reason=str(e), rounds=self.rounds)
        self.rounds += 1
        self.problem = str(e)
        if first:  # best effort: this round trip is not possible, a plain write of its own is
            await self._report(self.problem)
        return False

    async def found(self) -> None:
        """A round trip succeeded: the library answers again."""
        if not self.problem:
            return
        self.host.log.info("FUNCTIONS_FOUND", rounds=self.rounds)
        self.problem, self.rounds = "", 0
        await self._report("")

    async def _report(self, text: str) -> None:
        h = self.host
        with contextlib.suppress(Exception):
            async with asyncio.timeout(h.s.stale_after):
                await h.store.report_fields(h.s.host, [(FIELD, text)])
