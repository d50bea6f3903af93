"""A fleet of nodes on a real Redis Cluster, and the fleet verbs (`kill/status --fleet`).

The cluster is real: six `redis-server` processes in cluster mode (three masters, each with
a replica) formed by `redis-cli --cluster create`, started by the suite on free ports. The
sidecars, aggregators and the CLI are real processes. Waits are conditions with deadlines.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
import redis as redis_sync

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.keys import NODES_KEY, NodeKeys
from killswitch.store.redisconn import ClusterURL, parse_cluster_url
from killswitch.store.scripts import sidecar_library
from kstest import Fleet, GateClient, wait_until
from kstest.cluster import RedisClusterHarness
from kstest.hammer import Hammer, no_allow_after_first_block

HOSTS = ["or-01", "or-02"]


class TestClusterURL:
    """`redis+cluster://` URLs parse to start-up nodes, or fail with a message that says why."""

    @pytest.mark.parametrize(
        ("url", "want"),
        [
            ("redis+cluster://a:7000,b:7001/", ClusterURL((("a", 7000), ("b", 7001)))),
            ("redis+cluster://a:7000", ClusterURL((("a", 7000),))),
            ("redis+cluster://a/", ClusterURL((("a", 6379),))),
            ("rediss+cluster://a:1/", ClusterURL((("a", 1),), tls=True)),
            ("redis+cluster://u:p%40ss@a:1/", ClusterURL((("a", 1),), False, "u", "p@ss")),
            ("redis+cluster://[::1]:7000/0", ClusterURL((("::1", 7000),))),
        ],
    )
    def test_good_urls(self, url: str, want: ClusterURL) -> None:
        """Hosts, ports (default 6379), TLS and ACL credentials are read from the URL."""
        assert parse_cluster_url(url) == want

    @pytest.mark.parametrize(
        ("url", "says"),
        [
            ("redis+cluster:///", "no cluster node"),
            ("redis+cluster://a:1,/", "empty"),
            ("redis+cluster://a:99999/", "bad cluster port"),
            ("redis+cluster://a:1/3", "only database 0"),
            ("redis+cluster://a:1/?x=1", "query strings"),
            ("redis://a:1/", "not a redis\\+cluster"),
        ],
    )
    def test_bad_urls(self, url: str, says: str) -> None:
        """A malformed URL raises ValueError naming the problem."""
        with pytest.raises(ValueError, match=says):
            parse_cluster_url(url)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterHarness]:
    """Three masters with a replica each, for this module's tests."""
    with RedisClusterHarness(masters=3, replicas=1) as c:
        yield c


def spread_nodes(cluster: RedisClusterHarness, prefix: str, count: int) -> list[str]:
    """`count` node names whose keys live on `count` different masters (where possible)."""
    chosen: list[str] = []
    masters: set[int] = set()
    i = 0
    while len(chosen) < count:
        name = f"{prefix}{i}"
        owner = cluster.master_of(NodeKeys(name).state)
        if owner not in masters or i > 200:
            chosen.append(name)
            masters.add(owner)
        i += 1
    return chosen


@pytest.fixture
def three(cluster: RedisClusterHarness, node: str) -> Iterator[list[Fleet]]:
    """Three nodes of two hosts each, every node on its own cluster master, all running."""
    names = spread_nodes(cluster, f"{node}c", 3)
    fleets = [Fleet(cluster.url, n, HOSTS) for n in names]
    try:
        for f in fleets:
            f.start()
            f.start_aggregator("--tick", "0.05")
        for f in fleets:
            f.wait_ready(30)
        yield fleets
    finally:
        for f in fleets:
            f.stop()
        forget(cluster, names)


def forget(cluster: RedisClusterHarness, names: list[str]) -> None:
    """Take finished nodes out of the fleet registry, so later fleet kills need not prove them."""
    live = [p for p, s in cluster.servers.items() if s.proc is not None]
    client = redis_sync.RedisCluster(host="127.0.0.1", port=live[0])
    try:
        client.srem(NODES_KEY, *names)
    finally:
        client.close()


class TestNodesOnACluster:
    """Each node's keys share one slot; every node arms, trades, is killed and proven there."""

    def test_nodes_sit_on_different_masters(
        self, cluster: RedisClusterHarness, three: list[Fleet]
    ) -> None:
        """The three nodes under test are served by three different masters."""
        owners = {cluster.master_of(NodeKeys(f.node).state) for f in three}
        assert len(owners) == 3

    def test_every_node_arms_trades_and_is_killed_with_proof(self, three: list[Fleet]) -> None:
        """Arm, ALLOW, kill proven 2/2, then BLOCK killed, on every node of the cluster."""
        for f in three:
            rep = f.arm()
            assert rep["state"] == "ARMED" and rep["confirmed"] == HOSTS
            for h in HOSTS:
                assert f.order(h, "a").startswith("ALLOW a ")
            code, rep = f.cli_json("kill", "--reason", "cluster test")
            assert code == 0, rep
            assert rep["confirmed"] == HOSTS and rep["missing"] == []
            for h in HOSTS:
                assert f.order(h, "k") == f"BLOCK k {rep['epoch']} killed"

    def test_kill_fleet_proves_every_host_of_every_node(self, three: list[Fleet]) -> None:
        """`kill --fleet` kills all three nodes and lists every node/host pair as confirmed."""
        for f in three:
            f.arm()
        code, rep = three[0].cli_json("kill", "--fleet", "--reason", "firm-wide stop")
        assert code == 0, rep
        pairs = {f"{f.node}/{h}" for f in three for h in HOSTS}
        assert pairs <= set(rep["confirmed"])
        assert not [p for p in rep["missing"] if p.split("/")[0] in {f.node for f in three}]
        for f in three:
            assert rep["nodes"][f.node]["state"] == "KILLED"
            for h in HOSTS:
                assert f.order(h, "x").endswith(" killed")
        code, st = three[0].cli_json("status", "--fleet")
        assert code == 0
        for f in three:
            assert st["nodes"][f.node]["state"] == "KILLED"
            assert st["nodes"][f.node]["confirmed"] == HOSTS


def _live(cluster: RedisClusterHarness) -> list[int]:
    return [p for p, s in cluster.servers.items() if s.proc is not None and s.proc.poll() is None]


def _holds(port: int, library: str) -> bool:
    with redis_sync.Redis(port=port, socket_timeout=2, decode_responses=True) as c:
        return bool(c.function_list(library=library))


class TestFunctionsOnACluster:
    """The sidecars' Functions library is on every primary of a Redis Cluster."""

    def test_one_aggregator_loads_it_on_every_primary(
        self, cluster: RedisClusterHarness, node: str
    ) -> None:
        """With the library flushed everywhere, one node's aggregator loads it on every
        primary (and so, by replication, every replica); its sidecars then arm and trade."""
        lib = sidecar_library()
        for port in _live(cluster):
            with redis_sync.Redis(port=port, socket_timeout=2, decode_responses=True) as c:
                if c.info("replication")["role"] == "master":
                    c.function_flush()
        wait_until(lambda: not any(_holds(p, lib.name) for p in _live(cluster)), 10)
        (name,) = spread_nodes(cluster, f"{node}l", 1)
        f = Fleet(cluster.url, name, HOSTS)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            wait_until(lambda: all(_holds(p, lib.name) for p in _live(cluster)), 10,
                       what="the library on every server")  # fmt: skip
            armed = f.arm()
            assert f.order("or-01", "l1") == f"ALLOW l1 {armed['epoch']}"
        finally:
            f.stop()
            forget(cluster, [name])


class TestMasterFailover:
    """A master killed while armed: its node's hosts fail closed, then recover after re-arm."""

    def test_master_sigkill_blocks_then_rearm_after_failover(
        self, cluster: RedisClusterHarness, node: str
    ) -> None:
        """Hosts of the node whose master died go STALE (blocked); after failover a re-arm opens them."""
        (name,) = spread_nodes(cluster, f"{node}f", 1)
        f = Fleet(cluster.url, name, HOSTS)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            f.arm()
            f.wait_all("PONG ARMED")
            master = cluster.master_of(NodeKeys(name).state)
            cluster.kill(master)
            # Fail closed: every host of the node blocks by itself once its lease runs out.
            f.wait_all("PONG STALE", timeout=15)
            for h in HOSTS:
                assert f.order(h, "s").endswith(" stale")
            cluster.wait_for_failover(master, NodeKeys(name).state, timeout=30)
            f.wait_ready(30)
            code, rep = f.cli_json("arm", "--key", f.ops.key("alice"), "--reason", "failover")
            if code == 5:  # the failover lost the signed arm: a second operator signs anew
                code, rep = f.cli_json("arm", "--key", f.ops.key("bob"))
                assert code == 0, rep
            else:  # the promoted replica kept the signed arm: nothing to sign again
                assert code == 0 and rep["changed"] is False, rep
            f.wait_all("PONG ARMED", timeout=15)
            for h in HOSTS:
                assert f.order(h, "r").startswith("ALLOW r ")
        finally:
            f.stop()
            forget(cluster, [name])

    def test_kill_then_master_failover_never_allows_again(
        self, cluster: RedisClusterHarness, node: str
    ) -> None:
        """Orders stream while the node is killed and its master then dies: from each host's
        first `BLOCK killed` on, no reply is ALLOW, through the failover, until a signed re-arm."""
        # An earlier test's failover may have left a master without a replica: use another.
        name = next(
            n
            for n in (f"{node}k{i}" for i in range(1000))
            if cluster.has_replica(cluster.master_of(NodeKeys(n).state))
        )
        f = Fleet(cluster.url, name, HOSTS)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            f.arm()
            f.wait_all("PONG ARMED")
            with Hammer(f, HOSTS) as hammer:
                code, rep = f.cli_json("kill", "--reason", "failover drill")
                assert code == 0 and rep["missing"] == [], rep
                confirmed_at = time.monotonic()
                killed = rep["epoch"]
                master = cluster.master_of(NodeKeys(name).state)
                cluster.kill(master)
                cluster.wait_for_failover(master, NodeKeys(name).state, timeout=30)
                f.wait_ready(30)
                hammer.wait_for_more(time.monotonic())
            for h in HOSTS:
                after = hammer.sent_after(h, confirmed_at)
                assert after and all(r.startswith("BLOCK") for r in after), h
                no_allow_after_first_block(hammer.replies[h], "killed")
                # Whether the promoted replica kept the kill or not, the host stays closed.
                assert f.ping(h) in (f"PONG KILLED {killed}", f"PONG STALE {killed}")
            rearmed = f.arm(reason="after failover")["epoch"]
            assert rearmed > killed
            f.wait_all(f"PONG ARMED {rearmed}", timeout=15)
        finally:
            f.stop()
            forget(cluster, [name])


class TestFleetVerbsOnOneRedis:
    """The fleet verbs work the same on a single Redis, and junk in the registry cannot stop them."""

    def test_kill_fleet_names_the_host_that_did_not_confirm(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """With one host frozen, `kill --fleet` exits 3 naming that node/host pair; the rest confirm."""
        a = Fleet(own_redis.url, f"{node}a", HOSTS)
        b = Fleet(own_redis.url, f"{node}b", HOSTS)
        try:
            for f in (a, b):
                f.start()
                f.start_aggregator("--tick", "0.05")
            for f in (a, b):
                f.wait_ready(30)
                f.arm()
            b.sidecars["or-02"].send(signal.SIGSTOP)
            try:
                code, rep = a.cli_json("kill", "--fleet", "--reason", "stop all", "--timeout", "1")
            finally:
                b.sidecars["or-02"].send(signal.SIGCONT)
            assert code == 3, rep
            assert rep["missing"] == [f"{b.node}/or-02"]
            assert {f"{a.node}/or-01", f"{a.node}/or-02", f"{b.node}/or-01"} <= set(
                rep["confirmed"]
            )
            res = a.cli("kill", "--fleet", "--reason", "again", "--timeout", "1")
            assert f"{b.node}/or-02" not in res.stderr
        finally:
            a.stop()
            b.stop()

    def test_status_and_watch_fleet_show_one_line_per_node(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """`status --fleet` and `watch --fleet --once` print each node with its state, the
        node with a missing host first."""
        a = Fleet(own_redis.url, f"{node}a", HOSTS)
        b = Fleet(own_redis.url, f"{node}b", HOSTS)
        try:
            for f in (a, b):
                f.start()
                f.start_aggregator("--tick", "0.05")
            for f in (a, b):
                f.wait_ready(30)
            a.arm()
            b.sidecars["or-01"].stop()
            code, _ = b.cli_json("kill", "--reason", "r", "--timeout", "0.5")
            assert code == 3
            for args in (("status", "--fleet"), ("watch", "--fleet", "--once")):
                res = a.cli(*args)
                # status exits 3: b's or-01 is missing (CONTRACT: status exit codes)
                assert res.returncode == (3 if args[0] == "status" else 0), res
                lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
                assert lines[0].startswith(b.node) and "KILLED" in lines[0], lines
                assert "MISSING: or-01" in lines[0]
                assert lines[1].startswith(a.node) and "ARMED" in lines[1], lines
        finally:
            a.stop()
            b.stop()

    def test_junk_in_the_registry_is_reported_not_fatal(self, redis_url: str, node: str) -> None:
        """An invalid node name in the registry is listed as such; `status --fleet` still exits 0."""
        client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        junk = f"BAD name {node}\x1b[31m"
        client.sadd(NODES_KEY, junk)
        try:
            f = Fleet(redis_url, node, HOSTS)
            code, rep = f.cli_json("status", "--fleet")
            assert code in (0, 3), rep  # other tests' nodes share this Redis
            assert junk in rep["invalid_node_names"]
            text = f.cli("status", "--fleet")
            assert text.returncode in (0, 3) and "Traceback" not in text.stderr
        finally:
            client.srem(NODES_KEY, junk)
            client.close()

    def test_a_frozen_host_blocks_for_the_fleet_kill_it_missed(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """A host frozen through `kill --fleet` blocks for that kill as soon as it runs again."""
        f = Fleet(own_redis.url, node, HOSTS)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            f.arm()
            f.sidecars["or-02"].send(signal.SIGSTOP)
            try:
                code, _ = f.cli_json("kill", "--fleet", "--reason", "r", "--timeout", "0.5")
                assert code == 3
            finally:
                f.sidecars["or-02"].send(signal.SIGCONT)

            def blocked() -> bool:
                with GateClient(f.address("or-02")) as c:
                    return c.order("z").endswith(" killed")

            wait_until(blocked, 10, what="or-02 blocks for the kill it missed")
        finally:
            f.stop()
