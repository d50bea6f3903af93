"""The aggregator's containment gauges: flat proof after a kill, the venue-side on-kill
command, and the limit-burst rule's window.

Built at scrape time from what the aggregator already read (its quorum, its confirmation
watch, its limit-burst window); nothing here talks to Redis.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from killswitch.core.node.roster import Quorum
from killswitch.core.node.state import NodeRead, NodeState
from killswitch.core.rules.limitburst import LimitBurst

# on-kill statuses that are not a failure: not run for this kill, still running, or done.
_ON_KILL_OK = ("", "running", "exit 0")


def containment_metrics(
    node: str,
    roster: Sequence[str],
    state: NodeRead,
    quorum: Quorum | None,
    not_flat: Sequence[str],
    limit_burst: LimitBurst | None,
) -> Iterator[Metric]:
    killed = state.state is NodeState.KILLED
    flat = GaugeMetricFamily(
        "killswitch_host_flat",
        "1 when the roster host's trading processes reported FLAT (resting orders cancelled) "
        "for the node's current kill; 0 otherwise, and while the node is not killed.",
        labels=["node", "host"],
    )
    subs = GaugeMetricFamily(
        "killswitch_host_subscribers",
        "Trading processes subscribed (SUBSCRIBE) to the roster host's gate state.",
        labels=["node", "host"],
    )
    failed = GaugeMetricFamily(
        "killswitch_host_on_kill_failed",
        "1 when the host's --on-kill command (a venue mass-cancel) for the current kill exited "
        "non-zero, timed out, was interrupted by a stop or could not start.",
        labels=["node", "host"],
    )
    for h in roster:
        v = quorum.hosts.get(h) if quorum else None
        flat.add_metric([node, h], float(bool(killed and v and v.flat_epoch == state.epoch)))
        subs.add_metric([node, h], float(v.subscribers) if v else 0.0)
        bad = bool(
            killed and v and v.on_kill_epoch == state.epoch and v.on_kill_status not in _ON_KILL_OK
        )
        failed.add_metric([node, h], float(bad))
    yield flat
    yield subs
    yield failed
    nf = GaugeMetricFamily(
        "killswitch_hosts_not_flat",
        "Roster hosts that block after a kill but whose subscribed trading processes have not "
        "reported FLAT within the confirm timeout (the KILL_NOT_FLAT event names them).",
        labels=["node"],
    )
    nf.add_metric([node], len(not_flat))
    yield nf
    if limit_burst is not None:
        win = f"{limit_burst.cfg.window_ms / 1000:g}s"
        refusals = GaugeMetricFamily(
            "killswitch_node_limit_refusals",
            "Orders refused by local pre-trade limits across the node within the limit-burst "
            "rule's window.",
            labels=["node", "window"],
        )
        refusals.add_metric([node, win], limit_burst.window.total)
        yield refusals
        cap = GaugeMetricFamily(
            "killswitch_node_limit_refusals_max",
            "The limit-burst rule's threshold: more refusals than this in its window, from at "
            "least its minimum of hosts, kills the node (cause limit_burst).",
            labels=["node", "window"],
        )
        cap.add_metric([node, win], limit_burst.cfg.max_refusals)
        yield cap
