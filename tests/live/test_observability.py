"""A real Prometheus scraping real sidecar and aggregator processes: every shipped expression
returns data with its labels, "node killed" fires within five seconds of the kill being
recorded (Redis and Prometheus server time stamps, not the test's wall clock), and the scrapes pass
`promtool check metrics`.

One stack per module (four sidecars, one aggregator, one prometheus, 1 s scrape and
evaluation): it is armed, sends orders, is killed by the operator CLI, then inspected.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import redis as redis_sync

from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.store.keys import NodeKeys
from kstest import Fleet
from kstest.promcheck import PER_HOST_METRICS, boolify, check_expr, grouping, selectors
from kstest.promexprs import extract_exprs
from kstest.promharness import PrometheusHarness

HOSTS = ["or-01", "or-02", "or-03", "or-04"]

PER_HOST = PER_HOST_METRICS
# Every label a killswitch series may carry: each has a bounded set of values (hosts come
# from the roster, the rest from fixed enums or the process's own configuration).
BOUNDED_LABELS = {
    "__name__", "node", "host", "decision", "state", "window", "rule", "cause", "le",
    "component", "version", "instance", "job", "reason", "msgtype",
    "permission",  # a command killswitch sends, or key/channel/script (store.noperm)
    "writer",  # the flight recorder's writer: native or python
}  # fmt: skip


@dataclass
class Stack:
    fleet: Fleet
    prom: PrometheusHarness
    node: str
    sidecar_ports: dict[str, int]
    aggregator_port: int
    alert_elapsed: float = 0.0
    alert_labels: dict[str, str] = field(default_factory=dict)

    def q(self, expr: str) -> list[dict[str, object]]:
        return self.prom.query(expr.replace("$node", self.node))

    def check(self, expr: str, rule: bool = False) -> list[str]:
        """What the checker finds wrong with `expr` ($node: this stack's node) on this stack."""
        expr = expr.replace("$node", self.node)
        return check_expr(
            self.prom.query, expr, node=self.node, hosts=HOSTS, per_host=PER_HOST, rule=rule
        )


def _epoch_ms(rfc3339: str) -> int:
    """Prometheus' `activeAt` (nanosecond RFC 3339) as epoch milliseconds."""
    m = re.fullmatch(r"(.+T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert m, rfc3339
    base = datetime.fromisoformat(m[1] + ("+00:00" if m[3] == "Z" else m[3]))
    return int(base.timestamp()) * 1000 + int((m[2] or "0")[:3].ljust(3, "0"))


def _orders(fleet: Fleet, host: str, n: int, tag: str) -> list[str]:
    with fleet.client(host) as c:
        c.send(*(f"ORDER {tag}{i} AAPL BUY 1" for i in range(n)))
        return [c.reply() for _ in range(n)]


@pytest.fixture(scope="module")
def stack(redis_server: EmbeddedRedis) -> Iterator[Stack]:
    """Armed, traded and killed: four sidecars and an aggregator scraped every second."""
    node = f"obs{os.getpid()}"
    ports = {h: free_port() for h in HOSTS}
    agg_port = free_port()
    fleet = Fleet(redis_server.url, node, HOSTS, metrics_ports=ports)
    targets = [f"127.0.0.1:{p}" for p in [*ports.values(), agg_port]]
    prom = PrometheusHarness(targets)
    try:
        for h in HOSTS:
            fleet.start_sidecar(h, wait=False)
        # Every rule on (host_share in shadow mode) so each rule's series are exported.
        fleet.start_aggregator(
            "--max-orders", "1000", "--window", "10", "--tick", "0.05",
            "--max-host-share", "0.95", "--shadow", "host_share",
            "--metrics-port", str(agg_port), "--fleet-max-orders", "1000000",
            "--max-limit-refusals", "1000",
        )  # fmt: skip
        prom.start()  # boots while the processes do
        for h in HOSTS:
            fleet.wait_serving(h)

        fleet.wait_ready(20)
        fleet.arm()
        for i, h in enumerate(HOSTS, 1):
            assert all(r.startswith("ALLOW") for r in _orders(fleet, h, 5 * i, "a"))
        s = Stack(fleet, prom, node, ports, agg_port)
        prom.wait_for(
            lambda: (
                len(s.q('killswitch_orders_total{node="$node",decision="allowed"} > 0'))
                == len(HOSTS)
                and s.q('killswitch_node_killed{node="$node"} == 0')
            ),
            timeout=20,
            what="every sidecar and the aggregator scraped, armed, with orders",
        )

        def fired() -> list[dict[str, object]]:
            return [a for a in prom.firing("KillswitchNodeKilled") if a["labels"]["node"] == node]

        assert not fired()
        code, rep = fleet.cli_json("kill", "--reason", "observability drill", "--operator", "sre")
        assert code == 0, rep
        (alert,) = prom.wait_for(fired, timeout=30, what="KillswitchNodeKilled firing")
        with redis_sync.Redis.from_url(fleet.redis_url, decode_responses=True) as r:
            killed_ms = int(r.hget(NodeKeys(node).state, "killed_ms") or 0)
        # Both stamps are this machine's clock (Redis TIME, Prometheus' evaluation time): the
        # CLI's own start-up, which the kill's recording already follows, is not counted.
        s.alert_elapsed = (_epoch_ms(alert["activeAt"]) - killed_ms) / 1000
        s.alert_labels = dict(alert["labels"])  # type: ignore[call-overload]
        for h in HOSTS:
            assert all(r.startswith("BLOCK") for r in _orders(fleet, h, 3, "k"))
        # Range functions need two samples on each side of the kill: wait for them.
        prom.wait_for(
            lambda: (
                s.q('increase(killswitch_kill_confirm_seconds_count{node="$node"}[1m]) > 0')
                and len(
                    s.q('rate(killswitch_orders_total{node="$node",decision="blocked"}[5s]) > 0')
                )
                == len(HOSTS)
            ),
            timeout=20,
            what="the kill's confirmation time and blocked orders scraped",
        )
        yield s
    finally:
        prom.stop()
        fleet.stop()
        shutil.rmtree(fleet.workdir, ignore_errors=True)


class TestRealScrape:
    """Prometheus scrapes the real processes; what operators look at works against it."""

    def test_node_killed_alert_fires_within_five_seconds_of_the_kill(self, stack: Stack) -> None:
        """KillswitchNodeKilled became active after the kill was recorded in Redis and within the
        5 s budget of deploy/prometheus/alerts.yml, both on server time stamps."""
        assert stack.alert_labels["severity"] == "critical"
        assert 0 < stack.alert_elapsed <= 5.0, (
            f"alert active {stack.alert_elapsed:.2f}s after the kill"
        )

    def test_every_shipped_expression_returns_data_with_its_labels(self, stack: Stack) -> None:
        """Each dashboard query and alert rule returns series with node (and host) labels."""
        failures: list[str] = []
        exprs = extract_exprs(stack.node)
        assert len(exprs) > 50
        for e in exprs:
            problems = stack.check(e.expr, rule=e.origin.startswith("alerts.yml"))
            if problems:
                lines = (" ".join(p.split()) for p in problems)  # one line per problem
                failures.append(f"{e.origin}\n    " + "\n    ".join(lines))
        assert not failures, f"{len(failures)} of {len(exprs)} expressions fail:\n" + "\n".join(
            failures
        )

    def test_a_typo_in_a_query_is_reported(self, stack: Stack) -> None:
        """A misspelt metric in a panel or a rule, or a matcher on a misspelt label, is caught."""
        panel = stack.check('max(killswitch_node_kiled{node="$node"})')
        assert any("killswitch_node_kiled" in p and "no series" in p for p in panel), panel
        rule = stack.check("max by (node) (killswitch_node_killd) == 1", rule=True)
        assert any("killswitch_node_killd" in p for p in rule), rule
        label = stack.check('sum by (host) (killswitch_gate_open{node="$node",hots="or-01"})')
        assert label, "a matcher on a misspelt label selects nothing"
        assert stack.check('max(killswitch_node_killed{node="$node"})') == []

    def test_promtool_check_metrics_passes_on_real_scrapes(self, stack: Stack) -> None:
        """`promtool check metrics` finds nothing to complain about in a sidecar's or the aggregator's /metrics."""
        binary = shutil.which("promtool") or "/usr/bin/promtool"
        if not Path(binary).exists():
            pytest.fail("promtool not found: `sudo apt-get install -y prometheus` (Debian/Ubuntu)")
        for port in (stack.sidecar_ports[HOSTS[0]], stack.aggregator_port):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                body = resp.read()
            assert b"killswitch_build_info" in body
            for name in (b"process_open_fds", b"process_max_fds", b"process_resident_memory_bytes"):
                assert name in body, name
            done = subprocess.run(
                [binary, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
            )  # fmt: skip
            assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done

    def test_labels_are_bounded(self, stack: Stack) -> None:
        """Every killswitch series carries only bounded labels, and only roster hosts."""
        series = stack.q('{__name__=~"killswitch_.+",node="$node"}')
        # A sanity cap, not a budget: series grow with hosts, rules, FIX message types and
        # the fence's and recorder's gauges, never with orders, ids or symbols (the labels below).
        assert len(series) < 600, len(series)
        for s in series:
            labels: dict[str, str] = s["metric"]  # type: ignore[assignment]
            assert set(labels) <= BOUNDED_LABELS, labels
            assert labels.get("host", HOSTS[0]) in HOSTS, labels

    def test_operator_metrics_after_a_kill(self, stack: Stack) -> None:
        """Per-host confirmations, report age, time to confirm and both components' versions are exported."""
        confirmed = stack.q('killswitch_host_confirmed{node="$node"} == 1')
        assert sorted(s["metric"]["host"] for s in confirmed) == HOSTS  # type: ignore[index]
        ages = stack.q('killswitch_host_report_age_seconds{node="$node"} < 2')
        assert len(ages) == len(HOSTS)
        (p99,) = stack.q(
            'histogram_quantile(0.99, sum by (le) (increase(killswitch_kill_confirm_seconds_bucket{node="$node"}[1m])))'
        )
        assert 0 < float(p99["value"][1]) <= 5.0  # type: ignore[index]
        versions = stack.q("count by (component, version) (killswitch_build_info)")
        assert {v["metric"]["component"] for v in versions} == {"sidecar", "aggregator"}  # type: ignore[index]


class TestExpressionText:
    """The pure text handling of the checker, on the shapes the repo's queries use."""

    @pytest.mark.parametrize(
        ("expr", "expected"),
        [
            ("max(killswitch_node_killed)", ["killswitch_node_killed"]),
            (
                'rate(killswitch_orders_total{node="n",decision="allowed"}[5s])',
                ['killswitch_orders_total{node="n",decision="allowed"}'],
            ),
            ('up{job=~"killswitch.*"} == 0', ['up{job=~"killswitch.*"}']),
            (
                'sum by (node, host) (ALERTS{alertname=~"Killswitch.*"}) or vector(0)',
                ['ALERTS{alertname=~"Killswitch.*"}'],
            ),
            ("group by (node) (killswitch_host_state) unless killswitch_up_x", ["killswitch_host_state", "killswitch_up_x"]),
        ],
    )  # fmt: skip
    def test_selectors(self, expr: str, expected: list[str]) -> None:
        """Selectors keep their matchers, and names inside matchers or strings are not selectors."""
        assert [s.text for s in selectors(expr)] == expected

    @pytest.mark.parametrize(
        ("expr", "expected"),
        [
            ("max by (node) (x) == 1", "max by (node) (x) == bool 1"),
            ("a > bool 2", "a > bool 2"),
            ('up{job=~"k.*",a!="b"} >= 0.9 * b', 'up{job=~"k.*",a!="b"} >= bool 0.9 * b'),
            ("a < b and on (n) c != 0", "a < bool b and on (n) c != bool 0"),
        ],
    )
    def test_boolify(self, expr: str, expected: str) -> None:
        """Comparison filters become `bool` comparisons; matchers and existing `bool`s are left alone."""
        assert boolify(expr) == expected

    @pytest.mark.parametrize(
        ("expr", "expected"),
        [
            ("max by (node) (max by (node, host) (x) > bool 2)", {"node"}),
            ("count(max by (host) (x) > 2) or vector(0)", set()),
            ("histogram_quantile(0.99, sum by (host, le) (rate(x[5s])))", {"host"}),
            ("(max by (node, host) (s) * on (node) group_left () (max by (node) (r) - 1)) > 4 "
             "and on (node) max by (node) (o) >= 20", {"node", "host"}),
            ("sum(x) by (node, instance)", {"node"}),
            ("sum without (host) (x)", set()),
        ],
    )  # fmt: skip
    def test_grouping(self, expr: str, expected: set[str]) -> None:
        """The labels promised are those of the outermost aggregation of the left side."""
        assert grouping(expr) == expected

    def test_check_reports_missing_hosts_and_labels(self) -> None:
        """A per-host metric that lacks a host, or a result without its grouping label, is a problem."""
        answers: dict[str, list[dict[str, object]]] = {
            "killswitch_gate_open": [{"metric": {"node": "n", "host": "a"}, "value": [0, "1"]}],
            "sum by (host) (killswitch_gate_open)": [{"metric": {}, "value": [0, "1"]}],
        }

        def query(expr: str) -> list[dict[str, object]]:
            return answers.get(expr, [])

        problems = check_expr(
            query, "sum by (host) (killswitch_gate_open)", node="n", hosts=["a", "b"],
            per_host={"killswitch_gate_open"},
        )  # fmt: skip
        assert any("no series for hosts ['b']" in p for p in problems), problems
        assert any("lacks the 'host' label" in p for p in problems), problems
        assert re.search(r"returns no series", " ".join(check_expr(
            query, "killswitch_nope", node="n", hosts=[], per_host=set()
        )))  # fmt: skip

    def test_an_empty_unless_rule_is_judged_by_its_left_side(self) -> None:
        """`a unless b` may be empty (b covers a); then its left side must return labelled series."""

        def query(expr: str) -> list[dict[str, object]]:
            if "unless" in expr or "killswitch_a" not in expr:
                return []
            return [{"metric": {"node": "n"}, "value": [0, "1"]}]

        expr = "group by (node) (killswitch_a) unless on (node) killswitch_a"
        assert check_expr(query, expr, node="n", hosts=[], per_host=set(), rule=True) == []
        lost = expr.replace("group by (node) (killswitch_a)", "group by (node) (killswitch_b)")
        problems = check_expr(query, lost, node="n", hosts=[], per_host=set(), rule=True)
        assert any("killswitch_b" in p for p in problems), problems
