"""`forget`, on real processes and a real redis-server of its own (the fleet registry is
server-wide): what an off-roster host left goes, audited; a node leaves what `kill --fleet`
covers only by two operators' signatures, and never while it is alive.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import make_key
from killswitch.store.keys import NODES_KEY, NodeKeys
from kstest import Fleet

pytestmark = pytest.mark.slow

STALE = "stale-test-node"


@pytest.fixture
def live(own_redis: EmbeddedRedis, node: str) -> Iterator[Fleet]:
    """One live, armed node (one host and its aggregator) on the server of its own."""
    f = Fleet(own_redis.url, node, ["or-01"])
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(30)
        f.arm()
        yield f
    finally:
        f.stop()


def leave_stale_node(r: redis_sync.Redis) -> None:
    """What a test node that is long gone leaves: registered, a roster, an old report."""
    k = NodeKeys(STALE)
    r.sadd(NODES_KEY, STALE)
    r.sadd(k.roster, "gone-01")
    r.hset(k.host("gone-01").report, mapping={"ts_ms": "1000", "gate": "closed"})


class TestForgetHost:
    """`forget --host H` removes an off-roster host's leftovers, never a roster host's."""

    def test_forget_an_off_roster_host(self, live: Fleet, own_redis: EmbeddedRedis) -> None:
        """Leftovers of off-roster or-09 go (exit 0, audited); or-01 on the roster: exit 4."""
        r = redis_sync.Redis.from_url(own_redis.url, decode_responses=True)
        k = NodeKeys(live.node)
        try:
            r.sadd(k.hosts, "or-09")
            r.hset(k.host("or-09").report, mapping={"ts_ms": "1000", "max_epoch": "1"})
            assert "or-09" in live.cli_json("status")[1]["unlisted"]
            res = live.cli("forget", "--host", "or-09", "--reason", "decommissioned")
            assert res.returncode == 0, res
            assert not r.sismember(k.hosts, "or-09")
            assert not r.exists(k.host("or-09").report)
            assert "or-09" not in live.cli_json("status")[1]["unlisted"]
            entry = live.cli_json("audit")[1]["entries"][-1]
            assert (entry["action"], entry["host"], entry["reason"]) == (
                "forget", "or-09", "decommissioned"
            )  # fmt: skip
            res = live.cli("forget", "--host", "or-01")
            assert res.returncode == 4 and "roster" in res.stdout, res
            assert r.exists(k.host("or-01").report)
        finally:
            r.close()


class TestForgetNode:
    """`forget --node N --key K` is the arm flow; only it removes a node from `kill --fleet`."""

    def test_stale_node_stops_poisoning_kill_fleet_once_forgotten(
        self, live: Fleet, own_redis: EmbeddedRedis, tmp_path: Path
    ) -> None:
        """A stale node makes `kill --fleet` exit 3; alice (5), alice again (5), an outsider's
        key (4), bob (0) remove it; then `kill --fleet` proves the live node (0)."""
        r = redis_sync.Redis.from_url(own_redis.url, decode_responses=True)
        ops = live.ops
        outsider = str(make_key(tmp_path / "mallory", "mallory"))
        try:
            leave_stale_node(r)
            code, rep = live.cli_json("kill", "--fleet", "--reason", "drill", "--timeout", "1")
            assert code == 3, rep
            live.arm()

            def forget(key: str) -> int:
                return live.cli(
                    "forget", "--node", STALE, "--key", key, "--reason", "gone"
                ).returncode

            assert forget(ops.key("alice")) == 5
            assert forget(ops.key("alice")) == 5  # the same principal stays pending
            assert forget(outsider) == 4
            assert r.sismember(NODES_KEY, STALE)
            assert forget(ops.key("bob")) == 0
            assert not r.sismember(NODES_KEY, STALE)
            entries = live.cli_json("audit", "--node", STALE)[1]["entries"]
            done = [e for e in entries if e["action"] == "forget_node"]
            assert done and done[0]["actor"] == "alice+bob", entries
            refused = [e for e in entries if e.get("attempt") == "forget_node"]
            assert refused and refused[0]["key"].startswith("SHA256:"), entries
            code, rep = live.cli_json("kill", "--fleet", "--reason", "drill 2")
            assert code == 0, rep
        finally:
            r.close()

    def test_a_live_node_cannot_be_forgotten(self, live: Fleet, own_redis: EmbeddedRedis) -> None:
        """Two operators cannot forget a node whose host and aggregator run: exit 4 each."""
        for who in ("alice", "bob"):
            res = live.cli("forget", "--node", live.node, "--key", live.ops.key(who))
            assert res.returncode == 4 and "alive" in res.stdout, res
        r = redis_sync.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            assert r.sismember(NODES_KEY, live.node)
        finally:
            r.close()

    def test_forget_needs_host_or_key(self, live: Fleet) -> None:
        """Neither --host nor --key: exit 2, one line."""
        res = live.cli("forget")
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res
