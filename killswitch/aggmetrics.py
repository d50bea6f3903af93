"""The aggregator's Prometheus metrics, built from its last tick at scrape time.

Names are part of the public contract (dashboards and alert rules use them): add, never
rename. Nothing here talks to Redis; it reads what the aggregator already holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily, Metric

from killswitch import ruleview
from killswitch.state import NodeState

if TYPE_CHECKING:
    from killswitch.aggregator import Aggregator


class AggregatorCollector:
    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        a, n = self.agg, self.agg.s.node
        win = ruleview.window_label(a.s.monitor)

        def node_gauge(name: str, doc: str, value: float, **extra: str) -> GaugeMetricFamily:
            labels = ["node", *extra]
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([n, *extra.values()], value)
            return g

        yield node_gauge(
            "killswitch_node_orders",
            "Orders sent across all hosts of the node within the sliding window.",
            a.window.total, window=win,
        )  # fmt: skip
        if a.s.monitor.max_orders is not None:
            yield node_gauge(
                "killswitch_node_limit_orders",
                "The node's static cap: more orders than this within the window kills the node.",
                a.s.monitor.max_orders, window=win,
            )  # fmt: skip
        yield node_gauge("killswitch_node_killed", "1 while the node is KILLED.",
                         float(a.state.state is NodeState.KILLED))  # fmt: skip
        yield node_gauge("killswitch_node_epoch", "The node's current epoch.", a.state.epoch)
        yield node_gauge("killswitch_roster_hosts", "Hosts on the node's roster.", len(a.s.hosts))
        q = a.quorum
        yield node_gauge(
            "killswitch_confirmed_hosts",
            "Roster hosts that confirmed the node's current epoch.",
            len(q.confirmed) if q else 0,
        )
        per_host = GaugeMetricFamily(
            "killswitch_node_host_orders",
            "Each roster host's orders within the node's sliding window (aggregator view).",
            labels=["node", "host", "window"],
        )
        alive = GaugeMetricFamily(
            "killswitch_host_alive",
            "1 while the roster host reports to Redis within its stale-after.",
            labels=["node", "host"],
        )
        confirmed = GaugeMetricFamily(
            "killswitch_host_confirmed",
            "1 when the roster host confirmed the node's current epoch; 0 names a missing host.",
            labels=["node", "host"],
        )
        report_age = GaugeMetricFamily(
            "killswitch_host_report_age_seconds",
            "Seconds since the roster host's last report reached Redis, as the aggregator saw it "
            "at its last tick (+Inf: never). Unlike sync age, it is exported for dead sidecars.",
            labels=["node", "host"],
        )
        for h in a.s.hosts:
            per_host.add_metric([n, h, win], a.window.by_host.get(h, 0))
            alive.add_metric([n, h], float(bool(q and q.hosts[h].alive)))
            confirmed.add_metric([n, h], float(bool(q and h in q.confirmed)))
            age = q.hosts[h].age_s if q else None
            report_age.add_metric([n, h], float("inf") if age is None else age)
        yield per_host
        yield alive
        yield confirmed
        yield report_age
        lead = GaugeMetricFamily(
            "killswitch_aggregator_leader",
            "1 on the aggregator instance that holds the node's leader lease (acts), 0 on standbys.",
            labels=["node", "instance"],
        )
        lead.add_metric([n, a.s.instance], float(a.is_leader()))
        yield lead
        if a.durable is not None and a.durable.enabled is not None:
            yield node_gauge(
                "killswitch_redis_persistence_enabled",
                "1 if the node's Redis runs with appendonly (a restart keeps kills), else 0.",
                float(a.durable.enabled),
            )
        yield from ruleview.rule_metrics(
            n, a.s.monitor, a.evaluation, a.s.hosts, a.window.by_host, a.window.total
        )
