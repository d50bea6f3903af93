"""One rule's condition at one instant, and how long a breach has lasted.

Pure functions of the window sums and the config: the `Monitor` calls one per enabled rule
at every evaluation and feeds the result to that rule's `Streak`. Nothing here keeps state
across evaluations except `Streak`, and nothing reads a clock, touches Redis or logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import median

from killswitch.core.rules import (
    BASELINE,
    BASELINE_FAST,
    HOST_SHARE,
    HOST_SHARE_FAST,
    MAX_ORDERS,
    MAX_RATE,
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


def hold(cfg: MonitorConfig, cause: str) -> tuple[int, int]:
    """(step_ms, steps needed) for a rule's breach to trip.

    Caps trip at once. The slow rules must hold for `breach_windows` windows: the breach
    must survive every evaluation from its first until (breach_windows - 1) x window later.
    The fast rules must hold for `fast_breach_ms`: long enough to filter one tick's noise (a
    late flush lands two flushes in one window), short enough to cost no more than a tick.
    """
    if cause in (MAX_ORDERS, MAX_RATE):
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
