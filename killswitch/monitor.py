"""The aggregator's trip decision for one node: pure, fed window sums, returns decisions.

No Redis, no clock, no logging: `observe()` takes server time and counts and says whether
to trip and which warnings to raise. The live aggregator and the backtest call the same code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

WARN_LEVELS = (50, 75, 90)


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    max_orders: int | None = None  # static cap across the node within the window
    window_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Trip:
    cause: str
    detail: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Evaluation:
    trip: Trip | None
    warnings: tuple[dict[str, object], ...] = ()


class Monitor:
    """Static cap: trip when the node sent more than `max_orders` within the window."""

    def __init__(self, config: MonitorConfig) -> None:
        self.config = config
        self.level = 0

    def reset(self, now_ms: int) -> None:
        self.level = 0

    def observe(self, now_ms: int, node_total: int, host_totals: Mapping[str, int]) -> Evaluation:
        cap = self.config.max_orders
        if cap is None:
            return Evaluation(None)
        warnings: list[dict[str, object]] = []
        level = max((lv for lv in WARN_LEVELS if node_total * 100 >= cap * lv), default=0)
        if level > self.level:
            warnings.append(
                {"rule": "max_orders", "level": level, "orders": node_total, "limit": cap}
            )
        self.level = level
        if node_total > cap:
            detail = (
                f"node sent {node_total} orders in {self.config.window_s:g}s, over its cap of {cap}"
            )
            return Evaluation(Trip("max_orders", detail, now_ms), tuple(warnings))
        return Evaluation(None, tuple(warnings))

    def metrics(self, node: str, window: str) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "killswitch_node_warning_level",
            "Highest warning level reached by each limit: 0, 50, 75 or 90 (% of the limit).",
            labels=["node", "rule"],
        )
        g.add_metric([node, "max_orders"], self.level)
        yield g
