"""`baseline`: the window exceeds `baseline_multiplier` x the learned baseline (and
`min_orders`) for `breach_windows - 1` windows within `breach_span`, after warm-up."""

from __future__ import annotations

from killswitch.core.rules.config import BASELINE, MonitorConfig
from killswitch.core.rules.rule import Instant, Reading, Rule, secs


def condition(cfg: MonitorConfig, total: int, expected: float | None, warm: bool) -> Reading:
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


class Baseline(Rule):
    cause = BASELINE
    options = ("baseline-multiplier", "window", "min-orders", "breach-windows", "breach-span",
               "warmup")  # fmt: skip
    spans = True

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        return condition(cfg, at.node_total, at.expected, at.warm)

    def hold(self, cfg: MonitorConfig) -> tuple[int, int]:
        return cfg.window_ms, cfg.breach_windows

    def teaches(self, cfg: MonitorConfig, value: float, node_total: int) -> float | None:
        return value


RULE = Baseline()
