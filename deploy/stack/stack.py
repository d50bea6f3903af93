"""`./dev stack up|test|check|down|build`: the compose stack on a real container engine.

`test` drives the running stack from outside, as an operator would: the killswitch CLI in a
container of the stack, order lines from a router container, Prometheus and the alert
webhook receiver over their published ports. It never reaches into a process, and it always tears the stack down. The engine, the
images and up/down are in stackengine.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stackengine import (
    NOT_TESTED,
    PORTS,
    Engine,
    StackError,
    build,
    down,
    free_port,
    pick_engine,
    run,
    say,
    up,
)

from killswitch.sim.fleet import wait_until

NODE = "smars"
HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
MAX_ORDERS = 2400  # the aggregator's --max-orders in compose.yaml
# The operator's Redis user from deploy/redis/users.acl (a demo password): the aggregator's
# container has no Redis URL of its own for the CLI, and no default user exists.
OPERATOR_REDIS = "redis://ks-operator:demo-ks-operator@redis:6379/0"


# -- the operator's view -------------------------------------------------------------------


@dataclass
class Operator:
    """Runs the killswitch CLI and gate clients inside the stack's containers."""

    eng: Engine

    def cli(self, *args: str, expect: Sequence[int] = (0,)) -> dict[str, Any]:
        argv = [
            "exec", self.eng.container("aggregator"), "killswitch", *args, "--json",
            "--redis", OPERATOR_REDIS,
        ]  # fmt: skip
        p = run([self.eng.binary, *argv], env=self.eng.env, check=False, quiet=True)
        if p.returncode not in expect:
            raise StackError(
                f"killswitch {' '.join(args)} exited {p.returncode}: {p.stdout}{p.stderr}"
            )
        report: dict[str, Any] = json.loads(p.stdout)
        report["_exit"] = p.returncode
        return report

    def status(self) -> dict[str, Any]:
        return self.cli("status")

    def arm(self, reason: str) -> dict[str, Any]:
        """The one place that knows how an operator arms: adapt it when arm changes (signed
        two-person arms: two calls with two operators' keys, the first exiting 5)."""
        first = self.cli("arm", "--key", "/etc/killswitch/alice", "--reason", reason, expect=(5,))
        assert first["pending_arm"]["by"] == "alice", first
        return self.cli("arm", "--key", "/etc/killswitch/bob")

    def gate(self, host: str, script: str) -> list[str]:
        """Runs `script` (lines for the gate) from host's router container against its sidecar;
        returns the sidecar's replies."""
        code = (
            "import sys\nfrom killswitch.sim.fleet import GateClient\n"
            f"c = GateClient('tcp:sidecar-{host}:7000', timeout=20)\n"
            "lines = sys.stdin.read().splitlines()\nc.send(*lines)\n"
            "print('\\n'.join(c.reply() for _ in lines))\n"
        )
        p = subprocess.run(
            [self.eng.binary, "exec", "-i", self.eng.container(f"router-{host}"), "python", "-c", code],
            input=script, text=True, capture_output=True, env=self.eng.env, check=False,
        )  # fmt: skip
        if p.returncode != 0:
            raise StackError(f"gate client in router-{host} failed: {p.stderr}")
        return p.stdout.splitlines()


def get_json(eng: Engine, port_var: str, path: str) -> Any:
    """GET a published port of the stack (PROMETHEUS_PORT, ...) on 127.0.0.1."""
    url = f"http://127.0.0.1:{eng.env[port_var]}{path}"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def prom(eng: Engine, path: str) -> Any:
    return get_json(eng, "PROMETHEUS_PORT", path)["data"]


def delivered(eng: Engine, alertname: str, node: str) -> list[dict[str, Any]]:
    """The firing `alertname` alerts for `node` that reached the stack's webhook receiver."""
    notes = get_json(eng, "ALERT_RECEIVER_PORT", "/alerts")["notifications"]
    return [
        a
        for n in notes
        for a in n["alerts"]
        if a["status"] == "firing"
        and a["labels"].get("alertname") == alertname
        and a["labels"].get("node") == node
    ]


def all_confirmed(rep: dict[str, Any], state: str) -> bool:
    return rep["state"] == state and sorted(rep["confirmed"]) == HOSTS and not rep["missing"]


@dataclass
class Checks:
    passed: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)

    def ok(self, what: str) -> None:
        self.passed.append(what)
        say(f"ok ({time.monotonic() - self.t0:5.1f} s) {what}")


def drive(eng: Engine) -> Checks:
    op = Operator(eng)
    c = Checks()

    def wait(cond: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
        return wait_until(cond, timeout=timeout, interval=0.5, what=what)

    def alert_firing() -> bool:
        alerts = prom(eng, "/api/v1/alerts")["alerts"]
        return any(
            a["labels"]["alertname"] == "KillswitchNodeKilled"
            and a["labels"].get("node") == NODE
            and a["state"] == "firing"
            for a in alerts
        )

    # 1. Up in whatever order the engine started things: every sidecar reports to Redis.
    def every_host_alive() -> bool:
        hosts = op.status()["hosts"]
        return sorted(h for h, s in hosts.items() if s["alive"]) == HOSTS

    wait(every_host_alive, "all eight sidecars alive and reporting", timeout=180)
    c.ok("stack up in the engine's start order: 8/8 sidecars alive and reporting")

    if op.status()["state"] == "ARMED":  # `check` on a stack that was left armed
        op.cli("kill", "--reason", "stack check: start from a closed node")

    # 2. Arm, then orders flow through the gates: from the loadgen routers and from a client
    # of our own in router-or-01's container.
    rep = op.arm("stack test: open")
    assert rep["state"] == "ARMED", rep
    epoch = rep["epoch"]
    c.ok(f"armed: epoch {epoch}")
    replies = op.gate("or-01", "PING\nORDER st-1 KCG BUY 100\n")
    assert replies == [f"PONG ARMED {epoch}", f"ALLOW st-1 {epoch}"], replies
    c.ok(f"router-or-01 container -> sidecar-or-01 gate: {replies}")
    wait(
        lambda: all(s["orders_per_s"] > 0 for s in op.status()["hosts"].values()),
        "every router's orders counted",
    )
    c.ok("every loadgen router's orders pass its sidecar and are counted")

    # 3. Prometheus scrapes every target and has the alert rules loaded.
    def targets_up() -> list[str]:
        active = prom(eng, "/api/v1/targets")["activeTargets"]
        up_ = [t["labels"]["instance"] for t in active if t["health"] == "up"]
        return up_ if len(active) == len(up_) == len(HOSTS) + 2 else []

    up_targets = wait(targets_up, "Prometheus scraping every target")
    c.ok(f"Prometheus scrapes {len(up_targets)}/{len(HOSTS) + 2} targets, all up")
    rules = [r["name"] for g in prom(eng, "/api/v1/rules")["groups"] for r in g["rules"]]
    assert "KillswitchNodeKilled" in rules, rules
    c.ok(f"alert rules loaded: {len(rules)} rules, KillswitchNodeKilled among them")
    wait(lambda: not alert_firing(), "KillswitchNodeKilled not firing while armed", timeout=60)
    c.ok("KillswitchNodeKilled is not firing while the node is armed")
    wait(
        lambda: prom(eng, "/api/v1/alertmanagers")["activeAlertmanagers"],
        "Prometheus connected to Alertmanager",
    )
    # On a fresh stack none; `check` on a used stack may find earlier kills' alerts.
    seen = len(delivered(eng, "KillswitchNodeKilled", NODE))
    c.ok(f"Prometheus sends to Alertmanager; kill alerts at the webhook receiver so far: {seen}")

    # 4. An automatic trip: a flood through sidecar-or-08 (Knight's eighth server) pushes the
    # node over --max-orders; every host confirms the kill.
    flood = MAX_ORDERS + 600
    replies = op.gate("or-08", "".join(f"ORDER flood-{i} KCG BUY 100\n" for i in range(flood)))
    assert len(replies) == flood, len(replies)
    tripped = wait(
        lambda: (r := op.status()) and all_confirmed(r, "KILLED") and r, "the trip confirmed 8/8"
    )
    assert tripped["cause"] not in ("", "operator") and tripped["epoch"] > epoch, tripped
    c.ok(f"automatic trip (cause {tripped['cause']}), confirmed {len(tripped['confirmed'])}/8")
    assert op.gate("or-01", "ORDER st-2 KCG BUY 100\n") == [f"BLOCK st-2 {tripped['epoch']} killed"]
    c.ok("after the trip an order through sidecar-or-01 is blocked (killed)")

    wait(alert_firing, "KillswitchNodeKilled firing", timeout=60)
    c.ok("Prometheus alert KillswitchNodeKilled is firing")
    *_, alert = wait(
        lambda: (got := delivered(eng, "KillswitchNodeKilled", NODE))[seen:] and got,
        "KillswitchNodeKilled delivered by Alertmanager to the webhook receiver",
        timeout=60,
    )
    assert alert["labels"]["severity"] == "critical", alert
    assert alert["annotations"]["runbook_url"].endswith("#killswitchnodekilled"), alert
    c.ok(
        f"Alertmanager delivered KillswitchNodeKilled{{node={NODE}}} to the webhook receiver"
        f" (runbook_url {alert['annotations']['runbook_url']})"
    )

    # 5. Re-arm, then a manual kill, proven 8/8 by the kill command itself.
    rep = op.arm("stack test: re-arm after the trip")
    assert rep["state"] == "ARMED", rep
    c.ok(f"re-armed: epoch {rep['epoch']}")
    killed = op.cli(
        "kill", "--reason", "stack test: manual kill", "--operator", "alice", "--timeout", "15"
    )
    assert killed["_exit"] == 0 and all_confirmed(killed, "KILLED"), killed
    c.ok(
        f"manual kill: exit 0, confirmed {len(killed['confirmed'])}/8 in {killed['elapsed_s']:.2f} s"
    )

    # 6. A sidecar container killed and restarted comes back closed: STALE until its first
    # round trip to Redis (at the epoch its state volume kept), then KILLED; it confirms again.
    name = eng.container("sidecar-or-03")
    eng("kill", name)
    eng("start", name, check=False)  # the restart policy may already be bringing it back
    pongs: list[str] = []

    def answers_killed() -> bool:
        pongs.append(op.gate("or-03", "PING\n")[0])
        return pongs[-1] == f"PONG KILLED {killed['epoch']}"

    wait(answers_killed, "sidecar-or-03 answering KILLED again")
    assert not [p for p in pongs if p.split()[1] not in ("STALE", "KILLED")], pongs
    pong = " -> ".join(dict.fromkeys(pongs))
    assert op.gate("or-03", "ORDER st-3 KCG BUY 100\n") == [f"BLOCK st-3 {killed['epoch']} killed"]
    wait(lambda: all_confirmed(op.status(), "KILLED"), "8/8 confirmed after the restart")
    kept = eng("exec", name, "ls", "-A", "/var/lib/killswitch", quiet=True).split()
    assert kept, "the sidecar's state volume is empty"
    c.ok(f"sidecar-or-03 killed and restarted: {pong}, blocks, 8/8 confirmed again")
    c.ok(f"its state volume kept {kept} (the highest epoch it has seen) across the restart")
    return c


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="./dev stack", description=__doc__.split("\n\n")[0])
    p.add_argument("verb", choices=("build", "up", "test", "check", "down"))
    p.add_argument("--keep", action="store_true", help="test: leave the stack up afterwards")
    args = p.parse_args(argv)
    started = time.monotonic()
    try:
        eng = pick_engine()
        say(f"engine: {eng.binary} ({' '.join(eng.compose)})")
        if args.verb == "down":
            down(eng)
            return 0
        if args.verb == "check":  # the checks of `test` against a stack that is already up
            for var, port in PORTS.items():
                eng.env.setdefault(var, port)
            say(f"PASSED {len(drive(eng).passed)} checks")
            return 0
        images = build(eng)
        if args.verb == "build":
            return 0
        online = "REDIS_IMAGE" not in images
        if args.verb == "up":
            up(eng, images, with_grafana=online)
            return 0
        for var in PORTS:
            eng.env[var] = str(free_port())
        down(eng)  # a stack left over from an interrupted run would skew every check
        try:
            up(eng, images, with_grafana=False)
            checks = drive(eng)
        finally:
            if not args.keep:
                down(eng)
        say(f"PASSED {len(checks.passed)} checks in {time.monotonic() - started:.0f} s")
        say("not run: " + ", ".join(NOT_TESTED) + " (stays in compose.yaml for users)")
        return 0
    except (StackError, AssertionError, TimeoutError) as e:
        say(f"FAILED: {type(e).__name__}: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
