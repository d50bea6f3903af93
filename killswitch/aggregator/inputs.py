"""The aggregator's guard on what it reads from Redis: a junk or future `armed_ms`, junk flow
counts and a repaired leader lease are ignored (or repaired), counted and logged, so junk
written by hand can never silence automatic trips or stop the tick.

It decides with `core.node.bounds` and logs; it never talks to Redis.
"""

from __future__ import annotations

from typing import Any

from killswitch.core.node.bounds import parse_uint


class InputGuard:
    """Counts every junk value (`killswitch_junk_inputs_total`); logs each kind once a change."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.count = 0
        self._armed_seen: str | None = None

    def armed_ms(self, raw: str | None, now_ms: int, last_good: int) -> int:
        """The arm time that resets the window. A junk or future value (it would exclude
        every order from the window) is ignored: orders keep counting from `last_good`."""
        value = parse_uint(raw or "0")
        if value is not None and value <= now_ms:
            return value
        self.count += 1
        if raw != self._armed_seen:
            self._armed_seen = raw
            self.log.error("JUNK_INPUT", field="state.armed_ms", value=str(raw)[:40],
                           action="ignored: orders keep counting from the last valid arm")  # fmt: skip
        return max(last_good, 0)

    def flow_count(self, raw: str | None, host: str) -> int:
        value = parse_uint(raw or "0")
        if value is None:
            self.count += 1
            self.log.error("JUNK_INPUT", field=f"{host}.flow.a", value=str(raw)[:40])
            return 0
        return value

    def lease_repaired(self, what: str) -> None:
        """The lease script deleted a lease without TTL (or of another type)."""
        self.count += 1
        self.log.error("LEASE_REPAIRED", reason=what)
