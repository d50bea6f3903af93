"""One rule's condition at one instant, and how long a breach has lasted.

Pure functions of the window sums and the config: the `Monitor` calls one per enabled rule
at every evaluation and feeds the result to that rule's `Streak`. Nothing here keeps state
across evaluations except `Streak`, and nothing reads a clock, touches Redis or logs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import median

from killswitch.core.rules.config import (
    BASELINE,
    BASELINE_FAST,
    HOST_SHARE,
    HOST_SHARE_FAST,
    MAX_ORDERS,
    MAX_RATE,
    RUNAWAY,
    MonitorConfig,
)


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


def hold(cfg: MonitorConfig, cause: str) -> tuple[int, int]:
    """(step_ms, steps needed) for a rule's breach to trip.

    Caps trip at once. The slow rules must hold for `breach_windows` windows: the breach
    must survive every evaluation from its first until (breach_windows - 1) x window later.
    The fast rules must hold for `fast_breach_ms`: long enough to filter one tick's noise (a
    late flush lands two flushes in one window), short enough to cost no more than a tick.
    """
    if cause in (MAX_ORDERS, MAX_RATE, RUNAWAY):
        return 1, 1
    if cause in (BASELINE_FAST, HOST_SHARE_FAST):
        return (cfg.fast_breach_ms, 2) if cfg.fast_breach_ms > 0 else (1, 1)
    return cfg.window_ms, cfg.breach_windows


@dataclass(slots=True)
class Reading:
    """One rule's condition at this evaluation, before streaks and levels."""

    cause: str
    active: bool
    breach: bool
    value: float
    limit: float | None
    detail: str = ""
    host: str | None = None


def secs(ms: int) -> str:
    return f"{ms / 1000:g}s"


# Details are only formatted for a breach: a trip needs one, a quiet tick does not.


def max_orders(cfg: MonitorConfig, total: int, cap: int) -> Reading:
    breach = total > cap
    reading = Reading(MAX_ORDERS, True, breach, float(total), float(cap))
    if breach:
        reading.detail = f"node sent {total} orders in {secs(cfg.window_ms)}, over its cap of {cap}"
    return reading


def max_rate(cfg: MonitorConfig, fast_total: int | None, per_s: float) -> Reading:
    cap = per_s * cfg.fast_window_ms / 1000.0
    if fast_total is None:
        return Reading(MAX_RATE, False, False, 0.0, cap)
    breach = fast_total > cap
    reading = Reading(MAX_RATE, True, breach, float(fast_total), cap)
    if breach:
        reading.detail = (
            f"node sent {fast_total} orders in {secs(cfg.fast_window_ms)}, over its rate cap "
            f"of {per_s:g}/s"
        )
    return reading


def baseline(cfg: MonitorConfig, total: int, expected: float | None, warm: bool) -> Reading:
    if expected is None or cfg.baseline_multiplier is None:
        return Reading(BASELINE, False, False, float(total), None)
    # min_orders is a floor under the limit: a quiet node's 3 -> 40 orders is noise.
    limit = max(cfg.baseline_multiplier * expected, float(cfg.min_orders))
    breach = warm and total > limit
    reading = Reading(BASELINE, warm, breach, float(total), limit)
    if breach:
        ratio = f"{total / expected:.1f}x" if expected >= 1.0 else "far above"
        reading.detail = (
            f"node sent {total} orders in {secs(cfg.window_ms)}, "
            f"{ratio} its baseline of {expected:.0f}"
        )
    return reading


def baseline_fast(
    cfg: MonitorConfig, fast_total: int | None, expected: float | None, warm: bool
) -> Reading:
    """The fast window against the baseline's rate: the baseline is orders per window, so
    per fast window it is `expected / fast_scale`."""
    if expected is None or cfg.fast_multiplier is None or fast_total is None:
        return Reading(BASELINE_FAST, False, False, float(fast_total or 0), None)
    per_fast = expected / cfg.fast_scale
    limit = max(cfg.fast_multiplier * per_fast, float(cfg.fast_min_orders))
    breach = warm and fast_total > limit
    reading = Reading(BASELINE_FAST, warm, breach, float(fast_total), limit)
    if breach:
        ratio = f"{fast_total / per_fast:.1f}x" if per_fast >= 1.0 else "far above"
        rate = expected * 1000.0 / cfg.window_ms
        reading.detail = (
            f"node sent {fast_total} orders in {secs(cfg.fast_window_ms)}, "
            f"{ratio} its baseline rate of {rate:.0f}/s"
        )
    return reading


def host_share(
    cfg: MonitorConfig,
    total: int | None,
    hosts: Mapping[str, int] | None,
    cap: float,
    *,
    fast: bool = False,
) -> Reading:
    cause, window_ms, floor = (
        (HOST_SHARE_FAST, cfg.fast_window_ms, cfg.fast_min_orders)
        if fast
        else (HOST_SHARE, cfg.window_ms, cfg.min_orders)
    )
    if total is None or hosts is None or len(hosts) < 2 or total <= 0:
        # One host is always 100% of itself: the rule means nothing without peers.
        return Reading(cause, False, False, 0.0, cap)
    host, orders = min(hosts.items(), key=lambda kv: (-kv[1], kv[0]))
    share = orders / total
    active = total >= floor
    breach = active and share > cap
    reading = Reading(cause, active, breach, share, cap, host=host)
    if breach:
        peers = median(v for h, v in hosts.items() if h != host)
        reading.detail = (
            f"host {host} sent {share:.0%} of the node's {total} orders in "
            f"{secs(window_ms)} (limit {cap:.0%}), "
            f"{orders / max(peers, 1.0):.1f}x its peers' median of {peers:g}"
        )
    return reading


def runaway_floor(cfg: MonitorConfig, expected: float | None) -> float | None:
    """The window the runaway rule needs before growth counts: above the band of what the
    baseline may learn (1.5x without guarded learning), and above `min_orders`."""
    if expected is None:
        return None
    band = cfg.baseline_band if cfg.baseline_band is not None else 1.5
    return max(band * expected, float(cfg.min_orders))


def runaway(
    cfg: MonitorConfig,
    total: int,
    steps: list[int] | None,
    expected: float | None,
    warm: bool,
) -> Reading:
    """Sustained growth: `steps` are the orders in the last `runaway_steps + 1` steps of
    `runaway_step` windows, newest first. The value is the smallest growth from one step to
    the next; a breach needs every step above `runaway_growth` x the one before it, and the
    window above the band of what the baseline may learn (and `min_orders`).

    A burst of any length at a constant level cannot breach: its steps grow while it fills
    them and stop growing when it does, so three steps of growth need a rate that keeps
    rising for three steps."""
    growth = cfg.runaway_growth
    floor = runaway_floor(cfg, expected)
    if growth is None or expected is None or floor is None or steps is None:
        return Reading(RUNAWAY, False, False, 0.0, None if growth is None else growth - 1.0)
    pairs = list(itertools.pairwise(steps))
    value = min((new / old if old > 0 else (math.inf if new > 0 else 0.0)) for new, old in pairs)
    # Growth counts from a level the node had reached (its first step at least the band's
    # share of normal): a node starting to trade after silence, its routers connecting one
    # by one before the open, grows from nothing without running away.
    band = cfg.baseline_band if cfg.baseline_band is not None else 1.5
    based = steps[-1] >= expected * cfg.runaway_step / band
    active = warm and total > floor and based
    breach = active and value > growth
    # Value and limit as growth per step (0.15 for 1.15x), so the warning levels read as
    # how close the growth is to the line: no growth is 0%, not 87%.
    rise = max(value - 1.0, 0.0) if math.isfinite(value) else 0.0
    reading = Reading(RUNAWAY, active, breach, rise, growth - 1.0)
    if breach:
        step_s = secs(cfg.runaway_step * cfg.window_ms)
        ratio = f"{total / expected:.1f}x" if expected >= 1.0 else "far above"
        reading.detail = (
            f"node grew at least {value:.2f}x every {step_s} for {len(pairs)} steps "
            f"({steps[-1]} -> {steps[0]} orders per {step_s}); its window of {total} is "
            f"{ratio} its baseline of {expected:.0f}"
        )
    return reading
