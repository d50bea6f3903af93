"""A learned baseline made to order, for tests and benchmarks that must not wait out a
warm-up: what a node that has been trading steadily for a while has stored."""

from __future__ import annotations

from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.baseline import Baseline


def learned_baseline(config: MonitorConfig, per_s: float, now_ms: int) -> Baseline:
    """A baseline past warm-up that expects `per_s` orders per second, learned up to `now_ms`."""
    baseline = Baseline(config.baseline_params())
    per_window = per_s * config.window_ms / 1000
    t = now_ms - config.warmup_ms - 2 * config.window_ms
    baseline.advance(t)
    while t < now_ms:
        t = min(t + config.window_ms, now_ms)
        baseline.learn(t, per_window, baseline.advance(t))
    return baseline
