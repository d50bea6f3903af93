"""`max_orders`, the static cap: more than `max_orders` orders in the window trips at once."""

from __future__ import annotations

from killswitch.core.rules.config import MAX_ORDERS, MonitorConfig
from killswitch.core.rules.rule import Instant, Reading, Rule, secs


def condition(cfg: MonitorConfig, total: int, cap: int) -> Reading:
    breach = total > cap
    reading = Reading(MAX_ORDERS, True, breach, float(total), float(cap))
    if breach:
        reading.detail = f"node sent {total} orders in {secs(cfg.window_ms)}, over its cap of {cap}"
    return reading


class MaxOrders(Rule):
    cause = MAX_ORDERS
    options = ("max-orders", "window")

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        assert cfg.max_orders is not None  # enabled only with a cap
        return condition(cfg, at.node_total, cfg.max_orders)

    def view(self, cfg: MonitorConfig) -> dict[str, str]:
        return {"max_orders": "" if cfg.max_orders is None else str(cfg.max_orders)}


RULE = MaxOrders()
