"""A cause that keeps a sidecar blocked round after round until a round trip succeeds: its
Functions library missing (`functions.LibraryWatch`), a command its Redis user may not run
(`permissions.AclWatch`). Each round closes the gate; the cause is logged at once, then every
`LOG_EVERY` rounds while it lasts, and written once into the host's report (`status` shows it
though the host is not alive); the next successful round trip clears it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from killswitch.store.store import Store

LOG_EVERY = 100  # refused rounds between repeats of the log event while a cause lasts


class Host(Protocol):
    gate: Any
    store: Store
    log: Any
    s: Any


class BlockEpisode:
    """`problem` is "" while nothing blocks; `rounds` counts the rounds of the current cause."""

    def __init__(self, host: Host, field: str) -> None:
        self.host = host
        self.field = field  # the host report's field that names the cause ("" none)
        self.problem = ""
        self.rounds = 0

    async def block(self, problem: str, log: Callable[[int], None]) -> bool:
        """Close the gate, log (`log(rounds)`) and report `problem`; the caller's next round
        tries again. Returns False: the round trip did not happen."""
        self.host.gate.close()
        first = problem != self.problem
        if first:
            self.rounds = 0  # a new cause (or another one): logged at once
        if self.rounds % LOG_EVERY == 0:
            log(self.rounds)
        self.rounds += 1
        self.problem = problem
        if first:  # best effort: this round trip failed, a plain write of its own may not
            await self._report(problem)
        return False

    async def clear(self) -> bool:
        """A round trip succeeded: the cause is gone. True if there was one."""
        if not self.problem:
            return False
        self.problem, self.rounds = "", 0
        await self._report("")
        return True

    async def _report(self, text: str) -> None:
        h = self.host
        with contextlib.suppress(Exception):
            async with asyncio.timeout(h.s.stale_after):
                await h.store.report_fields(h.s.host, [(self.field, text)])
