"""The aggregator's Prometheus metrics, built from its last tick at scrape time.

Names are part of the public contract (dashboards and alert rules use them): add, never
rename. Nothing here talks to Redis; it reads what the aggregator already holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from killswitch.aggregator.auditlog import AuditMirror
from killswitch.aggregator.containmetrics import containment_metrics
from killswitch.aggregator.fleetrule import FleetRule
from killswitch.aggregator.inputs import InputGuard
from killswitch.aggregator.rollouts import RolloutWatch
from killswitch.aggregator.ruleguard import RuleGuard, health_metrics
from killswitch.aggregator.settings import AggregatorSettings
from killswitch.aggregator.trust import Trust
from killswitch.core.node.release import Split
from killswitch.core.node.roster import Quorum
from killswitch.core.node.state import NodeRead, NodeState
from killswitch.core.rules.anomaly import Evaluation, MonitorConfig
from killswitch.core.rules.limitburst import LimitBurst
from killswitch.core.rules.window import SlidingWindow
from killswitch.store.durability import Durability
from killswitch.view import ruleview


class Instruments:
    """The aggregator's counters and histogram, registered once on the registry passed in."""

    def __init__(
        self,
        registry: CollectorRegistry,
        node: str,
        trip_causes: Sequence[str],
        shadow_causes: Sequence[str],
    ) -> None:
        self.trips = Counter(
            "killswitch_trips",
            "Node kills by cause: a rule of the aggregator, or an operator.",
            ["node", "cause"],
            registry=registry,
        )
        self.shadow_trips = Counter(
            "killswitch_shadow_trips",
            "Trips a rule in shadow mode would have made (it did not kill), by cause.",
            ["node", "cause"],
            registry=registry,
        )
        self.rule_faults = Counter(
            "killswitch_rule_faults",
            "Evaluations of a trip rule that raised instead of deciding (see RULE_FAULT).",
            ["node", "rule"],
            registry=registry,
        )
        self.functions_replaced = Counter(
            "killswitch_functions_replaced",
            "Times the sidecars' Functions library was found holding other code under its name "
            "and loaded back (see FUNCTIONS_REPLACED).",
            ["node"],
            registry=registry,
        ).labels(node)
        self.acl_denials = Counter(
            "killswitch_acl_denials",
            "Ticks Redis's ACL refused (NOPERM), by the permission missing (a command, or "
            "key/channel/script); the log event ACL_DENIED names the rule to add.",
            ["node", "permission"],
            registry=registry,
        )
        for cause in trip_causes:
            self.trips.labels(node, cause)
        for cause in shadow_causes:
            self.shadow_trips.labels(node, cause)
        self.confirm_seconds = Histogram(
            "killswitch_kill_confirm_seconds",
            "Seconds from a kill being recorded to the last roster host confirming it.",
            ["node"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        ).labels(node)


class Rules(Protocol):
    """What the collector reads of the aggregator's trip rules (`trips.TripRules`)."""

    @property
    def window(self) -> SlidingWindow: ...
    @property
    def state(self) -> NodeRead: ...
    @property
    def quorum(self) -> Quorum | None: ...
    @property
    def evaluation(self) -> Evaluation | None: ...
    @property
    def fleet(self) -> FleetRule | None: ...
    @property
    def release_split(self) -> Split | None: ...
    @property
    def limit_burst(self) -> LimitBurst | None: ...
    @property
    def rollouts(self) -> RolloutWatch: ...
    @property
    def rule_guard(self) -> RuleGuard: ...


class Upkeep(Protocol):
    """What the collector reads of the aggregator's upkeep (`upkeep.Upkeep`)."""

    @property
    def durable(self) -> Durability | None: ...


class Aggregator(Protocol):
    """What the collector reads of an aggregator (structural: the service is not imported)."""

    @property
    def s(self) -> AggregatorSettings: ...
    @property
    def rules(self) -> Rules: ...
    @property
    def upkeep(self) -> Upkeep: ...
    @property
    def trust(self) -> Trust: ...
    @property
    def unlisted(self) -> tuple[str, ...]: ...
    @property
    def inputs(self) -> InputGuard: ...
    def not_flat(self) -> Sequence[str]: ...
    @property
    def audit_mirror(self) -> AuditMirror | None: ...
    def is_leader(self) -> bool: ...


class AggregatorCollector:
    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        a, r, n = self.agg, self.agg.rules, self.agg.s.node
        win = ruleview.window_label(a.s.monitor)

        def node_gauge(name: str, doc: str, value: float, **extra: str) -> GaugeMetricFamily:
            labels = ["node", *extra]
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([n, *extra.values()], value)
            return g

        junk = CounterMetricFamily(
            "killswitch_junk_inputs",
            "Values read from Redis that are not what killswitch writes (ignored; repaired "
            "when they would silence trips).",
            labels=["node"],
        )
        junk.add_metric([n], a.inputs.count)
        yield junk
        yield node_gauge(
            "killswitch_node_orders",
            "Orders sent across all hosts of the node within the sliding window.",
            r.window.total, window=win,
        )  # fmt: skip
        if a.s.monitor.max_orders is not None:
            yield node_gauge(
                "killswitch_node_limit_orders",
                "The node's static cap: more orders than this within the window kills the node.",
                a.s.monitor.max_orders, window=win,
            )  # fmt: skip
        yield node_gauge("killswitch_node_killed", "1 while the node is KILLED.",
                         float(r.state.state is NodeState.KILLED))  # fmt: skip
        if a.audit_mirror is not None:
            yield node_gauge(
                "killswitch_audit_chain_ok",
                "1 while this aggregator's copy of the audit chain and Redis agree; 0 when an "
                "entry it copied was rewritten, removed or cut off in Redis.",
                float(a.audit_mirror.chain_ok),
            )  # fmt: skip
        yield node_gauge("killswitch_node_epoch", "The node's current epoch.", r.state.epoch)
        yield node_gauge(
            "killswitch_roster_hosts", "Hosts on the node's roster.", len(a.trust.roster)
        )
        yield node_gauge(
            "killswitch_roster_mismatch",
            "1 while this aggregator's --hosts differ from the signed roster (nothing is changed).",
            float(a.trust.mismatch),
        )
        yield node_gauge(
            "killswitch_unlisted_hosts",
            "Hosts that report but are not on the roster (blocked as unlisted, orders counted).",
            len(a.unlisted),
        )
        yield node_gauge(
            "killswitch_release_split_hosts",
            "Roster hosts running another release than the rest (version vector split; 0 none).",
            len(r.release_split.odd) if r.release_split else 0,
        )
        ro = r.rollouts.active
        yield node_gauge(
            "killswitch_rollout_hosts",
            "Roster hosts a verified rollout lets run its new release (all once promoted; 0 none).",
            0 if ro is None else len(a.trust.roster) if ro.phase == "promoted" else len(ro.hosts),
        )
        yield node_gauge(
            "killswitch_rollout_unproven",
            "1 while the stored rollout claims to be in progress but does not verify (it exempts "
            "nothing).",
            float(bool(r.rollouts.refusal)),
        )
        yield node_gauge(
            "killswitch_arm_unproven",
            "1 while the node is ARMED in Redis without two valid operator signatures.",
            float(bool(a.trust.refusal)),
        )
        q = r.quorum
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
        for h in a.trust.roster:
            per_host.add_metric([n, h, win], r.window.by_host.get(h, 0))
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
        if a.upkeep.durable is not None and a.upkeep.durable.enabled is not None:
            yield node_gauge(
                "killswitch_redis_persistence_enabled",
                "1 if the node's Redis runs with appendonly (a restart keeps kills), else 0.",
                float(a.upkeep.durable.enabled),
            )
        yield from containment_metrics(n, a.trust.roster, r.state, q, a.not_flat(), r.limit_burst)
        if r.fleet is not None:
            yield from fleet_metrics(r.fleet, win, a.s.instance)
        yield from rule_metrics(
            n, a.s.monitor, r.evaluation, a.trust.roster, r.window.by_host, r.window.total
        )
        yield from health_metrics(n, r.rule_guard, a.audit_mirror)


def rule_metrics(
    node: str,
    config: MonitorConfig,
    ev: Evaluation | None,
    roster: Sequence[str],
    by_host: Mapping[str, int],
    total: int,
) -> Iterator[Metric]:
    """The rule gauges of one node at its last evaluation."""
    win = ruleview.window_label(config)
    base = GaugeMetricFamily(
        "killswitch_node_baseline_orders",
        "The learned baseline: orders per window normal for the node now (absent until learned).",
        labels=["node", "window"],
    )
    limit = GaugeMetricFamily(
        "killswitch_node_baseline_limit_orders",
        "Orders per window above which the baseline rule is in breach "
        "(multiplier x baseline, never below --min-orders).",
        labels=["node", "window"],
    )
    if ev is not None and ev.expected is not None:
        base.add_metric([node, win], ev.expected)
    rule = ev.rule("baseline") if ev is not None else None
    if rule is not None and rule.limit is not None:
        limit.add_metric([node, win], rule.limit)
    yield base
    yield limit
    share = GaugeMetricFamily(
        "killswitch_host_share_ratio",
        "Each roster host's share (0..1) of the node's orders within the window.",
        labels=["node", "host"],
    )
    for h in roster:
        share.add_metric([node, h], by_host.get(h, 0) / total if total > 0 else 0.0)
    yield share
    level = GaugeMetricFamily(
        "killswitch_node_warning_level",
        "Warning level of each active rule: 0, 50, 75 or 90 (% of its limit reached).",
        labels=["node", "rule"],
    )
    shadow = GaugeMetricFamily(
        "killswitch_rule_shadow",
        "1 for a rule in shadow mode: evaluated and reported, never enforcing.",
        labels=["node", "rule"],
    )
    value = GaugeMetricFamily(
        "killswitch_rule_value",
        "What each rule judges at its last evaluation: orders in the rule's window (the top "
        "host's share for the host-share rules).",
        labels=["node", "rule", "window"],
    )
    rule_limit = GaugeMetricFamily(
        "killswitch_rule_limit",
        "The value above which each rule is in breach (absent until the baseline is learned).",
        labels=["node", "rule", "window"],
    )
    for cause in config.causes:
        r = ev.rule(cause) if ev is not None else None
        level.add_metric([node, cause], r.level if r is not None else 0)
        shadow.add_metric([node, cause], float(config.is_shadow(cause)))
        if r is not None:
            label = f"{r.window_ms / 1000:g}s"
            value.add_metric([node, cause, label], r.value)
            if r.limit is not None:
                rule_limit.add_metric([node, cause, label], r.limit)
    yield level
    yield shadow
    yield value
    yield rule_limit
    if ev is not None and ev.fast_total is not None:
        fast = GaugeMetricFamily(
            "killswitch_node_fast_orders",
            "Orders sent across the node within the fast window the fast rules judge.",
            labels=["node", "window"],
        )
        fast.add_metric([node, f"{config.fast_window_ms / 1000:g}s"], ev.fast_total)
        yield fast


def fleet_metrics(fleet: FleetRule, win: str, instance: str) -> Iterator[Metric]:
    """The fleet rule's gauges (only on aggregators started with --fleet-max-orders)."""
    lead = GaugeMetricFamily(
        "killswitch_fleet_leader",
        "1 on the aggregator instance holding the fleet leader lease (runs the fleet rule).",
        labels=["instance"],
    )
    lead.add_metric([instance], float(fleet.is_leader()))
    yield lead
    limit = GaugeMetricFamily(
        "killswitch_fleet_limit_orders",
        "The fleet cap: more orders than this across every node within the window kills them all.",
        labels=["window"],
    )
    limit.add_metric([win], fleet.cap)
    yield limit
    d = fleet.decision
    if d is None:
        return  # a standby: only the leader's sum is exported, so it is never double-counted
    total = GaugeMetricFamily(
        "killswitch_fleet_orders",
        "Orders across every node of the fleet within the window (fleet leader's sum).",
        labels=["window"],
    )
    total.add_metric([win], d.total)
    yield total
    stale = GaugeMetricFamily(
        "killswitch_fleet_nodes_not_summed",
        "Nodes the fleet rule could not sum (no fresh aggregator view, or another window).",
        labels=[],
    )
    stale.add_metric([], len(d.stale) + len(d.other_window))
    yield stale
