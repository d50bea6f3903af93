"""The firm-wide volume rule: orders summed over every node of the fleet within one window,
against one cap (`--fleet-max-orders`). Pure: node views in, a decision out.

Each node's acting aggregator publishes its node's window total with the server time of its
tick; the fleet leader sums those. A node whose view is too old (its aggregator is down or
frozen), or that counts over another window length, is not summed but named, so the total
is a lower bound: when it exceeds the cap the trip is certain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

WARNING_LEVELS = (50, 75, 90)


@dataclass(frozen=True)
class FleetView:
    """What the fleet rule read of one node's aggregator view."""

    orders: int | None  # orders in the node's window at its last tick; None: unreadable
    tick_ms: int | None  # Redis server time of that tick
    window_ms: int | None


@dataclass(frozen=True)
class FleetDecision:
    total: int
    counted: tuple[str, ...]
    stale: tuple[str, ...] = ()  # no recent view: not summed
    other_window: tuple[str, ...] = ()  # counts over another window length: not summed
    trip: bool = False
    level: int = 0  # highest warning level reached (0, 50, 75, 90)
    by_node: Mapping[str, int] = field(default_factory=dict)


def parse_view(view: Mapping[str, str]) -> FleetView:
    """Read the fields the fleet rule needs from a node's view hash; junk reads as None."""

    def num(key: str, scale: float = 1.0) -> int | None:
        raw = view.get(key, "")
        try:
            value = float(raw) * scale
        except ValueError:
            return None
        if not math.isfinite(value) or value < 0:
            return None
        return round(value)

    return FleetView(num("node_orders"), num("tick_ms"), num("window_s", 1000.0))


def evaluate(
    views: Mapping[str, FleetView],
    *,
    cap: int,
    window_ms: int,
    now_ms: int,
    max_age_ms: int,
) -> FleetDecision:
    """Sum every node whose view is fresh and over `window_ms`; trip when the sum exceeds `cap`."""
    counted, stale, other = [], [], []
    by_node: dict[str, int] = {}
    for node in sorted(views):
        v = views[node]
        if v.orders is None or v.tick_ms is None or now_ms - v.tick_ms > max_age_ms:
            stale.append(node)
        elif v.window_ms != window_ms:
            other.append(node)
        else:
            counted.append(node)
            by_node[node] = v.orders
    total = sum(by_node.values())
    level = max((lv for lv in WARNING_LEVELS if total * 100 >= lv * cap), default=0)
    return FleetDecision(
        total, tuple(counted), tuple(stale), tuple(other), total > cap, level, by_node
    )
