"""The shipped ACL users (deploy/redis/users.acl) on a real Redis Cluster: sidecars, the
aggregator and the CLI work with them (redis-py's Cluster client needs CLUSTER SLOTS, COMMAND
and ASKING besides the commands themselves), the sidecar's user still cannot run Lua of its
own nor write outside its own keys, and a sidecar user from before the Cluster rules blocks
naming `cluster|slots`."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_sync
from redis.exceptions import NoPermissionError

from killswitch.store import acl
from killswitch.store.keys import NodeKeys
from killswitch.store.scripts import sidecar_library
from kstest import Fleet
from kstest.cluster import HOST, RedisClusterHarness

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "users.acl"
NODE = "smars"  # the node the shipped file is for (this cluster is the module's own)
HOSTS = ["or-01", "or-02"]
ADMIN = "ks-test-admin"  # the harness's own user: the shipped file turns `default` off
OLD = "ks-sidecar-smars-old"  # a sidecar user as generated before the Cluster rules


def rules(line: str) -> tuple[str, list[str]]:
    """An ACL file line as `ACL SETUSER` arguments: the user, then each rule (a selector in
    parentheses is one argument)."""
    _, user, rest = line.split(" ", 2)
    return user, re.findall(r"\([^)]*\)|\S+", rest)


def url(cluster: RedisClusterHarness, user: str) -> str:
    """The cluster URL with a shipped user's demo password (`demo-<user>`)."""
    return cluster.url.replace("://", f"://{user}:demo-{user}@", 1)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterHarness]:
    """Three masters (no replicas: nothing here fails over) holding the shipped ACL users, set
    on every node, and a pre-Cluster sidecar user; `default` off as the shipped file has it."""
    lines = SHIPPED.read_text().splitlines()
    or01 = next(line for line in lines if line.startswith("user ks-sidecar-smars-or-01 "))
    _, old = rules(or01.replace("+cluster|slots +command +asking ", ""))
    with RedisClusterHarness(masters=3, replicas=0) as c:
        for port in c.ports:
            with redis_sync.Redis(host=HOST, port=port, decode_responses=True) as r:
                r.execute_command("ACL", "SETUSER", ADMIN, "on", f">pw-{ADMIN}", "~*", "&*",
                                  "+@all")  # fmt: skip
                r.execute_command("ACL", "SETUSER", OLD, *(f">demo-{OLD}" if a.startswith("#")
                                  else a for a in old))  # fmt: skip
                for line in reversed(lines):  # `default off` last: this connection is it
                    user, args = rules(line)
                    r.execute_command("ACL", "SETUSER", user, *args)
        yield c


@dataclass
class ShippedFleet(Fleet):
    """Node `smars`: every sidecar as its shipped user, the CLI as `ks-operator`."""

    cluster: RedisClusterHarness | None = None

    def sidecar_args(self, host: str) -> list[str]:
        assert self.cluster is not None
        user = acl.sidecar_user(self.node, host)
        return [*super().sidecar_args(host), "--redis", url(self.cluster, user)]


def admin(port: int) -> redis_sync.Redis:
    """A plain client of one cluster node as the harness's admin user."""
    return redis_sync.Redis(host=HOST, port=port, username=ADMIN, password=f"pw-{ADMIN}",
                            decode_responses=True)  # fmt: skip


def owner(r: redis_sync.Redis, slot: int) -> int:
    """The port of the master that serves `slot` (CLUSTER SLOTS)."""
    for start, end, master, *_ in r.cluster("slots"):
        if int(start) <= slot <= int(end):
            return int(master[1])
    raise AssertionError(f"slot {slot} not served")


def sidecar_client(cluster: RedisClusterHarness, user: str) -> redis_sync.RedisCluster:
    return redis_sync.RedisCluster(
        host=HOST, port=cluster.ports[0], username=user, password=f"demo-{user}",
        decode_responses=True,
    )  # fmt: skip


class TestShippedUsersOnCluster:
    """The least-privilege users work on Redis Cluster, and stay least privilege there."""

    def test_sidecars_aggregator_and_cli(self, cluster: RedisClusterHarness) -> None:
        """Sidecars, aggregator and operator each as their shipped user: the library is
        loaded, arm exits 0, orders pass, kill exits 0 with both hosts confirmed, orders block,
        and no process met a NOPERM."""
        f = ShippedFleet(url(cluster, acl.OPERATOR_USER), NODE, HOSTS, cluster=cluster)
        try:
            f.start()
            agg = f.start_aggregator(
                "--tick", "0.05", "--redis", url(cluster, acl.aggregator_user(NODE))
            )
            f.wait_ready(30)
            assert agg.events("FUNCTIONS_LOADED")
            armed = f.arm()
            assert armed["confirmed"] == HOSTS
            for h in HOSTS:
                assert f.order(h, "a1") == f"ALLOW a1 {armed['epoch']}"
            code, rep = f.cli_json("kill", "--reason", "cluster acl")
            assert code == 0 and rep["confirmed"] == HOSTS, rep
            for h in HOSTS:
                assert f.order(h, "k1").startswith("BLOCK k1")
            code, rep = f.cli_json("status")
            assert code == 0 and rep["state"] == "KILLED", rep
            for p in (*f.sidecars.values(), agg):
                log = p.log_path.read_text()
                assert "NOPERM" not in log and "ACL_DENIED" not in log, p.name
        finally:
            f.stop()

    def test_sidecar_user_cannot_eval_load_or_write_outside(
        self, cluster: RedisClusterHarness
    ) -> None:
        """As a sidecar's shipped user on the Cluster: EVAL, FUNCTION LOAD and writes to the
        node state, another host's keys or any other key are NOPERM; its own key is not."""
        k = NodeKeys(NODE)
        c = sidecar_client(cluster, acl.sidecar_user(NODE, "or-01"))
        try:
            attempts = {
                "eval": lambda: c.eval("return 1", 1, k.state),
                "function load": lambda: c.function_load(
                    "#!lua name=mine\nredis.register_function('mine', function() end)"),
                "state": lambda: c.hset(k.state, "state", "ARMED"),
                "other host": lambda: c.hset(k.host("or-02").report, "gate", "open"),
                "elsewhere": lambda: c.set("anything", "1"),
            }  # fmt: skip
            for what, attempt in attempts.items():
                with pytest.raises(NoPermissionError):
                    attempt()
                    pytest.fail(what)
            assert c.hset(k.host("or-01").report, "probe", "1") in (0, 1)
            lib = sidecar_library()
            assert lib.name in str(c.function_list(library=lib.name))
        finally:
            c.close()

    def test_asking_follows_a_migrating_slot(self, cluster: RedisClusterHarness) -> None:
        """While the node's slot migrates, a write to a new key of the sidecar's own is sent
        to the importing master after ASKING: the shipped user may, one without `+asking` may
        not (why the rule is in the set)."""
        k = NodeKeys(NODE)
        probe = f"{k.host('or-01').prefix}asking-probe"
        user = acl.sidecar_user(NODE, "or-01")
        bare = "ks-sidecar-smars-noasking"
        line = next(x for x in SHIPPED.read_text().splitlines() if x.startswith(f"user {user} "))
        _, args = rules(line.replace(" +asking", "", 1))
        clients = {p: admin(p) for p in cluster.ports}
        try:
            for r in clients.values():
                r.execute_command("ACL", "SETUSER", bare,
                                  *(f">demo-{bare}" if a.startswith("#") else a for a in args))  # fmt: skip
            slot = int(clients[cluster.ports[0]].cluster("keyslot", probe))
            src = owner(clients[cluster.ports[0]], slot)
            dst = next(p for p in cluster.ports if p != src)
            ids = {p: clients[p].cluster("myid") for p in (src, dst)}
            clients[dst].cluster("setslot", slot, "importing", ids[src])
            clients[src].cluster("setslot", slot, "migrating", ids[dst])
            with sidecar_client(cluster, bare) as c, pytest.raises(NoPermissionError):
                c.hset(probe, "f", "1")
            with sidecar_client(cluster, user) as c:
                assert c.hset(probe, "f", "1") == 1
            pipe = clients[dst].pipeline(transaction=False)  # one connection; ASKING: one command
            pipe.execute_command("ASKING").exists(probe).execute_command("ASKING").delete(probe)
            assert pipe.execute()[1::2] == [1, 1]  # it landed on the importing master
        finally:
            for r in clients.values():
                with contextlib.suppress(redis_sync.RedisError):
                    r.cluster("setslot", slot, "stable")
                r.close()

    def test_a_pre_cluster_sidecar_user_blocks_naming_cluster_slots(
        self, cluster: RedisClusterHarness
    ) -> None:
        """A sidecar user without the Cluster rules cannot even learn the slot map: it blocks,
        and ACL_DENIED names `cluster|slots` and the rule to add (not "cluster mode is not
        enabled", what the client says)."""
        old = cluster.url.replace("://", f"://{OLD}:demo-{OLD}@", 1)
        f = Fleet(url(cluster, acl.OPERATOR_USER), NODE, ["or-03"],
                  extra_sidecar_args=("--redis", old))  # fmt: skip
        try:
            f.start()
            [denied, *_] = f.sidecars["or-03"].logged("ACL_DENIED")
            assert denied["permission"] == "cluster|slots", denied
            assert denied["rule"] == "+cluster|slots" and denied["user"] == OLD
            assert f.order("or-03", "o1").startswith("BLOCK o1")
        finally:
            f.stop()
