"""Alert rules, Prometheus config and dashboard queries, checked by the real Prometheus tools.

promtool checks and unit-tests the rules; a real prometheus server (kstest.promharness)
scrapes a fake exporter, fires an alert, and evaluates every expression the repo ships.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from kstest import promcheck
from kstest.promexprs import (
    ALERT_RULES,
    DEFAULT_VARIABLES,
    REPO_ROOT,
    PromExpr,
    extract_exprs,
    substitute,
)
from kstest.promharness import PrometheusHarness, PromQueryError

PROM_DIR = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD_FILES = sorted((REPO_ROOT / "dashboards").glob("*.json"))

KNOWN_METRICS = promcheck.KNOWN_METRICS
# What containment beyond blocking exports (docs/CONTAINMENT.md): each must be on a panel.
CONTAINMENT_METRICS = frozenset(
    {
        "killswitch_cancels_total",
        "killswitch_blocked_orders_total",
        "killswitch_host_flat",
        "killswitch_host_subscribers",
        "killswitch_hosts_not_flat",
        "killswitch_host_on_kill_failed",
        "killswitch_host_scoped_kill",
        "killswitch_killed_symbols",
        "killswitch_node_limit_refusals",
        "killswitch_node_limit_refusals_max",
        "killswitch_release_split_hosts",
        "killswitch_attest_unreadable",
        "killswitch_arm_unproven",
        "killswitch_gate_arm_unproven",
        "killswitch_arm_refusals_total",
    }
)
# The containment metrics that signal danger, and the alert that watches each.
CONTAINMENT_ALERTS = {
    "KillswitchKillNotFlat": "killswitch_hosts_not_flat",
    "KillswitchOnKillFailed": "killswitch_host_on_kill_failed",
    "KillswitchScopedKillActive": "killswitch_host_scoped_kill",
    "KillswitchLimitBurstNear": "killswitch_node_limit_refusals",
    "KillswitchReleaseSplit": "killswitch_release_split_hosts",
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(binary).exists():
        pytest.fail("promtool not found: `sudo apt-get install -y prometheus` (Debian/Ubuntu)")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, check=False, cwd=REPO_ROOT
    )


def alert_names() -> list[str]:
    doc = yaml.safe_load(ALERT_RULES.read_text())
    return [r["alert"] for g in doc["groups"] for r in g["rules"] if "alert" in r]


class TestPromtool:
    def test_rules_pass_promtool_check(self) -> None:
        """`promtool check rules` accepts alerts.yml."""
        done = promtool("check", "rules", str(ALERT_RULES))
        assert done.returncode == 0, done.stdout + done.stderr

    def test_rule_unit_tests_pass(self) -> None:
        """`promtool test rules` passes every case in alerts_test.yml."""
        done = promtool("test", "rules", str(PROM_DIR / "alerts_test.yml"))
        assert done.returncode == 0, done.stdout + done.stderr

    def test_every_alert_has_a_unit_test(self) -> None:
        """Every alert in alerts.yml is evaluated by at least one promtool test case."""
        tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())["tests"]
        tested = {c["alertname"] for t in tests for c in t.get("alert_rule_test", [])}
        firing = {
            c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c["exp_alerts"]
        }
        silent = {
            c["alertname"]
            for t in tests
            for c in t.get("alert_rule_test", [])
            if not c["exp_alerts"]
        }
        assert set(alert_names()) == tested == firing == silent

    def test_compose_prometheus_config_is_valid(self) -> None:
        """`promtool check config` accepts the compose stack's prometheus.yml and its rules."""
        done = promtool("check", "config", str(PROM_DIR / "prometheus.yml"))
        assert done.returncode == 0, done.stdout + done.stderr

    def test_every_alert_says_what_to_do(self) -> None:
        """Each alert carries a severity, a summary and a description that says what to do."""
        doc = yaml.safe_load(ALERT_RULES.read_text())
        for rule in (r for g in doc["groups"] for r in g["rules"]):
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            assert "What to do" in rule["annotations"]["description"], rule["alert"]

    def test_rule_timing_meets_the_five_second_budget(self) -> None:
        """Node-killed rules are evaluated every 1s with no `for`, and the stack scrapes every 1s."""
        doc = yaml.safe_load(ALERT_RULES.read_text())
        (group,) = [
            g
            for g in doc["groups"]
            if any(r.get("alert") == "KillswitchNodeKilled" for r in g["rules"])
        ]
        rule = next(r for r in group["rules"] if r.get("alert") == "KillswitchNodeKilled")
        assert group["interval"] == "1s"
        assert rule.get("for", "0s") == "0s"
        config = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
        assert config["global"]["scrape_interval"] == "1s"
        assert config["global"]["evaluation_interval"] == "1s"


class TestExtractExprs:
    def test_finds_every_panel_query(self) -> None:
        """Every dashboard panel with targets yields its expressions, more than ten in all."""
        exprs = extract_exprs()
        for path in DASHBOARD_FILES:
            board = json.loads(path.read_text())
            for panel in board["panels"]:
                for target in panel.get("targets") or []:
                    origin = f"{path.name} panel {panel['id']} {panel['title']!r} refId {target['refId']}"
                    assert any(e.origin == origin for e in exprs), origin
        from_dashboards = [e for e in exprs if " panel " in e.origin]
        assert len(from_dashboards) > 10

    def test_finds_every_alert_rule(self) -> None:
        """Every alert rule's expression is listed, named after the alert."""
        origins = {e.origin for e in extract_exprs()}
        for name in alert_names():
            assert f"alerts.yml {name}" in origins

    def test_substitutes_template_variables(self) -> None:
        """`$node` becomes the given node and no template variable is left in any expression."""
        exprs = extract_exprs("or-fleet-7")
        assert any('node="or-fleet-7"' in e.expr for e in exprs)
        for e in exprs:
            assert "$" not in e.expr, e
        assert any("[5s]" in e.expr for e in exprs)  # $__rate_interval

    def test_includes_query_variables(self) -> None:
        """The PromQL inside `query_result(...)` / `label_values(...)` variables is listed too."""
        origins = [e.origin for e in extract_exprs()]
        assert "node-overview.json variable $node" in origins
        assert "node-overview.json variable $window" in origins

    def test_unknown_variable_raises(self) -> None:
        """A template variable with no value is an error, not a silently broken query."""
        with pytest.raises(KeyError, match=r"\$nope"):
            substitute('up{a="$nope"}', DEFAULT_VARIABLES)
        assert substitute("rate(x[${__rate_interval}])", DEFAULT_VARIABLES) == "rate(x[5s])"

    def test_every_containment_metric_is_on_a_panel(self) -> None:
        """Each metric of containment (cancels, flat proof, on-kill, scoped kills, limit
        refusals, trust and release) is on a dashboard panel, and every one of them is a
        metric the services promise."""
        assert CONTAINMENT_METRICS <= KNOWN_METRICS
        on_panels = set()
        for e in extract_exprs():
            if " panel " in e.origin:
                on_panels |= set(re.findall(r"\bkillswitch_\w+", e.expr))
        assert on_panels >= CONTAINMENT_METRICS, sorted(CONTAINMENT_METRICS - on_panels)

    def test_containment_dangers_have_alerts(self) -> None:
        """Hosts not flat after a kill, a failed on-kill command, an active scoped kill, a
        limit burst building and a release split each have an alert on their metric."""
        doc = yaml.safe_load(ALERT_RULES.read_text())
        exprs = {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}
        for alert, metric in CONTAINMENT_ALERTS.items():
            assert metric in exprs[alert], (alert, metric)

    def test_every_alert_has_a_runbook_section(self) -> None:
        """Each alert's runbook link points at a section of docs/OBSERVABILITY.md."""
        doc = yaml.safe_load(ALERT_RULES.read_text())
        headings = re.findall(r"^#+ (.+)$", (REPO_ROOT / "docs" / "OBSERVABILITY.md").read_text(),
                              re.MULTILINE)  # fmt: skip
        anchors = {h.strip().lower() for h in headings}
        for rule in (r for g in doc["groups"] for r in g["rules"]):
            path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
            assert path == "docs/OBSERVABILITY.md" and anchor == rule["alert"].lower(), rule
            assert anchor in anchors, f"no section '### {rule['alert']}'"

    def test_only_known_metrics_are_used(self) -> None:
        """Dashboards and rules reference only metric names the services promise to export."""
        used = set()
        for e in extract_exprs():
            used |= set(re.findall(r"\bkillswitch_\w+", e.expr))
        assert used <= KNOWN_METRICS, sorted(used - KNOWN_METRICS)


# --- a live prometheus ---------------------------------------------------------------------


class FakeExporter:
    """A prometheus_client HTTP server on loopback exposing a few killswitch_* metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.killed = Gauge("killswitch_node_killed", "", ["node"], registry=r)
        self.roster = Gauge("killswitch_roster_hosts", "", ["node"], registry=r)
        self.confirmed = Gauge("killswitch_confirmed_hosts", "", ["node"], registry=r)
        self.leader = Gauge("killswitch_aggregator_leader", "", ["node", "instance"], registry=r)
        self.state = Gauge("killswitch_host_state", "", ["node", "host", "state"], registry=r)
        self.orders = Counter("killswitch_orders", "", ["node", "host", "decision"], registry=r)
        for node in ("smars", "drill"):
            self.killed.labels(node).set(0)
            self.roster.labels(node).set(8)
            self.confirmed.labels(node).set(8)
            self.leader.labels(node, "agg-a").set(1)
            for i in range(1, 9):
                host = f"or-{i:02d}"
                for state in ("ARMED", "KILLED", "UNARMED", "STALE"):
                    self.state.labels(node, host, state).set(1 if state == "ARMED" else 0)
                self.orders.labels(node, host, "allowed").inc(10 * i)
        self.killed.labels("smars").set(1)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=r)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def exporter() -> Iterator[FakeExporter]:
    fake = FakeExporter()
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture(scope="module")
def prom(exporter: FakeExporter) -> Iterator[PrometheusHarness]:
    with PrometheusHarness([exporter.target]) as harness:
        yield harness


class TestLivePrometheus:
    def test_harness_scrapes_the_target(self, prom: PrometheusHarness) -> None:
        """The harness's Prometheus scrapes the fake exporter and answers `killswitch_node_killed`."""
        result = prom.wait_query('killswitch_node_killed{node="smars"}')
        assert result[0]["metric"]["node"] == "smars"
        assert float(result[0]["value"][1]) == 1.0

    def test_loads_the_repo_alert_rules(self, prom: PrometheusHarness) -> None:
        """Every alert of alerts.yml is loaded by the running server."""
        groups = prom.api("rules")["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
        assert loaded == set(alert_names())

    def test_node_killed_alert_fires_within_five_seconds(
        self, prom: PrometheusHarness, exporter: FakeExporter
    ) -> None:
        """With 1s scrapes and evaluations, KillswitchNodeKilled fires < 5s after the gauge flips."""

        def drill_killed() -> list[dict[str, object]]:
            return [
                a for a in prom.firing("KillswitchNodeKilled") if a["labels"]["node"] == "drill"
            ]

        prom.wait_for(
            lambda: prom.value('max(killswitch_node_killed{node="drill"})') == 0.0,
            what="drill scraped as not killed",
        )
        assert not drill_killed()
        flipped = time.monotonic()
        exporter.killed.labels("drill").set(1)
        try:
            prom.wait_for(drill_killed, timeout=10, what="KillswitchNodeKilled for drill")
            elapsed = time.monotonic() - flipped
        finally:
            exporter.killed.labels("drill").set(0)
        assert elapsed < 5.0, f"alert took {elapsed:.2f}s"

    def test_every_shipped_expression_evaluates(self, prom: PrometheusHarness) -> None:
        """Every dashboard and alert expression parses and evaluates on a real Prometheus."""
        prom.wait_query("killswitch_node_killed")
        failures: list[str] = []
        exprs: list[PromExpr] = extract_exprs("smars")
        for e in exprs:
            try:
                prom.query(e.expr)
            except PromQueryError as exc:
                failures.append(f"{e.origin}: {exc}")
        assert not failures, "\n".join(failures)

    def test_query_error_names_the_reason(self, prom: PrometheusHarness) -> None:
        """A bad expression raises PromQueryError carrying Prometheus' parse error."""
        with pytest.raises(PromQueryError, match="parse error"):
            prom.query("sum by (node (killswitch_node_killed)")
