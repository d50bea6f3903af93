"""The sidecar's BLOCK_ORDER summaries: what the gate's log budget counted instead of logging.

The gate (`core.enforce.gate.BlockLogBudget`) writes at most `BLOCK_LINES_PER_S` per-order lines a
second and counts the rest per reason; once a second the sync loop logs one summary event
with the exact counts, so every blocked order is in the log as a line or a count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from killswitch.core.enforce.gate import BlockLogBudget

BLOCK_LINES_PER_S = 1000  # per-order BLOCK_ORDER lines a second; beyond, summaries each second


class BlockSummaries:
    """Owns the gate's log budget and turns its counts into one summary event a second."""

    def __init__(self, log: Any, clock: Callable[[], float], per_s: int = BLOCK_LINES_PER_S):
        self.budget = BlockLogBudget(per_s, clock)
        self._log = log
        self._clock = clock
        self._reported: dict[str, int] = {}
        self._at = clock()

    def due(self) -> bool:
        return self._clock() - self._at >= 1.0

    def skipped(self) -> int:
        """Blocked orders counted instead of logged one by one, since start."""
        return sum(self.budget.skipped.values())

    def report(self, epoch: int) -> int:
        """Log one BLOCK_ORDER summary with the exact count per reason of the blocked orders
        not logged one by one since the last summary; returns how many it covered."""
        self._at = self._clock()
        now = dict(self.budget.skipped)  # a copy: the order path may add meanwhile
        diff = {r: n - self._reported.get(r, 0) for r, n in sorted(now.items())}
        diff = {r: n for r, n in diff.items() if n}
        if not diff:
            return 0
        self._reported = now
        total = sum(diff.values())
        self._log.warning(
            "BLOCK_ORDER", summary=True, blocked=total, counts=diff,
            epoch=epoch, note="per-order lines over the log budget",
        )  # fmt: skip
        return total
