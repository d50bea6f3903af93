"""Generate the killswitch Grafana dashboards (node-overview.json, fleet-overview.json).

Run `python dashboards/build.py` after changing a panel and commit the JSON it writes; the
JSON is what Grafana provisions and what the tests evaluate, so never edit it by hand.
Needs `grafana-foundation-sdk` (a dev-only dependency: the package itself never imports it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

from grafana_foundation_sdk.builders import (
    bargauge,
    common,
    dashboard,
    prometheus,
    statetimeline,
    table,
    timeseries,
)
from grafana_foundation_sdk.builders import stat as statb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

HERE = Path(__file__).resolve().parent

# Every panel queries the datasource chosen in the $datasource variable; the provisioned
# datasource (deploy/grafana/provisioning/datasources/prometheus.yml) is the default.
DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
N = 'node="$node"'

GREEN, YELLOW, ORANGE, RED, GREY, BLUE = "green", "yellow", "orange", "red", "text", "blue"


# --- small helpers: one place that decides how a query / threshold / mapping looks ----------


def q(
    expr: str, legend: str = "", ref: str = "A", *, instant: bool = False
) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).ref_id(ref).datasource(DS)
    if legend:
        query = query.legend_format(legend)
    return query.instant() if instant else query.range()


def queries(*pairs: tuple[str, str], instant: bool = False) -> list[prometheus.Dataquery]:
    """Queries with refIds A, B, C... from (expr, legend) pairs."""
    return [
        q(expr, legend, chr(ord("A") + i), instant=instant)
        for i, (expr, legend) in enumerate(pairs)
    ]


def steps(*pairs: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in pairs])
    )


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                k: dm.ValueMappingResult(text=text, color=color, index=i)
                for i, (k, (text, color)) in enumerate(mapping.items())
            }
        )
    ]


def stat(title: str, description: str, targets: Iterable[prometheus.Dataquery]) -> statb.Panel:
    return (
        statb.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .height(4)
        .span(4)
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def ts(title: str, description: str, targets: Iterable[prometheus.Dataquery]) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(targets))
        .height(8)
        .span(12)
        .line_width(1)
        .fill_opacity(10)
        .legend(
            common.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.RIGHT)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )


def datasource_variable() -> dashboard.DatasourceVariable:
    return dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")


def numbered(panels: list[dm.Panel | dm.RowPanel]) -> None:
    """Stable panel ids (Grafana would assign them on load, differently on every rebuild)."""
    for i, panel in enumerate(panels, start=1):
        panel.id_val = i


# --- node overview ------------------------------------------------------------------------

# One number per host for the state timeline. `or` keeps hosts that export only their current
# state; if a host briefly reports two states, max() shows the worse one (STALE > UNARMED >
# KILLED > ARMED).
HOST_STATE_CODE = (
    "max by (host) ("
    + " or ".join(
        f'(killswitch_host_state{{{N},state="{state}"}} == 1) * 0 + {code}'
        for code, state in enumerate(("ARMED", "KILLED", "UNARMED", "STALE"), start=1)
    )
    + ")"
)
HOST_STATE_MAP = {
    "1": ("ARMED", GREEN),
    "2": ("KILLED", RED),
    "3": ("UNARMED", GREY),
    "4": ("STALE", ORANGE),
}
# Same arithmetic as the KillswitchHauntedHost alert: host share / average share of its peers.
PEER_RATIO = (
    f"(max by (host) (killswitch_host_share_ratio{{{N}}})"
    f" * on () group_left () (max(killswitch_roster_hosts{{{N}}}) - 1))"
    f" / (1 - max by (host) (killswitch_host_share_ratio{{{N}}}))"
)


def node_overview() -> dashboard.Dashboard:
    node_var = (
        dashboard.QueryVariable("node")
        .label("Node")
        .datasource(DS)
        # Nodes known to sidecars or aggregators, so a node whose aggregator is down still shows.
        .query(
            "query_result(group by (node) (killswitch_host_state)"
            " or group by (node) (killswitch_roster_hosts))"
        )
        .regex('/node="([^"]+)"/')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    window_var = (
        dashboard.QueryVariable("window")
        .label("Window")
        .datasource(DS)
        .query(f"label_values(killswitch_node_orders{{{N}}}, window)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )

    b = (
        dashboard.Dashboard("killswitch / node overview")
        .uid("killswitch-node")
        .description("One node: its kill state, volume against the cap, and every host's part.")
        .tags(["killswitch"])
        .refresh("2s")
        .time("now-15m", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .with_variable(node_var)
        .with_variable(window_var)
        .link(
            dashboard.DashboardLink("Fleet overview")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["killswitch"])
            .include_vars(False)
            .keep_time(True)
        )
    )

    b.with_row(dashboard.Row("State"))
    b.with_panel(
        stat(
            "Node killed?",
            "Is the kill switch engaged for this node? KILLED means every order is blocked.",
            [q(f"max(killswitch_node_killed{{{N}}})", "killed")],
        )
        .mappings(value_map({"0": ("not killed", GREEN), "1": ("KILLED", RED)}))
        .thresholds(steps((None, GREEN), (1, RED)))
    )
    b.with_panel(
        stat(
            "Epoch (node / lowest host)",
            "The node's epoch in Redis next to the lowest epoch any host has seen. They differ "
            "for a moment after every kill or arm; if they stay apart, a host is not following.",
            queries(
                (f"max(killswitch_node_epoch{{{N}}})", "node"),
                (f"min(killswitch_host_epoch{{{N}}})", "lowest host"),
            ),
        )
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    b.with_panel(
        stat(
            "Confirmed / roster",
            "Roster hosts that confirmed the node's current epoch, out of the roster. While "
            "killed, anything below the roster is a host that may still be trading.",
            queries(
                (f"max(killswitch_confirmed_hosts{{{N}}})", "confirmed"),
                (f"max(killswitch_roster_hosts{{{N}}})", "roster"),
            ),
        )
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    b.with_panel(
        stat(
            "Stale hosts",
            "Hosts whose last Redis round trip is older than 2 s or that report STALE. "
            "A stale host blocks every order and cannot confirm a kill.",
            [
                q(
                    f"count(max by (host) (killswitch_sync_age_seconds{{{N}}}) > 2"
                    f' or max by (host) (killswitch_host_state{{{N},state="STALE"}}) == 1)'
                    " or vector(0)",
                    "stale",
                )
            ],
        ).thresholds(steps((None, GREEN), (1, ORANGE)))
    )
    b.with_panel(
        stat(
            "Aggregator leader",
            "Which aggregator instance holds the leader lease. Empty means nobody sums this "
            "node's volume: automatic kills are off.",
            [q(f"max by (instance) (killswitch_aggregator_leader{{{N}}} == 1)", "{{instance}}")],
        )
        .text_mode(cm.BigValueTextMode.NAME)
        .no_value("NO LEADER")
        .thresholds(steps((None, GREEN)))
    )
    b.with_panel(
        stat(
            "Redis AOF",
            "Is append-only persistence on in the Redis holding this node's state? Off means "
            "a Redis restart forgets kills, epochs and the audit log.",
            [q(f"max(killswitch_redis_persistence_enabled{{{N}}})", "aof")],
        )
        .mappings(value_map({"0": ("OFF", RED), "1": ("on", GREEN)}))
        .thresholds(steps((None, RED), (1, GREEN)))
    )

    b.with_row(dashboard.Row("Volume"))
    b.with_panel(
        ts(
            "Node orders in window vs limit and baseline",
            "Orders sent across all hosts of the node within the sliding $window window, "
            "against the static cap (--max-orders: the node is killed above it) and the "
            "learned baseline.",
            queries(
                (f'max(killswitch_node_orders{{{N},window="$window"}})', "orders"),
                (f'max(killswitch_node_limit_orders{{{N},window="$window"}})', "limit"),
                (f'max(killswitch_node_baseline_orders{{{N},window="$window"}})', "baseline"),
            ),
        )
        .override_by_name(
            "limit",
            [
                dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": RED}),
                dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash"}),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            ],
        )
        .override_by_name(
            "baseline",
            [
                dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": BLUE}),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0),
            ],
        )
    )
    b.with_panel(
        ts(
            "Allowed orders per second by host (stacked)",
            "Each host's share of the node's flow, as its sidecar counted it. Hosts of one node "
            "should look alike; one band growing alone is a haunted host.",
            [
                q(
                    f'sum by (host) (rate(killswitch_orders_total{{{N},decision="allowed"}}'
                    "[$__rate_interval]))",
                    "{{host}}",
                )
            ],
        )
        .unit("ops")
        .fill_opacity(60)
        .stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL))
    )
    b.with_panel(
        ts(
            "Blocked orders per second by host",
            "Orders the sidecars refused (killed, unarmed or stale). Non-zero while ARMED "
            "means some hosts are stale.",
            [
                q(
                    f'sum by (host) (rate(killswitch_orders_total{{{N},decision="blocked"}}'
                    "[$__rate_interval]))",
                    "{{host}}",
                )
            ],
        ).unit("ops")
    )
    b.with_panel(
        ts(
            "Warning level by rule",
            "How close each trip rule is to killing the node: 50, 75, 90 (% of its limit).",
            [q(f"max by (rule) (killswitch_node_warning_level{{{N}}})", "{{rule}}")],
        )
        .min(0)
        .max(100)
        .thresholds(steps((None, GREEN), (50, YELLOW), (75, ORANGE), (90, RED)))
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)
        )
    )
    b.with_panel(
        ts(
            "Host share of node volume (haunted host)",
            "Each host's share of the node's orders in the window (aggregator's view). With 8 "
            "hosts, 12.5% each is normal; one host far above the rest is Knight's eighth server.",
            [q(f"max by (host) (killswitch_host_share_ratio{{{N}}})", "{{host}}")],
        )
        .unit("percentunit")
        .min(0)
        .max(1)
    )
    b.with_panel(
        ts(
            "Host volume vs peers' average",
            "Each host's share divided by the average share of its peers (1 = like the others). "
            "KillswitchHauntedHost fires above 4 for 5 s.",
            [q(PEER_RATIO, "{{host}}")],
        )
        .min(0)
        .thresholds(steps((None, GREEN), (4, RED)))
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)
        )
    )

    b.with_row(dashboard.Row("Kill & containment"))
    b.with_panel(
        statetimeline.Panel()
        .title("Host state")
        .description(
            "Each host's gate state over time: ARMED (trading), KILLED, UNARMED (never armed) "
            "or STALE (lost Redis, blocking)."
        )
        .datasource(DS)
        .targets([q(HOST_STATE_CODE, "{{host}}")])
        .mappings(value_map(HOST_STATE_MAP))
        .thresholds(steps((None, GREY)))
        .color_scheme(dashboard.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .show_value(cm.VisibilityMode.AUTO)
        .merge_values(True)
        .height(8)
        .span(12)
    )
    b.with_panel(
        ts(
            "Confirmations vs roster",
            "After a kill, how many roster hosts confirmed they block, against the roster size. "
            "The two lines must meet within seconds of a kill.",
            queries(
                (f"max(killswitch_confirmed_hosts{{{N}}})", "confirmed"),
                (f"max(killswitch_roster_hosts{{{N}}})", "roster"),
                (f"max(killswitch_node_killed{{{N}}})", "killed"),
            ),
        ).min(0)
    )
    b.with_panel(
        ts(
            "Host epoch",
            "The highest epoch each host has seen, and the node's epoch. A host stuck below "
            "the node's epoch missed a kill or an arm.",
            queries(
                (f"max by (host) (killswitch_host_epoch{{{N}}})", "{{host}}"),
                (f"max(killswitch_node_epoch{{{N}}})", "node"),
            ),
        ).decimals(0)
    )
    b.with_panel(
        ts(
            "Redis sync age by host",
            "Seconds since each sidecar's last successful Redis round trip. Above "
            "--stale-after (1 s) the host blocks; the alert fires above 2 s.",
            [q(f"max by (host) (killswitch_sync_age_seconds{{{N}}})", "{{host}}")],
        )
        .unit("s")
        .thresholds(steps((None, GREEN), (1, ORANGE), (2, RED)))
        .thresholds_style(
            common.GraphThresholdsStyleConfig().mode(cm.GraphTresholdsStyleMode.DASHED)
        )
    )
    b.with_panel(
        stat(
            "Time to confirm a kill (p50, p99, count; dashboard range)",
            "From the kill being recorded to the last roster host confirming, over the kills "
            "in the dashboard's time range. Should be well under a second.",
            queries(
                (
                    "histogram_quantile(0.5, sum by (le) "
                    f"(increase(killswitch_kill_confirm_seconds_bucket{{{N}}}[$__range])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) "
                    f"(increase(killswitch_kill_confirm_seconds_bucket{{{N}}}[$__range])))",
                    "p99",
                ),
                (
                    f"sum(increase(killswitch_kill_confirm_seconds_count{{{N}}}[$__range]))",
                    "kills",
                ),
            ),
        )
        .unit("s")
        .span(6)
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .override_by_name("kills", [dm.DynamicConfigValue(id_val="unit", value="none")])
    )
    b.with_panel(
        stat(
            "Trips in range by cause",
            "Automatic and operator kills in the dashboard's time range, by cause; shadow "
            "trips are rules that would have killed if they were enforcing.",
            queries(
                (
                    f"sum by (cause) (increase(killswitch_trips_total{{{N}}}[$__range]))",
                    "{{cause}}",
                ),
                (
                    f"sum by (cause) (increase(killswitch_shadow_trips_total{{{N}}}[$__range]))",
                    "shadow {{cause}}",
                ),
            ),
        )
        .span(6)
        .decimals(0)
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    b.with_panel(
        ts(
            "Mean time to confirm (kills in the last minute)",
            "Average kill-to-last-confirmation time of the kills recorded in the preceding "
            "minute; gaps mean no kill happened.",
            [
                q(
                    f"sum(increase(killswitch_kill_confirm_seconds_sum{{{N}}}[1m]))"
                    f" / sum(increase(killswitch_kill_confirm_seconds_count{{{N}}}[1m]))",
                    "mean",
                )
            ],
        ).unit("s")
    )

    containment_row(b)
    fix_gateway_row(b)

    b.with_row(dashboard.Row("Sidecar health"))
    b.with_panel(
        ts(
            "Gates open and hosts alive vs roster",
            "Sidecars whose gate lets orders through, hosts the aggregator hears from, and the "
            "roster. While ARMED all three should be equal; while KILLED no gate may be open.",
            queries(
                (f"sum(killswitch_gate_open{{{N}}})", "gates open"),
                (f"sum(max by (host) (killswitch_host_alive{{{N}}}))", "alive"),
                (f"max(killswitch_roster_hosts{{{N}}})", "roster"),
            ),
        )
        .min(0)
        .decimals(0)
    )
    b.with_panel(
        ts(
            "Orders in window by host (aggregator's view)",
            "Each host's orders inside the $window window as the aggregator summed them; "
            "compare with the sidecars' own rates above to spot lost or late reports.",
            [
                q(
                    f'max by (host) (killswitch_node_host_orders{{{N},window="$window"}})',
                    "{{host}}",
                )
            ],
        )
        .fill_opacity(60)
        .stacking(common.StackingConfig().mode(cm.StackingMode.NORMAL))
    )
    b.with_panel(
        ts(
            "Redis round trip p99 by host",
            "How long each sidecar's Redis round trip takes. Slow trips eat into --stale-after.",
            [
                q(
                    "histogram_quantile(0.99, sum by (host, le) "
                    f"(rate(killswitch_redis_roundtrip_seconds_bucket{{{N}}}[$__rate_interval])))",
                    "{{host}}",
                )
            ],
        ).unit("s")
    )
    b.with_panel(
        ts(
            "Sync failures and epoch regressions",
            "Failed Redis round trips per second by host, and any epoch regression (Redis "
            "offered an older epoch: it went back in time).",
            queries(
                (
                    f"sum by (host) (rate(killswitch_sync_failures_total{{{N}}}"
                    "[$__rate_interval]))",
                    "sync failures {{host}}",
                ),
                (
                    f"sum by (host) (increase(killswitch_epoch_regressions_total{{{N}}}[1m]))",
                    "epoch regressions/min {{host}}",
                ),
            ),
        )
    )
    return b


# --- fleet overview -----------------------------------------------------------------------

FLEET_TABLE = (
    ("max by (node) (killswitch_node_killed)", "Killed"),
    ("max by (node) (killswitch_node_epoch)", "Epoch"),
    (
        "max by (node) (max by (node, window) (killswitch_node_orders)"
        " / max by (node, window) (killswitch_node_limit_orders))",
        "Volume / limit",
    ),
    ("sum by (node) (max by (node, host) (killswitch_sync_age_seconds) > bool 2)", "Stale hosts"),
    (
        "(max by (node) (killswitch_roster_hosts) - max by (node) (killswitch_confirmed_hosts))"
        " * max by (node) (killswitch_node_killed)",
        "Unconfirmed while killed",
    ),
    ("max by (node) (killswitch_roster_hosts)", "Roster"),
)


def containment_row(b: dashboard.Dashboard) -> None:
    """Beyond blocking: cancels, flat proof, the on-kill command, scoped kills, local limits
    and the release the hosts attest (docs/CONTAINMENT.md)."""
    b.with_row(dashboard.Row("Containment: cancels, flat, scopes, limits, release"))
    b.with_panel(
        stat(
            "Flat after the kill (flat / subscribed / not flat in time)",
            "Roster hosts whose trading processes cancelled their resting orders and reported "
            "FLAT for the current kill, hosts with a subscribed trading process, and hosts that "
            "block but were not flat within the confirm timeout (KILL_NOT_FLAT): those may "
            "still have orders working at the venue.",
            queries(
                (f"sum(max by (host) (killswitch_host_flat{{{N}}}))", "flat"),
                (f"sum(max by (host) (killswitch_host_subscribers{{{N}}}) > bool 0)", "subscribed"),
                (f"max(killswitch_hosts_not_flat{{{N}}})", "not flat"),
            ),
        )
        .span(8)
        .decimals(0)
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    b.with_panel(
        stat(
            "On-kill command failed",
            "Hosts whose --on-kill command (a venue mass-cancel) for the current kill exited "
            "non-zero, timed out or could not start.",
            [q(f"sum(max by (host) (killswitch_host_on_kill_failed{{{N}}}))", "failed")],
        )
        .span(4)
        .thresholds(steps((None, GREEN), (1, RED)))
    )
    b.with_panel(
        stat(
            "Scoped kills (isolated hosts / killed symbols)",
            "Hosts killed on their own (kill --host, or the aggregator's --on-haunted isolate) "
            "and the most symbols any host blocks by kill --symbol. The rest of the node trades.",
            queries(
                (f"sum(max by (host) (killswitch_host_scoped_kill{{{N}}}))", "isolated hosts"),
                (f"max(killswitch_killed_symbols{{{N}}})", "killed symbols"),
            ),
        )
        .span(6)
        .thresholds(steps((None, GREEN), (1, ORANGE)))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    b.with_panel(
        stat(
            "Release split / attestation unreadable",
            "Roster hosts running another release than the rest (an armed node that splits is "
            "killed, cause version_split) and hosts that cannot read an attested file (they "
            "block).",
            queries(
                (f"max(killswitch_release_split_hosts{{{N}}})", "split hosts"),
                (f"sum(max by (host) (killswitch_attest_unreadable{{{N}}}))", "unreadable"),
            ),
        )
        .span(6)
        .thresholds(steps((None, GREEN), (1, RED)))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    b.with_panel(
        ts(
            "Cancels per second by host",
            "CANCEL requests the gates allowed (cancels pass in every state). A burst right "
            "after a kill is the trading processes pulling their resting orders.",
            [
                q(
                    f"sum by (host) (rate(killswitch_cancels_total{{{N}}}[$__rate_interval]))",
                    "{{host}}",
                )
            ],
        ).unit("reqps")
    )
    b.with_panel(
        ts(
            "Blocked orders per second by reason",
            "Why the gates block: killed, unarmed, stale, unlisted, or limit (a local pre-trade "
            "limit refused the order; the node stays armed).",
            [
                q(
                    f"sum by (reason) "
                    f"(rate(killswitch_blocked_orders_total{{{N}}}[$__rate_interval]))",
                    "{{reason}}",
                )
            ],
        ).unit("reqps")
    )
    b.with_panel(
        ts(
            "Limit refusals in the limit-burst window vs its threshold",
            "Orders refused by local limits across the node within the limit-burst rule's "
            "window; above the threshold, from enough hosts, the node is killed (cause "
            "limit_burst). Empty when the aggregator runs without --max-limit-refusals.",
            queries(
                (f"max by (window) (killswitch_node_limit_refusals{{{N}}})", "refusals {{window}}"),
                (f"max by (window) (killswitch_node_limit_refusals_max{{{N}}})", "threshold"),
            ),
        ).min(0)
    )
    b.with_panel(
        ts(
            "Trust: unproven arms and refusals",
            "1 while Redis says ARMED without two valid operator signatures (the aggregator's "
            "view), hosts refusing such an arm, and arm refusals per minute by host.",
            queries(
                (f"max(killswitch_arm_unproven{{{N}}})", "node unproven"),
                (f"sum(max by (host) (killswitch_gate_arm_unproven{{{N}}}))", "hosts refusing"),
                (
                    f"sum by (host) (increase(killswitch_arm_refusals_total{{{N}}}[1m]))",
                    "refusals {{host}}",
                ),
            ),
        ).min(0)
    )


def fix_gateway_row(b: dashboard.Dashboard) -> None:
    """The FIX gateway (sidecar --fix): what it relayed and refused, per host."""
    b.with_row(dashboard.Row("FIX gateway"))
    b.with_panel(
        ts(
            "FIX orders per second by host and decision",
            "Orders (35=D, G, E, AB) the FIX gateways relayed to the venue (allowed) or answered "
            "with a rejecting ExecutionReport instead (blocked), and cancels (35=F, q), which "
            "always pass. After a kill, allowed drops to zero while blocked and cancels go on.",
            [
                q(
                    "sum by (host, decision) (rate(killswitch_fix_messages_total"
                    f'{{{N},msgtype=~"D|G|E|AB|F|q"}}[$__rate_interval]))',
                    "{{host}} {{decision}}",
                )
            ],
        )
        .unit("reqps")
        .span(12)
    )
    b.with_panel(
        stat(
            "FIX sessions relayed now",
            "FIX sessions each host's gateway relays to its venue at this moment.",
            [q(f"sum by (host) (killswitch_fix_sessions{{{N}}})", "{{host}}", instant=True)],
        )
        .span(6)
        .decimals(0)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
    )
    b.with_panel(
        ts(
            "FIX connections refused per minute by reason",
            "Peers the gateway disconnected (garbage, oversize, body_length, partial_timeout: a "
            "message held too long) and messages it dropped (checksum). Others' sessions and "
            "the gate are not affected; the log line FIX_REFUSED names the peer.",
            [
                q(
                    f"sum by (host, reason) (increase(killswitch_fix_refused_total{{{N}}}[1m]))",
                    "{{host}} {{reason}}",
                )
            ],
        )
        .min(0)
        .span(6)
    )


def fleet_overview() -> dashboard.Dashboard:
    b = (
        dashboard.Dashboard("killswitch / fleet overview")
        .uid("killswitch-fleet")
        .description(
            "Every node at a glance: which are killed, how close to their caps, who is stale."
        )
        .tags(["killswitch"])
        .refresh("2s")
        .time("now-15m", "now")
        .timezone("browser")
        .with_variable(datasource_variable())
        .link(
            dashboard.DashboardLink("Node overview")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["killswitch"])
            .keep_time(True)
        )
    )
    node_link = dashboard.DashboardLink("Open node ${__field.labels.node}").url(
        "/d/killswitch-node?var-node=${__field.labels.node}&${__url_time_range}"
    )

    b.with_panel(
        stat(
            "Killed nodes",
            "Each node's kill state. Click a node to open its dashboard.",
            [q("max by (node) (killswitch_node_killed)", "{{node}}")],
        )
        .mappings(value_map({"0": ("not killed", GREEN), "1": ("KILLED", RED)}))
        .thresholds(steps((None, GREEN), (1, RED)))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .data_links([node_link])
        .span(12)
    )
    b.with_panel(
        stat(
            "Unconfirmed hosts (killed nodes)",
            "Roster hosts that have not confirmed the kill of a killed node. Anything but 0 "
            "for more than a few seconds: stop those hosts by hand.",
            [q(FLEET_TABLE[4][0], "{{node}}")],
        )
        .thresholds(steps((None, GREEN), (1, RED)))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .data_links([node_link])
        .span(6)
    )
    b.with_panel(
        stat(
            "Stale hosts",
            "Hosts per node whose Redis sync is older than 2 s (blocking, cannot confirm kills).",
            [q(FLEET_TABLE[3][0], "{{node}}")],
        )
        .thresholds(steps((None, GREEN), (1, ORANGE)))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .data_links([node_link])
        .span(6)
    )
    b.with_panel(
        stat(
            "Hosts not flat after a kill",
            "Per node, hosts that block after the kill but whose trading processes did not "
            "report FLAT (resting orders cancelled) within the confirm timeout. Anything but 0: "
            "their orders may still be working at the venue; cancel them there.",
            [q("max by (node) (killswitch_hosts_not_flat)", "{{node}}")],
        )
        .thresholds(steps((None, GREEN), (1, RED)))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .data_links([node_link])
        .span(6)
    )
    b.with_panel(
        stat(
            "Scoped kills (isolated hosts)",
            "Per node, hosts killed on their own (kill --host or --on-haunted isolate) while "
            "the rest of the node trades. Lifted by a signed arm --host.",
            [q("sum by (node) (max by (node, host) (killswitch_host_scoped_kill))", "{{node}}")],
        )
        .thresholds(steps((None, GREEN), (1, ORANGE)))
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .data_links([node_link])
        .span(6)
    )
    b.with_panel(
        bargauge.Panel()
        .title("Volume vs limit")
        .description(
            "Orders in each node's sliding window as a fraction of its cap. At 100% the "
            "aggregator kills the node; the alert warns at 90%."
        )
        .datasource(DS)
        .targets([q(FLEET_TABLE[2][0], "{{node}}")])
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(steps((None, GREEN), (0.5, YELLOW), (0.75, ORANGE), (0.9, RED)))
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .data_links([node_link])
        .height(8)
        .span(12)
    )
    b.with_panel(
        bargauge.Panel()
        .title("Fleet volume vs fleet cap")
        .description(
            "Orders across every node within the window as a fraction of --fleet-max-orders, "
            "as the fleet leader summed them. At 100% every armed node is killed (cause "
            "fleet_cap). Nodes not summed (no fresh aggregator view) make this a lower bound."
        )
        .datasource(DS)
        .targets(
            [
                q(
                    "max by (window) (killswitch_fleet_orders)"
                    " / max by (window) (killswitch_fleet_limit_orders)",
                    "fleet ({{window}})",
                ),
                q("max(killswitch_fleet_nodes_not_summed)", "nodes not summed", "B"),
            ]
        )
        .unit("percentunit")
        .min(0)
        .max(1)
        .thresholds(steps((None, GREEN), (0.5, YELLOW), (0.75, ORANGE), (0.9, RED)))
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .height(6)
        .span(12)
    )
    b.with_panel(
        stat(
            "Epoch",
            "Each node's epoch: it grows by one with every kill and every arm.",
            [q(FLEET_TABLE[1][0], "{{node}}")],
        )
        .color_mode(cm.BigValueColorMode.NONE)
        .text_mode(cm.BigValueTextMode.VALUE_AND_NAME)
        .height(8)
        .span(6)
    )
    b.with_panel(
        stat(
            "Nodes without an aggregator leader",
            "Nodes that have sidecars or a roster but no aggregator holding the leader lease: "
            "their volume is not watched.",
            [
                q(
                    "count((group by (node) (killswitch_host_state)"
                    " or group by (node) (killswitch_roster_hosts))"
                    " unless on (node) max by (node) (killswitch_aggregator_leader == 1))"
                    " or vector(0)",
                    "nodes",
                )
            ],
        )
        .thresholds(steps((None, GREEN), (1, RED)))
        .height(8)
        .span(6)
    )
    b.with_panel(
        table.Panel()
        .title("Nodes")
        .description("One row per node: the numbers behind the panels above.")
        .datasource(DS)
        .targets(
            [
                q(expr, "", chr(ord("A") + i), instant=True).format(pm.PromQueryFormat.TABLE)
                for i, (expr, _title) in enumerate(FLEET_TABLE)
            ]
        )
        .with_transformation(dm.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {
                        f"Value #{chr(ord('A') + i)}": title
                        for i, (_expr, title) in enumerate(FLEET_TABLE)
                    },
                },
            )
        )
        .override_by_name(
            "Volume / limit", [dm.DynamicConfigValue(id_val="unit", value="percentunit")]
        )
        .data_links([node_link])
        .height(8)
        .span(24)
    )
    b.with_panel(
        ts(
            "Allowed and blocked orders per second by node",
            "Orders the sidecars allowed and blocked, summed per node.",
            queries(
                (
                    'sum by (node) (rate(killswitch_orders_total{decision="allowed"}'
                    "[$__rate_interval]))",
                    "{{node}} allowed",
                ),
                (
                    'sum by (node) (rate(killswitch_orders_total{decision="blocked"}'
                    "[$__rate_interval]))",
                    "{{node}} blocked",
                ),
            ),
        )
        .unit("ops")
        .span(12)
    )
    b.with_panel(
        table.Panel()
        .title("Firing killswitch alerts")
        .description("Alerts from deploy/prometheus/alerts.yml that are firing now.")
        .datasource(DS)
        .targets(
            [
                q(
                    "sum by (alertname, severity, node, host) "
                    '(ALERTS{alertstate="firing",alertname=~"Killswitch.*"})',
                    instant=True,
                ).format(pm.PromQueryFormat.TABLE)
            ]
        )
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize", options={"excludeByName": {"Time": True, "Value": True}}
            )
        )
        .height(8)
        .span(12)
    )
    b.with_panel(
        table.Panel()
        .title("Versions running")
        .description(
            "How many processes run each killswitch version. More than one version per "
            "component means a deploy did not reach every host (Knight's root cause)."
        )
        .datasource(DS)
        .targets(
            [
                q("count by (component, version) (killswitch_build_info)", instant=True).format(
                    pm.PromQueryFormat.TABLE
                )
            ]
        )
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="organize",
                options={"excludeByName": {"Time": True}, "renameByName": {"Value": "processes"}},
            )
        )
        .height(6)
        .span(24)
    )
    return b


def render(builder: dashboard.Dashboard) -> str:
    built = builder.build()
    if built.panels:
        numbered(built.panels)
    return json.dumps(built, cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else HERE
    for name, builder in (
        ("node-overview.json", node_overview()),
        ("fleet-overview.json", fleet_overview()),
    ):
        (out / name).write_text(render(builder))
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
