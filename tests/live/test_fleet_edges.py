"""Fleet verbs at their edges on a real redis-server of the test's own: an empty registry, a
node the operator's Redis user may not touch (a real ACL), junk names in the registry, and
what `status --fleet` prints.

The registry is one key shared by every node of a Redis, so each test has its own server (a
fleet kill on the suite's shared server would kill other tests' nodes).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from killswitch.cli.main import main
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_UNCONFIRMED, Outcome
from killswitch.ops.fleet import _each, fleet_lines, kill_fleet, status_fleet
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.keys import NODES_KEY, NodeKeys
from killswitch.store.store import Store


@pytest.fixture
async def r(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def broken_fleet(r: Redis, own_redis: EmbeddedRedis) -> Redis:
    """`good`, `broken` and a junk name registered; a client of a Redis ACL user that may
    touch the registry and `good`'s keys only (so every command on `broken` gets NOPERM)."""
    await r.sadd(NODES_KEY, "good", "broken", "Not A Node!")
    await r.acl_setuser(
        "fleetop", enabled=True, passwords=["+pw"], keys=["ks:nodes", "ks:{good}:*"],
        channels=["*"], commands=["+@all"],
    )  # fmt: skip
    return Redis.from_url(limited_url(own_redis), decode_responses=True)


def limited_url(own_redis: EmbeddedRedis) -> str:
    return own_redis.url.replace("redis://", "redis://fleetop:pw@", 1)


class TestEmptyFleet:
    """A Redis with no registered node."""

    async def test_kill_fleet_kills_nothing_and_says_so(self, r: Redis) -> None:
        """kill --fleet on an empty registry: exit 1, nothing killed, no node in the report."""
        out = await kill_fleet(r, reason="drill", operator="ops", timeout=0.2)
        assert out.code == EXIT_FAILED
        assert out.message == "no node is registered in this Redis: nothing was killed"
        assert out.report["nodes"] == {} and out.report["failed_nodes"] == []

    async def test_status_fleet_line_says_no_node(self, r: Redis) -> None:
        """status --fleet on an empty registry: exit 0 and one line saying no node is registered."""
        out = await status_fleet(r)
        assert out.code == EXIT_OK
        assert fleet_lines(out.report) == ["no node is registered in this Redis"]


class TestBrokenNode:
    """One node that cannot be read does not stop the others, and is named."""

    async def test_kill_fleet_names_the_node_it_could_not_kill(
        self, r: Redis, own_redis: EmbeddedRedis
    ) -> None:
        """The good node is killed, the broken one is reported failed (exit 1), junk ignored."""
        limited = await broken_fleet(r, own_redis)
        try:
            out = await kill_fleet(limited, reason="drill", operator="ops", timeout=0.2)
        finally:
            await limited.aclose()
        assert out.code == EXIT_FAILED
        assert out.message == "NOT KILLED: could not kill node(s) broken"
        rep = out.report
        assert rep["failed_nodes"] == ["broken"]
        assert rep["invalid_node_names"] == ["Not A Node!"]
        assert rep["nodes"]["broken"]["error"].startswith("NoPermissionError: ")
        assert await r.hget(NodeKeys("good").state, "state") == "KILLED"
        assert not await r.exists(NodeKeys("broken").state)

    async def test_status_fleet_lines_put_the_error_first(
        self, r: Redis, own_redis: EmbeddedRedis
    ) -> None:
        """The broken node's ERROR line comes before the healthy node's; junk names are listed."""
        limited = await broken_fleet(r, own_redis)
        try:
            out = await status_fleet(limited)
        finally:
            await limited.aclose()
        assert out.code == EXIT_FAILED and out.message == "could not read node(s) broken"
        lines = fleet_lines(out.report)
        assert lines[0].startswith("broken") and re.search(r" ERROR +NoPermissionError: ", lines[0])
        assert lines[1].startswith("good") and "UNARMED" in lines[1]
        assert lines[2] == "ignored invalid node names in the registry: ['Not A Node!']"

    async def test_only_a_roster_less_node_is_unconfirmed_with_no_roster(self, r: Redis) -> None:
        """A fleet whose one node has no roster: exit 3 naming it `(no roster)`."""
        await r.sadd(NODES_KEY, "lone")
        out = await kill_fleet(r, reason="drill", operator="ops", timeout=0.2)
        assert out.code == EXIT_UNCONFIRMED
        assert out.message.endswith("lone/(no roster)")

    async def test_a_cancelled_node_action_is_not_reported_as_a_failed_node(self, r: Redis) -> None:
        """A node's action cancelled (not an Exception) propagates instead of becoming a row."""
        await r.sadd(NODES_KEY, "a", "b")

        async def cancelled(store: Store) -> Outcome:
            if store.node == "b":
                raise asyncio.CancelledError
            return Outcome(EXIT_OK, {"node": store.node})

        with pytest.raises(asyncio.CancelledError):
            await _each(r, cancelled)


class TestFleetCli:
    """`killswitch status --fleet` and `kill --fleet`, in process, printing what ops decided."""

    def test_status_fleet_text_and_kill_fleet_json(
        self, own_redis: EmbeddedRedis, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Text status shows the ERROR line; kill --fleet --json exits 1 with failed_nodes."""

        async def setup() -> None:
            client = Redis.from_url(own_redis.url, decode_responses=True)
            try:
                await (await broken_fleet(client, own_redis)).aclose()
            finally:
                await client.aclose()

        asyncio.run(setup())
        url = limited_url(own_redis)
        assert main(["status", "--fleet", "--redis", url]) == EXIT_FAILED
        cap = capsys.readouterr()
        assert cap.out.splitlines()[0].startswith("broken") and "ERROR" in cap.out
        assert "could not read node(s) broken" in cap.err
        code = main(["kill", "--fleet", "--reason", "drill", "--timeout", "0.2", "--json",
                     "--redis", url])  # fmt: skip
        assert code == EXIT_FAILED
        cap = capsys.readouterr()
        assert json.loads(cap.out)["failed_nodes"] == ["broken"]
        assert "NOT KILLED: could not kill node(s) broken" in cap.err
