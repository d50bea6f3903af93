"""Alerts reach a receiver: a real Prometheus evaluates the repo's alert rules on real sidecars
and an aggregator and sends to a real Alertmanager running the repo's alertmanager.yml (its
webhook pointed here, its timers short), which delivers to the webhook receiver the compose
stack runs (`killswitch alertsink`).

One chain per module: armed, checked quiet, killed by the operator CLI; the tests read what
reached the receiver. The last test arms again and sees the resolved notice.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest

from killswitch.sim.embedded import EmbeddedRedis, free_port
from kstest import Fleet
from kstest.alertharness import (
    ALERTMANAGER_CONFIG,
    AlertmanagerHarness,
    AlertReceiver,
    shortened_config,
)
from kstest.promharness import PrometheusHarness

HOSTS = ["or-01", "or-02"]
KILLED = "KillswitchNodeKilled"


@dataclass
class Chain:
    fleet: Fleet
    prom: PrometheusHarness
    alertmanager: AlertmanagerHarness
    receiver: AlertReceiver
    node: str
    before_kill: list[dict[str, Any]] = field(default_factory=list)

    def killed_alerts(self, status: str = "firing") -> list[dict[str, Any]]:
        return [
            a for a in self.receiver.delivered(KILLED, status) if a["labels"]["node"] == self.node
        ]


def _last_evaluation(prom: PrometheusHarness, alertname: str) -> float:
    """When Prometheus last evaluated the rule, in epoch seconds (0 before its first)."""
    (rule,) = [r for g in prom.api("rules")["groups"] for r in g["rules"] if r["name"] == alertname]
    m = re.fullmatch(r"(.+T[\d:]+)(\.\d+)?(Z|[+-][\d:]+)", rule["lastEvaluation"])
    assert m, rule["lastEvaluation"]
    zone = "+00:00" if m[3] == "Z" else m[3]
    stamp = datetime.fromisoformat(m[1] + (m[2] or "")[:7] + zone)
    return max(0.0, stamp.timestamp())


@pytest.fixture(scope="module")
def chain(redis_server: EmbeddedRedis) -> Iterator[Chain]:
    """Sidecars and an aggregator scraped by Prometheus, alerting through Alertmanager to the
    receiver; the node armed, then killed once the kill alert has been seen not to fire."""
    node = f"alert{os.getpid()}"
    ports = {h: free_port() for h in HOSTS}
    agg_port = free_port()
    fleet = Fleet(redis_server.url, node, HOSTS, metrics_ports=ports)
    receiver = AlertReceiver(fleet.workdir / "alertsink.log")
    alertmanager = AlertmanagerHarness(shortened_config(receiver.url))
    targets = [f"127.0.0.1:{p}" for p in [*ports.values(), agg_port]]
    prom = PrometheusHarness(targets, alertmanagers=[alertmanager.address])
    try:
        for h in HOSTS:
            fleet.start_sidecar(h, wait=False)
        fleet.start_aggregator("--metrics-port", str(agg_port), "--tick", "0.05")
        receiver.start()
        alertmanager.start()
        prom.start()
        for h in HOSTS:
            fleet.wait_serving(h)
        fleet.wait_ready(20)
        fleet.arm()
        c = Chain(fleet, prom, alertmanager, receiver, node)
        prom.wait_for(
            lambda: (
                prom.api("alertmanagers")["activeAlertmanagers"]
                and prom.query(f'killswitch_node_killed{{node="{node}"}} == 0')
            ),
            timeout=20,
            what="Prometheus sending to Alertmanager and scraping the armed node",
        )
        # A rule evaluation after the armed scrape, so a rule firing while armed shows here.
        scraped = time.time()
        prom.wait_for(lambda: _last_evaluation(prom, KILLED) > scraped, what=f"{KILLED} evaluated")
        # (The suite's Redis runs without AOF: KillswitchRedisPersistenceOff is pending, rightly.)
        c.before_kill = c.killed_alerts() + [
            a
            for a in prom.alerts()
            if a["labels"] == {**a["labels"], "alertname": KILLED, "node": node}
        ]
        code, rep = fleet.cli_json("kill", "--reason", "alert drill", "--operator", "sre")
        assert code == 0, rep
        prom.wait_for(c.killed_alerts, timeout=30, what=f"{KILLED} at the webhook receiver")
        yield c
    finally:
        prom.stop()
        alertmanager.stop()
        receiver.stop()
        fleet.stop()
        shutil.rmtree(fleet.workdir, ignore_errors=True)


class TestKillAlertDelivery:
    """Kill a real node: the alert travels Prometheus -> Alertmanager -> webhook receiver."""

    def test_nothing_fired_for_the_armed_node(self, chain: Chain) -> None:
        """While the node was armed its kill alert was neither active nor delivered."""
        assert chain.before_kill == []

    def test_kill_alert_arrives_with_node_label_and_runbook(self, chain: Chain) -> None:
        """KillswitchNodeKilled reaches the receiver firing, labelled with the node and
        severity, its runbook_url pointing at the alert's section of the docs."""
        (alert, *_) = chain.killed_alerts()
        assert alert["labels"]["node"] == chain.node
        assert alert["labels"]["severity"] == "critical"
        assert alert["annotations"]["runbook_url"] == "docs/OBSERVABILITY.md#killswitchnodekilled"
        assert chain.node in alert["annotations"]["summary"]

    def test_routed_by_the_shipped_config(self, chain: Chain) -> None:
        """The notification came through the shipped route: its receiver, grouped by alert
        name and node."""
        (note, *_) = [
            n for n in chain.receiver.notifications() if n["groupLabels"].get("alertname") == KILLED
        ]
        assert note["receiver"] == "killswitch-webhook"
        assert note["groupLabels"] == {"alertname": KILLED, "node": chain.node}
        assert note["status"] == "firing"

    def test_alertmanager_holds_the_alert(self, chain: Chain) -> None:
        """Alertmanager's own API lists the kill alert as active for the node."""
        held = [
            a
            for a in chain.alertmanager.alerts()
            if a["labels"].get("alertname") == KILLED and a["labels"].get("node") == chain.node
        ]
        assert [a["status"]["state"] for a in held] == ["active"]

    def test_receiver_logs_each_alert(self, chain: Chain) -> None:
        """The receiver logs ALERT_RECEIVED with the alert's name, node and status."""
        events = chain.receiver.proc.logged("ALERT_RECEIVED")
        assert {"alertname": KILLED, "node": chain.node, "status": "firing"}.items() <= next(
            e for e in events if e["alertname"] == KILLED
        ).items()

    def test_receiver_refuses_what_is_not_a_notification(self, chain: Chain) -> None:
        """A body that is not JSON, or JSON without `alerts`, gets 400 and is not kept."""
        kept = len(chain.receiver.notifications())
        for body in (b"not json", b'{"x": 1}', b"[1, 2]"):
            req = urllib.request.Request(chain.receiver.url, data=body, method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            err.value.close()
            assert err.value.code == 400, body
        assert len(chain.receiver.notifications()) == kept

    def test_rearm_sends_the_resolved_notice(self, chain: Chain) -> None:
        """Arming the node again resolves the alert, and the receiver gets the resolved notice
        (send_resolved in the shipped config)."""
        assert chain.killed_alerts("resolved") == []
        chain.fleet.arm(reason="drill over")
        chain.prom.wait_for(
            lambda: chain.killed_alerts("resolved"), timeout=30, what="the resolved notice"
        )


class TestShippedConfig:
    def test_amtool_accepts_it(self) -> None:
        """`amtool check-config` accepts deploy/alertmanager/alertmanager.yml."""
        amtool = shutil.which("amtool")
        assert amtool, "amtool not found: install prometheus-alertmanager (./dev test does)"
        res = subprocess.run(
            [amtool, "check-config", str(ALERTMANAGER_CONFIG)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr


class TestAlertSinkVerb:
    def test_a_busy_port_is_one_line_and_exit_1(self) -> None:
        """`killswitch alertsink` on a port already taken says so in one line, exit 1."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            res = subprocess.run(
                [sys.executable, "-m", "killswitch", "alertsink", "--port", str(port)],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
        assert res.returncode == 1, res.stderr
        (line,) = res.stderr.strip().splitlines()
        assert line.startswith(
            f"killswitch alertsink: cannot start: cannot listen on 127.0.0.1:{port}"
        )
        assert "in use" in line
