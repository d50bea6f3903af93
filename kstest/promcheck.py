"""Does every shipped PromQL expression return data, with the labels its panel or alert needs?

Test tooling beside `promharness`: the text handling here (selectors, comparison filters,
grouping labels) is pure; `check_expr` only calls the `query` function it is given (normally
`PrometheusHarness.query`). Services never import this.

An expression passes when
- every vector selector in it (`killswitch_*`, `up`, `ALERTS`) returns series, each with the
  node label (except fleet-wide ones such as `killswitch_build_info`), and per-host metrics
  return every expected host: this is what catches a typo'd or not-yet-exported metric;
- the whole expression returns series carrying the labels it groups by (node, host). Alert
  rules are conditions that are usually false, so they are evaluated with their comparison
  filters turned into `bool` comparisons (`x > 4` becomes `x > bool 4`) so that they return
  a 0/1 series for every node or host they watch. A rule `a unless b` that is empty because
  b covers a (every node has a leader) is judged by its left side a.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any

Query = Callable[[str], list[dict[str, Any]]]

# Metrics of Prometheus itself that killswitch expressions use; they carry no node label.
_SELECTOR = re.compile(r"(?<![\w:])(killswitch_\w+|up|ALERTS)(?![\w:])")
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")
_AGGREGATION = re.compile(
    r"\b(?:sum|min|max|avg|group|count|count_values|stddev|stdvar|topk|bottomk|quantile)\s*"
    r"(?:(by|without)\s*\(([^)]*)\)\s*)?\("
)
_TRAILING_BY = re.compile(r"\s*(by|without)\s*\(([^)]*)\)")
FLEET_WIDE = frozenset(
    {
        "killswitch_build_info",
        "up",
        "ALERTS",
        "killswitch_fleet_orders",
        "killswitch_fleet_limit_orders",
        "killswitch_fleet_leader",
        "killswitch_fleet_nodes_not_summed",
    }
)
CHECKED_LABELS = ("node", "host")


@dataclass(frozen=True)
class Selector:
    metric: str
    text: str  # the selector as written, e.g. killswitch_host_state{state="STALE"}


# Every metric name the killswitch processes promise (CONTRACT.md plus the observability
# work), and whether it has one series per roster host. Dashboards and rules may use only
# these (and Prometheus' own `up` and `ALERTS`); a per-host one must cover every host.
METRICS: dict[str, bool] = {
    "killswitch_orders_total": True,
    "killswitch_gate_open": True,
    "killswitch_host_epoch": True,
    "killswitch_sync_age_seconds": True,
    "killswitch_host_state": True,
    "killswitch_redis_roundtrip_seconds_bucket": True,
    "killswitch_sync_failures_total": True,
    "killswitch_epoch_regressions_total": True,
    "killswitch_sync_loop_errors_total": True,
    "killswitch_healthy": True,
    "killswitch_gate_connections": True,
    "killswitch_gate_connections_refused_total": True,
    "killswitch_log_lines_summarized_total": True,
    "killswitch_cancels_total": True,
    "killswitch_blocked_orders_total": True,
    "killswitch_host_scoped_kill": True,
    "killswitch_killed_symbols": True,
    "killswitch_build_info": False,
    "killswitch_node_orders": False,
    "killswitch_node_limit_orders": False,
    "killswitch_node_baseline_orders": False,
    "killswitch_node_host_orders": True,
    "killswitch_host_share_ratio": True,
    "killswitch_node_warning_level": False,
    "killswitch_node_fast_orders": False,
    "killswitch_rule_value": False,
    "killswitch_rule_limit": False,
    "killswitch_node_killed": False,
    "killswitch_node_epoch": False,
    "killswitch_roster_hosts": False,
    "killswitch_confirmed_hosts": False,
    "killswitch_host_alive": True,
    "killswitch_trips_total": False,
    "killswitch_shadow_trips_total": False,
    "killswitch_kill_confirm_seconds_bucket": False,
    "killswitch_kill_confirm_seconds_sum": False,
    "killswitch_kill_confirm_seconds_count": False,
    "killswitch_redis_persistence_enabled": False,
    "killswitch_aggregator_leader": False,
    "killswitch_host_confirmed": True,
    "killswitch_host_report_age_seconds": True,
    "killswitch_roster_mismatch": False,
    "killswitch_unlisted_hosts": False,
    "killswitch_arm_unproven": False,
    "killswitch_release_split_hosts": False,
    "killswitch_gate_arm_unproven": True,
    "killswitch_arm_refusals_total": True,
    "killswitch_fleet_orders": False,
    "killswitch_fleet_limit_orders": False,
    "killswitch_fleet_leader": False,
    "killswitch_fleet_nodes_not_summed": False,
    "killswitch_attest_unreadable": True,
    "killswitch_host_flat": True,
    "killswitch_host_subscribers": True,
    "killswitch_host_on_kill_failed": True,
    "killswitch_hosts_not_flat": False,
    "killswitch_node_limit_refusals": False,
    "killswitch_node_limit_refusals_max": False,
    "killswitch_fix_messages_total": True,
    "killswitch_fix_refused_total": True,
    "killswitch_fix_sessions": True,
    "killswitch_fix_wire_orders_total": True,
    "killswitch_fence_refused_total": True,
    "killswitch_fence_bypasses_total": True,
    "killswitch_fence_unproven": True,
    "killswitch_fence_killed": True,
    "killswitch_recorder_records_total": True,
    "killswitch_recorder_dropped_total": True,
    "killswitch_recorder_capacity_records": True,
    "killswitch_recorder_wraps_total": True,
    "killswitch_recorder_span_seconds": True,
    "killswitch_recorder_freezes_total": True,
    "killswitch_recorder_freeze_failures_total": True,
    "killswitch_recorder_frozen_bytes": True,
    "killswitch_recorder_writer_info": True,
    "killswitch_rule_last_evaluated_seconds": False,
    "killswitch_rule_fault": False,
    "killswitch_rule_faults_total": False,
    "killswitch_audit_copy_rotations_total": False,
    "killswitch_functions_replaced_total": False,
    "killswitch_acl_denied": True,
    "killswitch_audit_chain_ok": False,
}
KNOWN_METRICS = frozenset(METRICS)
PER_HOST_METRICS = frozenset(n for n, per_host in METRICS.items() if per_host)


def _mask(expr: str) -> str:
    """`expr` with the insides of label matchers and string literals blanked (same length)."""
    out: list[str] = []
    depth, quote = 0, ""
    for i, ch in enumerate(expr):
        if quote:
            out.append(" ")
            if ch == quote and expr[i - 1] != "\\":
                quote = ""
        elif ch in "\"'`":
            quote = ch
            out.append(" ")
        elif ch == "{":
            depth += 1
            out.append(ch)
        elif ch == "}":
            depth -= 1
            out.append(ch)
        else:
            out.append(" " if depth else ch)
    return "".join(out)


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of `expr`, in order, with their label matchers (no range)."""
    found: list[Selector] = []
    for m in _SELECTOR.finditer(_mask(expr)):
        end = m.end()
        if expr[end : end + 1] == "{":
            end = expr.index("}", end) + 1
        found.append(Selector(m.group(1), expr[m.start() : end]))
    return found


def boolify(expr: str) -> str:
    """`expr` with every filtering comparison made a `bool` one (matchers left alone)."""
    masked = _mask(expr)
    out, last = [], 0
    for m in _COMPARISON.finditer(masked):
        out.append(expr[last : m.end()] + " bool")
        last = m.end()
    out.append(expr[last:])
    return "".join(out)


def _left_of(expr: str, operators: tuple[str, ...]) -> str:
    """`expr` up to its first top-level (unparenthesised) binary operator among `operators`."""
    masked = _mask(expr)
    for m in re.finditer(rf"\b(?:{'|'.join(operators)})\b", masked):
        if masked.count("(", 0, m.start()) == masked.count(")", 0, m.start()):
            return expr[: m.start()]  # `a and b`, `a unless b`: only a's labels remain
    return expr


def _close(masked: str, open_at: int) -> int:
    """Index just after the parenthesis that closes the one at `open_at`."""
    depth = 0
    for i in range(open_at, len(masked)):
        depth += {"(": 1, ")": -1}.get(masked[i], 0)
        if depth == 0:
            return i + 1
    return len(masked)


def grouping(expr: str) -> set[str]:
    """The node/host labels kept by the outermost aggregation of `expr` (`by` only).

    Outermost means least nested in parentheses, first one wins, ignoring the right side of a
    top-level `and` / `unless` (its labels do not reach the result); an expression with no
    aggregation, or one aggregated `without` labels, promises nothing here.
    """
    masked = _mask(expr)[: len(_left_of(expr, ("and", "unless")))]
    best: tuple[int, re.Match[str]] | None = None
    for m in _AGGREGATION.finditer(masked):
        depth = masked.count("(", 0, m.start()) - masked.count(")", 0, m.start())
        if best is None or depth < best[0]:
            best = (depth, m)
    if best is None:
        return set()
    m = best[1]
    how, labels = m.group(1), m.group(2)
    if how is None:  # maybe `sum(x) by (node)`
        trailing = _TRAILING_BY.match(masked, _close(masked, m.end() - 1))
        if trailing is not None:
            how, labels = trailing.group(1), trailing.group(2)
    if how != "by" or labels is None:
        return set()
    return {x.strip() for x in labels.split(",")} & set(CHECKED_LABELS)


def check_expr(
    query: Query,
    expr: str,
    *,
    node: str,
    hosts: Collection[str],
    per_host: Collection[str],
    rule: bool = False,
) -> list[str]:
    """Problems of one expression on a live Prometheus; empty when it passes."""
    problems: list[str] = []
    for sel in selectors(expr):
        problems.extend(_check_selector(query, sel, node, hosts, per_host))
    evaluated = boolify(expr) if rule else expr
    try:
        result = query(evaluated)
    except Exception as exc:
        return [*problems, f"does not evaluate: {exc}"]
    expected = grouping(expr)
    if any(s.metric == "ALERTS" for s in selectors(expr)):
        expected.discard("host")  # only per-host alerts have a host label
    left = _left_of(expr, ("unless",))
    if not result and rule and left != expr:
        # `a unless b` is rightly empty while b covers every series of a (a leader exists for
        # every node): then a must return the series the alert would carry.
        evaluated = boolify(left)
        result = query(evaluated)
    if not result:
        return [*problems, f"returns no series: {evaluated}"]
    problems.extend(_label_problems(result, expected, node, hosts, f"result of {evaluated}"))
    return problems


def _check_selector(
    query: Query, sel: Selector, node: str, hosts: Collection[str], per_host: Collection[str]
) -> Iterator[str]:
    try:
        series = query(sel.text)
    except Exception as exc:
        yield f"selector {sel.text} does not evaluate: {exc}"
        return
    if not series:
        yield f"selector {sel.text} returns no series (no such metric is scraped)"
        return
    expected = set()
    if sel.metric not in FLEET_WIDE:
        expected.add("node")
    if sel.metric in per_host:
        expected.add("host")
    yield from _label_problems(series, expected, node, hosts, f"selector {sel.text}")


def _label_problems(
    series: list[dict[str, Any]], expected: set[str], node: str, hosts: Collection[str], what: str
) -> Iterator[str]:
    labels = [s.get("metric", {}) for s in series]
    for name in sorted(expected):
        if not all(name in lab for lab in labels):
            yield f"{what}: a series lacks the {name!r} label: {labels}"
    if "node" in expected:
        nodes = {lab.get("node") for lab in labels}
        if nodes - {node}:
            yield f"{what}: node labels {sorted(map(str, nodes))}, expected only {node!r}"
    if "host" in expected:
        missing = set(hosts) - {lab.get("host") for lab in labels}
        if missing:
            yield f"{what}: no series for hosts {sorted(missing)}"
