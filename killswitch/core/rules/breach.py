"""How long one rule's breach has lasted: `Streak` (unbroken, in steps) and `Span` (gaps
allowed, within a span of time). The `Monitor` keeps one per enabled rule.

Pure bookkeeping of numbers: nothing here reads a clock, touches Redis or logs.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Streak:
    """How long one rule's breach has lasted, counted in steps of `step_ms`."""

    count: int = 0  # steps in breach so far
    start_ms: int = 0  # the breach's first evaluation
    last_ms: int = 0  # when `count` last went up
    latched: bool = False  # tripped during this breach; reports again only after it clears

    def judge(self, breach: bool, now_ms: int, step_ms: int, needed: int) -> bool:
        """Count this evaluation; True exactly once per breach, when it has lasted long enough."""
        if not breach:
            self.count, self.latched = 0, False
            return False
        if self.count == 0:
            self.count, self.start_ms, self.last_ms = 1, now_ms, now_ms
        elif now_ms - self.last_ms >= step_ms:
            self.count, self.last_ms = self.count + 1, now_ms
        if self.count >= needed and not self.latched:
            self.latched = True
            return True
        return False


@dataclass(slots=True)
class Span:
    """How long one slow rule has been in breach within the last `span` ms, gaps allowed.

    A breach is the time from one breaching evaluation to the next breaching one without a
    calm evaluation between (a run). The rule trips once its runs within the span add up
    to `needed` ms, so a flood that pulses under the line between its pulses still trips,
    while a spike (in the window for one width less a tick) does not. With `span` equal to
    `needed` this is an unbroken breach, as `Streak` counts it.
    """

    runs: list[list[int]] = field(default_factory=list)  # [first, last] breaching evaluation
    open: bool = False  # the last evaluation breached
    latched: bool = False  # tripped; reports again only after its total fell under `needed`

    def judge(self, breach: bool, now_ms: int, needed: int, span: int) -> bool:
        """Count this evaluation; True once per episode, when the total reaches `needed`."""
        if breach:
            if self.open and self.runs:
                self.runs[-1][1] = now_ms
            else:
                self.runs.append([now_ms, now_ms])
        self.open = breach
        cutoff = now_ms - span
        while self.runs and self.runs[0][1] < cutoff:
            self.runs.pop(0)
        total = self.covered(now_ms, span)
        if total < needed or not self.runs:
            self.latched = False
            return False
        if breach and not self.latched:
            self.latched = True
            return True
        return False

    def covered(self, now_ms: int, span: int) -> int:
        cutoff = now_ms - span
        return sum(last - max(first, cutoff) for first, last in self.runs if last >= cutoff)

    def start_ms(self, now_ms: int, span: int) -> int:
        """Where the breach time still counted began (the first run within the span)."""
        return max(self.runs[0][0], now_ms - span) if self.runs else now_ms
