"""Containment beyond blocking, on real sidecar processes: cancels pass, trading processes are
told at once and prove they are flat, `--on-kill` runs once per kill, local limits refuse.

Real processes against a real redis-server; waits are conditions with deadlines.
"""

from __future__ import annotations

import shlex
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis as SyncRedis

from killswitch.sim.embedded import free_port
from killswitch.store.keys import NodeKeys
from kstest import Fleet, GateClient, wait_until

HOSTS = ["or-01", "or-02"]
LIMITS = """
max_qty = 1000
max_notional = 100000
max_orders_per_s = 200

[symbols."AAPL"]
max_qty = 10
"""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape of a /metrics endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def gauge(port: int, name: str, **labels: str) -> float | None:
    """The value of one series on `port` (None: not exported)."""
    return scrape(port).get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def agg_port() -> int:
    """The --metrics-port of the aggregator of `fleet2`."""
    return free_port()


@pytest.fixture
def fleet2(redis_url: str, node: str, tmp_path: Path, agg_port: int) -> Iterator[Fleet]:
    """Two sidecars with local limits and an on-kill command that logs its epoch and exits 3;
    the aggregator serves metrics on `agg_port`."""
    limits = tmp_path / "limits.toml"
    limits.write_text(LIMITS)
    ran = tmp_path / "on-kill.log"
    cmd = f'echo "$KILLSWITCH_HOST $KILLSWITCH_EPOCH" >> {shlex.quote(str(ran))}; exit 3'
    f = Fleet(
        redis_url, node, HOSTS, extra_sidecar_args=("--limits", str(limits), "--on-kill", cmd)
    )
    try:
        f.start()
        f.start_aggregator(
            "--tick", "0.05", "--confirm-timeout", "1", "--metrics-port", str(agg_port)
        )  # fmt: skip
        f.wait_ready(20)
        yield f
    finally:
        f.stop()


def subscribe(f: Fleet, host: str) -> GateClient:
    c = f.client(host)
    c.sock.settimeout(10)
    return c


class TestKilledNode:
    """Must show 1: cancels pass, subscribers are told, FLAT is proof, on-kill runs once."""

    def test_cancel_subscribe_flat_on_kill(
        self, fleet2: Fleet, tmp_path: Path, agg_port: int
    ) -> None:
        """On a killed node CANCEL is allowed and ORDER blocked; subscribers get STATE KILLED,
        FLAT puts the host in `flat`, and the on-kill command ran once per kill epoch."""
        armed = fleet2.arm()
        subs = {h: subscribe(fleet2, h) for h in HOSTS}
        for h, c in subs.items():
            assert c.request("SUBSCRIBE") == f"STATE ARMED {armed['epoch']} armed", h
        code, rep = fleet2.cli_json("kill", "--reason", "runaway", "--operator", "sre")
        assert code == 0, rep
        epoch = rep["epoch"]
        for h, c in subs.items():
            assert c.reply() == f"STATE KILLED {epoch} killed", h
        with fleet2.client("or-01") as c:
            assert c.request("CANCEL c1 o-9") == f"ALLOW c1 {epoch}"
            assert c.request("ORDER o1 MSFT BUY 1 1") == f"BLOCK o1 {epoch} killed"
        assert fleet2.cli_json("status")[1]["flat"] == []
        assert subs["or-01"].request(f"FLAT {epoch}") == f"OK FLAT {epoch}"
        assert subs["or-01"].request(f"FLAT {epoch - 1}").startswith("ERR ")

        def flat() -> list[str]:
            got: list[str] = fleet2.cli_json("status")[1]["flat"]
            return got if got == ["or-01"] else []

        wait_until(flat, 10, 0.05, "or-01 listed flat")
        # or-02's subscriber never answers: after the bound the aggregator names it.
        wait_until(
            lambda: fleet2.cli_json("status")[1].get("not_flat") == ["or-02"],
            10, 0.05, "or-02 named blocked but not flat",
        )  # fmt: skip
        status = fleet2.cli_json("status")[1]
        assert status["hosts"]["or-01"]["cancels"] == 1
        for h in HOSTS:
            wait_until(
                lambda h=h: fleet2.cli_json("status")[1]["hosts"][h]["on_kill"]
                == {"epoch": epoch, "status": "exit 3"},
                10, 0.05, f"{h} on-kill result reported",
            )  # fmt: skip
        # The same proof as metrics: the dashboards and KillswitchKillNotFlat read these.
        port, n = agg_port, fleet2.node

        def exported(not_flat: float, failed: float) -> bool:
            return (
                gauge(port, "killswitch_hosts_not_flat", node=n) == not_flat
                and gauge(port, "killswitch_host_on_kill_failed", node=n, host="or-02") == failed
            )

        wait_until(lambda: exported(1, 1), 10, 0.05, "not-flat and on-kill failure exported")
        assert gauge(port, "killswitch_host_flat", node=n, host="or-01") == 1
        assert gauge(port, "killswitch_host_flat", node=n, host="or-02") == 0
        assert gauge(port, "killswitch_host_subscribers", node=n, host="or-02") == 1
        assert gauge(port, "killswitch_host_on_kill_failed", node=n, host="or-01") == 1
        assert gauge(port, "killswitch_node_limit_refusals", node=n, window="1s") is None
        # Killing the killed node again keeps the epoch: the command does not run again.
        code, again = fleet2.cli_json("kill", "--reason", "again", "--operator", "sre")
        assert code == 0 and again["epoch"] == epoch
        assert again["flat"] == ["or-01"]
        ran = sorted((tmp_path / "on-kill.log").read_text().split("\n")[:-1])
        assert ran == [f"{h} {epoch}" for h in HOSTS]
        for c in subs.values():
            c.close()
        # A new arm ends the kill: nothing is left counted as not flat or failed.
        fleet2.arm()
        wait_until(lambda: exported(0, 0), 10, 0.05, "not-flat and on-kill failure cleared")


class TestLimits:
    """Must show 3: orders over a local limit get `limit`, the node stays armed."""

    def test_static_limits_and_burst(self, fleet2: Fleet) -> None:
        """qty, notional and a symbol override refuse with `limit`; 600 at once against 200/s
        gets about 400 refusals; the node stays ARMED and the refusals are reported."""
        epoch = fleet2.arm()["epoch"]
        with fleet2.client("or-01") as c:
            assert c.request("ORDER a MSFT BUY 1001 1") == f"BLOCK a {epoch} limit"
            assert c.request("ORDER b MSFT BUY 1000 100.01") == f"BLOCK b {epoch} limit"
            assert c.request("ORDER c AAPL BUY 11 1") == f"BLOCK c {epoch} limit"
            assert c.request("ORDER d AAPL BUY 10 1") == f"ALLOW d {epoch}"
        with fleet2.client("or-02") as c:
            c.send(*(f"ORDER o{i} MSFT BUY 1 10" for i in range(600)))
            replies = [c.reply() for _ in range(600)]
        refused = sum(r.endswith(" limit") for r in replies)
        # The bucket refills while the burst is served; only a slow run lets a few more in.
        assert 350 <= refused <= 400, refused
        assert all(r.startswith(("ALLOW", "BLOCK")) for r in replies)

        def reported() -> dict[str, object]:
            rep = fleet2.cli_json("status")[1]
            return rep if rep["hosts"]["or-02"]["limited"] == refused else {}

        rep = wait_until(reported, 10, 0.05, "limit refusals reported")
        assert rep["state"] == "ARMED" and rep["epoch"] == epoch
        assert rep["hosts"]["or-01"]["limited"] == 3
        assert len(rep["hosts"]["or-02"]["limits_digest"]) == 64
        assert fleet2.ping("or-02") == f"PONG ARMED {epoch}"

    def test_bad_limits_file_is_a_usage_error(self, tmp_path: Path, redis_url: str) -> None:
        """A limits file with a bad field stops the sidecar with exit 2 and one line naming it."""
        bad = tmp_path / "bad.toml"
        bad.write_text('[symbols."ES"]\nmax_qty = -5\n')
        f = Fleet(redis_url, "n-bad", ["h1"])
        res = f.cli(
            "sidecar", "--host", "h1", "--listen", f"unix:{tmp_path}/s", "--limits", str(bad)
        )
        assert res.returncode == 2, res
        assert 'symbols."ES".max_qty' in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1


class TestLimitBurst:
    """A burst of `limit` refusals across the node is itself a reason to kill it."""

    def test_refusals_on_two_hosts_kill_the_node(
        self, redis_url: str, node: str, tmp_path: Path
    ) -> None:
        """With --max-limit-refusals 100, 300 orders at once on each of two 50/s hosts kill
        the node with cause limit_burst; the same on one host alone does not; the refusals in
        the rule's window and its threshold are exported for the dashboard and alert."""
        limits = tmp_path / "limits.toml"
        limits.write_text("max_orders_per_s = 50\n")
        f = Fleet(redis_url, node, HOSTS, extra_sidecar_args=("--limits", str(limits)))
        try:
            f.start()
            port = free_port()
            f.start_aggregator(
                "--tick", "0.05", "--max-limit-refusals", "100", "--limit-window", "30",
                "--metrics-port", str(port),
            )  # fmt: skip
            f.wait_ready(20)
            epoch = f.arm()["epoch"]
            with f.client("or-01") as c:
                c.send(*(f"ORDER a{i} MSFT BUY 1 1" for i in range(300)))
                assert sum(c.reply().endswith(" limit") for _ in range(300)) >= 200

            def reported() -> bool:
                hosts = f.cli_json("status")[1]["hosts"]
                return bool(hosts["or-01"]["limited"] >= 200)

            wait_until(reported, 10, 0.05, "or-01's refusals reported")
            assert f.cli_json("status")[1]["state"] == "ARMED"  # one host: its gate holds

            def counted() -> bool:
                got = gauge(port, "killswitch_node_limit_refusals", node=node, window="30s")
                return (got or 0) >= 200

            wait_until(counted, 10, 0.05, "the rule's window count exported")
            assert gauge(port, "killswitch_node_limit_refusals_max", node=node, window="30s") == 100
            with f.client("or-02") as c:
                c.send(*(f"ORDER b{i} MSFT BUY 1 1" for i in range(300)))
                assert sum(c.reply().endswith(" limit") for _ in range(300)) >= 200
            rep = wait_until(
                lambda: (r := f.cli_json("status")[1])["state"] == "KILLED" and r,
                10, 0.05, "node killed by the limit-burst rule",
            )  # fmt: skip
            assert rep["cause"] == "limit_burst" and rep["epoch"] > epoch
        finally:
            f.stop()


HOSTS3 = ["or-01", "or-02", "or-03"]


@pytest.fixture
def fleet3(redis_url: str, node: str) -> Iterator[Fleet]:
    """Three sidecars and an aggregator, armed."""
    f = Fleet(redis_url, node, HOSTS3)
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(20)
        f.arm()
        yield f
    finally:
        f.stop()


def order(f: Fleet, host: str, oid: str, symbol: str = "MSFT") -> str:
    with f.client(host) as c:
        return c.request(f"ORDER {oid} {symbol} BUY 1 1")


class TestScopedKills:
    """Must show 2: scoped kills block exactly their scope, with proof, lifted only by a
    scoped arm."""

    def test_kill_host(self, fleet3: Fleet) -> None:
        """kill --host blocks that host only, proven by it; a plain arm does not lift it,
        one approver is refused, two approvers with --host lift it."""
        epoch = fleet3.cli_json("status")[1]["epoch"]
        code, rep = fleet3.cli_json("kill", "--host", "or-02", "--reason", "haunted")
        assert code == 0, rep
        assert rep["confirmed"] == ["or-02"] and rep["missing"] == []
        assert rep["state"] == "ARMED" and rep["epoch"] == epoch
        assert [(s["kind"], s["value"]) for s in rep["scopes"]] == [("host", "or-02")]
        assert order(fleet3, "or-02", "x") == f"BLOCK x {epoch} killed"
        assert fleet3.ping("or-02") == f"PONG KILLED {epoch}"
        for h in ("or-01", "or-03"):
            assert order(fleet3, h, "y") == f"ALLOW y {epoch}"
        plain = fleet3.cli_json("arm", "--key", fleet3.ops.key("alice"))
        assert plain[0] == 0 and plain[1]["changed"] is False
        assert order(fleet3, "or-02", "z") == f"BLOCK z {epoch} killed"
        one = fleet3.cli_json("arm", "--host", "or-02", "--key", fleet3.ops.key("alice"))
        assert one[0] == 5 and one[1]["pending_arm"]["scope"] == "host:or-02", one
        again = fleet3.cli_json("arm", "--host", "or-02", "--key", fleet3.ops.key("alice"))
        assert again[0] == 5, again  # the same operator twice is still one signature
        assert order(fleet3, "or-02", "z2") == f"BLOCK z2 {epoch} killed"
        code, lifted = fleet3.cli_json("arm", "--host", "or-02", "--key", fleet3.ops.key("bob"))
        assert code == 0, lifted
        assert lifted["approvers"] == ["alice", "bob"]
        assert lifted["confirmed"] == ["or-02"] and lifted["scopes"] == []
        assert order(fleet3, "or-02", "w") == f"ALLOW w {epoch}"
        actions = [e["action"] for e in fleet3.cli_json("audit")[1]["entries"]]
        assert "kill_host" in actions and "arm_host" in actions

    def test_kill_symbol(self, fleet3: Fleet) -> None:
        """kill --symbol blocks that symbol on every host, proven by every roster host; other
        symbols trade; arm --symbol lifts it."""
        epoch = fleet3.cli_json("status")[1]["epoch"]
        code, rep = fleet3.cli_json("kill", "--symbol", "AAPL", "--reason", "bad feed")
        assert code == 0, rep
        assert rep["confirmed"] == HOSTS3 and rep["missing"] == []
        for h in HOSTS3:
            assert order(fleet3, h, "a", "AAPL") == f"BLOCK a {epoch} killed"
            assert order(fleet3, h, "m", "MSFT") == f"ALLOW m {epoch}"
        lifted = fleet3.arm("--symbol", "AAPL", reason="feed fixed")
        assert lifted["confirmed"] == HOSTS3, lifted
        for h in HOSTS3:
            assert order(fleet3, h, "b", "AAPL") == f"ALLOW b {epoch}"

    def test_stray_lift_keeps_the_host_killed(self, fleet3: Fleet) -> None:
        """A raw HDEL of a host scope plus HINCRBY of `_ver` (no signed lift) leaves that host
        sidecar process blocking, and `status` (human and JSON) names the scope it keeps."""
        epoch = fleet3.cli_json("status")[1]["epoch"]
        assert fleet3.cli_json("kill", "--host", "or-02", "--reason", "haunted")[0] == 0
        scopes = NodeKeys(fleet3.node).scopes
        with (
            SyncRedis.from_url(fleet3.redis_url, decode_responses=True) as r,
            r.pipeline(transaction=True) as p,
        ):
            p.hdel(scopes, "host:or-02").hincrby(scopes, "_ver", 1)
            p.execute()

        def kept() -> list[str]:
            return list(fleet3.cli_json("status")[1]["hosts"]["or-02"]["scope_kept"])

        wait_until(lambda: kept() == ["host:or-02"], timeout=10, what="or-02 keeps its scope")
        assert fleet3.cli_json("status")[1]["scopes"] == []
        assert "still enforces host:or-02: no signed lift" in fleet3.cli("status").stdout
        assert order(fleet3, "or-02", "x") == f"BLOCK x {epoch} killed"
        assert order(fleet3, "or-01", "y") == f"ALLOW y {epoch}"

    def test_unknown_host_is_refused(self, fleet3: Fleet) -> None:
        """kill --host of a host that is not on the roster is a usage error and changes nothing."""
        res = fleet3.cli("kill", "--host", "or-99", "--reason", "typo")
        assert res.returncode == 2 and "not on the node's roster" in res.stderr, res
        assert fleet3.cli_json("status")[1]["scopes"] == []
