"""`runaway`: the node's volume grew by more than `runaway_growth` in each of the last
`runaway_steps` steps of `runaway_step` windows, and the window is above `baseline_band` x the
baseline (and `min_orders`), after warm-up: sustained growth faster than the baseline may
follow, caught while each window is still under the multiplier. It trips at once: its steps
of growth are their own confirmation."""

from __future__ import annotations

import itertools
import math

from killswitch.core.rules.config import RUNAWAY, MonitorConfig
from killswitch.core.rules.rule import GROWTH, History, Instant, Reading, Rule, secs


def floor(cfg: MonitorConfig, expected: float | None) -> float | None:
    """The window the runaway rule needs before growth counts: above the band of what the
    baseline may learn (1.5x without guarded learning), and above `min_orders`."""
    if expected is None:
        return None
    band = cfg.baseline_band if cfg.baseline_band is not None else 1.5
    return max(band * expected, float(cfg.min_orders))


def steps(history: History, now_ms: int, cfg: MonitorConfig) -> list[int] | None:
    """Orders in each of the last `runaway_steps + 1` steps, newest first; None until the
    history reaches back that far (a step is `runaway_step` adjacent windows)."""
    w = cfg.window_ms
    if not history.times or history.times[0] > now_ms - cfg.runaway_ms + w:
        return None
    out = []
    for k in range(cfg.runaway_steps + 1):
        total = 0
        for j in range(cfg.runaway_step):
            v = history.at(now_ms - (k * cfg.runaway_step + j) * w)
            if v is None:
                return None
            total += v
        out.append(total)
    return out


def condition(
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
    least = floor(cfg, expected)
    if growth is None or expected is None or least is None or steps is None:
        return Reading(RUNAWAY, False, False, 0.0, None if growth is None else growth - 1.0)
    pairs = list(itertools.pairwise(steps))
    value = min((new / old if old > 0 else (math.inf if new > 0 else 0.0)) for new, old in pairs)
    # Growth counts from a level the node had reached (its first step at least the band's
    # share of normal): a node starting to trade after silence, its routers connecting one
    # by one before the open, grows from nothing without running away.
    band = cfg.baseline_band if cfg.baseline_band is not None else 1.5
    based = steps[-1] >= expected * cfg.runaway_step / band
    active = warm and total > least and based
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


class Runaway(Rule):
    cause = RUNAWAY
    options = ("runaway-growth", "runaway-step", "runaway-steps", "window", "baseline-band",
               "min-orders", "warmup")  # fmt: skip
    unit = GROWTH

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        # The steps are read only when the window is high enough to breach: most ticks.
        least = floor(cfg, at.expected)
        high = at.armed and at.warm and least is not None and at.node_total > least
        grown = steps(at.history, at.now_ms, cfg) if high else None
        return condition(cfg, at.node_total, grown, at.expected, at.warm)

    def teaches(self, cfg: MonitorConfig, value: float, node_total: int) -> float | None:
        return float(node_total)  # its value is a growth factor: accept the window


RULE = Runaway()
