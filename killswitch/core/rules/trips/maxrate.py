"""`max_rate`, the rate cap: more than `max_rate` orders per second in the fast window trips
at once (set, or derived from `max_orders` with `max_rate_auto`: `MonitorConfig.rate_cap`)."""

from __future__ import annotations

from killswitch.core.rules.config import MAX_RATE, MonitorConfig
from killswitch.core.rules.rule import Instant, Reading, Rule, secs


def condition(cfg: MonitorConfig, fast_total: int | None, per_s: float) -> Reading:
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


class MaxRate(Rule):
    cause = MAX_RATE
    options = ("max-rate", "fast-window")
    fast = True

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        cap = cfg.rate_cap
        assert cap is not None  # enabled only with a rate cap
        return condition(cfg, at.fast_total, cap)

    def view(self, cfg: MonitorConfig) -> dict[str, str]:
        return {"max_rate": "" if cfg.rate_cap is None else f"{cfg.rate_cap:g}"}


RULE = MaxRate()
