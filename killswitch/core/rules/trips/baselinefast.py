"""`baseline_fast`: the fast window exceeds `fast_multiplier` x the baseline's rate (and
`fast_min_orders`) for `fast_breach_ms`, after warm-up."""

from __future__ import annotations

from killswitch.core.rules.config import BASELINE_FAST, MonitorConfig
from killswitch.core.rules.rule import Instant, Reading, Rule, fast_hold, secs


def condition(
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


class BaselineFast(Rule):
    cause = BASELINE_FAST
    options = ("fast-multiplier", "fast-window", "fast-min-orders", "fast-breach", "warmup")
    fast = True

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        return condition(cfg, at.fast_total, at.expected, at.warm)

    def hold(self, cfg: MonitorConfig) -> tuple[int, int]:
        return fast_hold(cfg)

    def teaches(self, cfg: MonitorConfig, value: float, node_total: int) -> float | None:
        # Its level is a rate: the window at that rate is what a re-arm accepts.
        return value * cfg.fast_scale


RULE = BaselineFast()
