"""What a sidecar does when Redis has no Functions library of its version: it fails closed.

Its round trip is a function of the library the aggregator (or an operator) loads; a sidecar
may not load one, nor run a script of its own (docs/SECURITY.md). So a missing library, or
one of another version only, closes the gate at once, says why in the log, in `/healthz` and
in the host's report (`status` shows it though the host is not alive), and every round tries
again. It never falls back to EVAL.

Function names are global in Redis, so a credential that may load libraries can replace this
one under its name with code of its own (a flush that drops the flow deltas would blind the
volume rules). So, before a call of the library and at most every `CHECK_EVERY` seconds, the
watch reads the code Redis holds under the name (`FUNCTION LIST ... WITHCODE`, one small
reply) and compares it with its own: other code closes the gate like a missing library
(FUNCTIONS_TAMPERED), and the library is not called again until a check finds its code back.
Between two checks a replaced library can run: that window is `CHECK_EVERY` (SECURITY.md).
"""

from __future__ import annotations

from typing import Protocol

from killswitch.sidecar.episode import LOG_EVERY, BlockEpisode, Host
from killswitch.store.scripts import (
    FunctionsMissing,
    FunctionsTampered,
    code_digest,
    library_codes,
    sidecar_library,
)

__all__ = [
    "CHECK_EVERY", "FIELD", "LOG_EVERY", "FunctionsMissing", "FunctionsTampered", "LibraryWatch",
]  # fmt: skip

FIELD = "functions"  # the host report's field that names the missing library ("" none)
CHECK_EVERY = 2.0  # seconds between checks of the library's code (each a FUNCTION LIST)


class _Host(Host, Protocol):
    def clock(self) -> float: ...


class LibraryWatch(BlockEpisode):
    """The sidecar's view of its Functions library: `problem` is "" while it answers. It
    guards every call of the library by `host.store` with `verify`."""

    def __init__(self, host: _Host, every: float = CHECK_EVERY) -> None:
        super().__init__(host, FIELD)
        self.host: _Host = host
        self.every = every
        self.checks = 0  # reads of the library's code (FUNCTION LIST), for tests and benches
        self._checked_at: float | None = None  # when its code was last found right
        host.store.guard_functions(self.verify)

    async def verify(self) -> None:
        """Before a call of the library: when the last check is `every` seconds old (or found
        other code), read the code Redis holds under its name; raise to refuse the call when
        it is not this version's (FunctionsTampered) or not there (FunctionsMissing)."""
        now = self.host.clock()
        if self._checked_at is not None and now - self._checked_at < self.every:
            return
        lib = sidecar_library()
        self.checks += 1
        codes = await library_codes(self.host.store.redis, lib.name)
        wrong = [c for c in codes if c != lib.code]
        if wrong:
            self._checked_at = None
            raise FunctionsTampered(lib.name, code_digest(wrong[0]))
        if not codes:
            self._checked_at = None
            raise FunctionsMissing(lib.name)
        self._checked_at = now

    async def missing(self, e: FunctionsMissing) -> bool:
        """Close the gate, log and report why; the caller's next round tries again."""
        log = self.host.log

        def said(rounds: int) -> None:
            if isinstance(e, FunctionsTampered):
                log.error("FUNCTIONS_TAMPERED", library=e.library, found_sha1=e.digest,
                          reason=str(e), rounds=rounds)  # fmt: skip
            else:
                log.error("FUNCTIONS_MISSING", library=e.library, reason=str(e), rounds=rounds)

        return await self.block(str(e), said)

    async def found(self) -> None:
        """A round trip succeeded: the library answers again."""
        rounds = self.rounds
        if await self.clear():
            self.host.log.info("FUNCTIONS_FOUND", rounds=rounds)
