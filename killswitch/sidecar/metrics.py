"""The sidecar's Prometheus metrics, read from its plain fields at scrape time.

Nothing here runs on the order path: the gate keeps plain integer counters and this
collector turns them into metric families only when Prometheus scrapes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from killswitch.core.enforce.gate import LIMIT, Gate
from killswitch.core.node.state import BlockReason, NodeState
from killswitch.sidecar.applying import ReadApplier
from killswitch.sidecar.armcheck import ArmCheck
from killswitch.sidecar.attest import AttestLoop
from killswitch.sidecar.notices import NoticeListener
from killswitch.sidecar.permissions import AclWatch
from killswitch.sidecar.settings import SidecarSettings

# Always exported, at 0 until used, so rate() and alert rules see the series from the start.
REASONS = (*(r.value for r in BlockReason), LIMIT)


class Sidecar(Protocol):
    """What the collector reads of a sidecar (structural, so the service need not be imported)."""

    @property
    def s(self) -> SidecarSettings: ...
    @property
    def gate(self) -> Gate: ...
    @property
    def failures(self) -> int: ...
    @property
    def round_trips(self) -> int: ...
    @property
    def idle_skips(self) -> int: ...
    @property
    def applier(self) -> ReadApplier: ...
    @property
    def arms(self) -> ArmCheck: ...
    @property
    def loop_errors(self) -> int: ...
    @property
    def notices(self) -> NoticeListener: ...
    @property
    def attest(self) -> AttestLoop: ...
    @property
    def acl(self) -> AclWatch: ...
    def sync_age(self) -> float | None: ...
    def problem(self) -> str: ...
    def gate_connections(self) -> tuple[int, int]: ...
    def summarized_lines(self) -> int: ...


class SidecarCollector:
    """Reads the gate's plain counters at scrape time: nothing is added to the order path."""

    def __init__(self, sidecar: Sidecar) -> None:
        self.sc = sidecar

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        sc, n, h = self.sc, self.sc.s.node, self.sc.s.host
        orders = CounterMetricFamily(
            "killswitch_orders",
            "Orders this host's gate decided on, by decision (allowed or blocked).",
            labels=["node", "host", "decision"],
        )
        orders.add_metric([n, h, "allowed"], sc.gate.allowed)
        orders.add_metric([n, h, "blocked"], sc.gate.blocked)
        yield orders
        cancels = CounterMetricFamily(
            "killswitch_cancels",
            "CANCEL requests this host's gate allowed (cancels pass in every state).",
            labels=["node", "host"],
        )
        cancels.add_metric([n, h], sc.gate.cancels)
        yield cancels
        by_reason = CounterMetricFamily(
            "killswitch_blocked_orders",
            "Orders this host's gate blocked, by reason (killed, unarmed, stale, limit, ...).",
            labels=["node", "host", "reason"],
        )
        counts = dict.fromkeys(REASONS, 0) | sc.gate.blocked_by
        for reason, count in sorted(counts.items()):
            by_reason.add_metric([n, h, reason], count)
        yield by_reason
        yield _gauge(
            "killswitch_host_scoped_kill",
            "1 while this host is killed on its own (kill --host), the rest of the node trading.",
            n, h, float(sc.gate.isolated),
        )  # fmt: skip
        yield _gauge(
            "killswitch_killed_symbols",
            "Symbols blocked on this host by scoped kills (kill --symbol).",
            n, h, float(len(sc.gate.killed_symbols)),
        )  # fmt: skip
        yield _gauge(
            "killswitch_gate_open",
            "1 while this host's gate lets orders through.",
            n,
            h,
            float(sc.gate.is_open),
        )
        yield _gauge(
            "killswitch_host_epoch",
            "Highest node epoch this host has seen.",
            n,
            h,
            sc.gate.view.max_epoch,
        )
        age = sc.sync_age()
        yield _gauge(
            "killswitch_sync_age_seconds",
            "Seconds since this host's last successful Redis round trip (+Inf before the first).",
            n, h, float("inf") if age is None else age,
        )  # fmt: skip
        state = GaugeMetricFamily(
            "killswitch_host_state",
            "1 for the node state this host enforces now (STALE: it cannot prove the node armed).",
            labels=["node", "host", "state"],
        )
        now_state = sc.gate.status()[0]
        for st in NodeState:
            state.add_metric([n, h, st.value], float(st is now_state))
        yield state
        yield _counter(
            "killswitch_sync_failures", "Failed Redis round trips of this host.",
            n, h, sc.failures,
        )  # fmt: skip
        yield _counter(
            "killswitch_sync_round_trips",
            "Successful Redis round trips of this host (report, confirm, read: the lease).",
            n, h, sc.round_trips,
        )  # fmt: skip
        yield _counter(
            "killswitch_sync_idle_skips",
            "Wake-ups of an idle host that had nothing to report and a lease still fresh, so "
            "made no round trip.",
            n, h, sc.idle_skips,
        )  # fmt: skip
        yield _counter(
            "killswitch_sync_loop_errors",
            "Sync iterations that failed for a reason other than Redis (a bug, an unwritable "
            "state file); the gate is closed and the loop retries.",
            n, h, sc.loop_errors,
        )  # fmt: skip
        acl = CounterMetricFamily(
            "killswitch_acl_denials",
            "Round trips Redis's ACL refused (NOPERM), by the permission missing (a command, "
            "or key/channel/script); the log event ACL_DENIED names the rule to add.",
            labels=["node", "host", "permission"],
        )
        for permission, count in sorted(sc.acl.denials.items()):
            acl.add_metric([n, h, permission], count)
        yield acl
        yield _gauge(
            "killswitch_acl_denied",
            "1 while Redis's ACL refuses this host's round trip (NOPERM): it blocks; the log "
            "event ACL_DENIED and `status` name the rule to add.",
            n, h, float(bool(sc.acl.problem)),
        )  # fmt: skip
        yield _gauge(
            "killswitch_healthy",
            "1 while this sidecar can do its job; 0 with the reason on /healthz.",
            n, h, float(not sc.problem()),
        )  # fmt: skip
        open_conns, refused = sc.gate_connections()
        yield _gauge(
            "killswitch_gate_connections", "Gate protocol connections open now.", n, h, open_conns
        )
        ref = CounterMetricFamily(
            "killswitch_gate_connections_refused",
            "Gate connections closed by the server: refused at the cap, evicted to make room, "
            "or holding a partial line too long.",
            labels=["node", "host"],
        )
        ref.add_metric([n, h], refused)
        yield ref
        summ = CounterMetricFamily(
            "killswitch_log_lines_summarized",
            "BLOCK_ORDER log lines replaced by summary events because logging could not keep up "
            "(every one is counted in a summary).",
            labels=["node", "host"],
        )
        summ.add_metric([n, h], sc.summarized_lines())
        yield summ
        regr = CounterMetricFamily(
            "killswitch_epoch_regressions",
            "Times this host read a node state older than one it had seen (data loss or rollback).",
            labels=["node", "host"],
        )
        regr.add_metric([n, h], sc.applier.regressions)
        yield regr
        yield _gauge(
            "killswitch_gate_arm_unproven",
            "1 while Redis says ARMED but this host refuses it (no valid two-operator proof for "
            "this node, epoch and host): the gate stays closed.",
            n, h, float(bool(sc.gate.view.refusal)),
        )  # fmt: skip
        arm_refusals = CounterMetricFamily(
            "killswitch_arm_refusals",
            "ARMED states this host refused to open for (once per epoch and reason).",
            labels=["node", "host"],
        )
        arm_refusals.add_metric([n, h], sc.arms.refused)
        yield arm_refusals
        junk = CounterMetricFamily(
            "killswitch_junk_inputs",
            "Values read from Redis or pub/sub that are not what killswitch writes (ignored).",
            labels=["node", "host"],
        )
        junk.add_metric([n, h], sc.notices.junk_inputs)
        yield junk
        yield _gauge(
            "killswitch_attest_unreadable",
            "1 while this host cannot read an attested file (or has not hashed them yet): it "
            "blocks; the log event ATTEST_FAILED names the file.",
            n, h, float(bool(sc.attest.current.problem)),
        )  # fmt: skip


def roundtrip_seconds(registry: CollectorRegistry, node: str, host: str) -> Any:
    """The histogram of the sidecar's Redis round trips (this host's child)."""
    return Histogram(
        "killswitch_redis_roundtrip_seconds",
        "Duration of the sidecar's Redis round trip (report counts + read node state).",
        ["node", "host"],
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
        registry=registry,
    ).labels(node, host)


def _counter(name: str, doc: str, node: str, host: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=["node", "host"])
    c.add_metric([node, host], value)
    return c


def _gauge(name: str, doc: str, node: str, host: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["node", "host"])
    g.add_metric([node, host], value)
    return g
