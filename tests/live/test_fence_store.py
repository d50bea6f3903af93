"""The network fence's Redis side, on a real redis-server: `kill --fence` travels in the kill
record (kill.lua) to every host's round trip (flush.lua), and a bypass kill carries its cause
(scope.lua)."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from killswitch.store.keys import NodeKeys
from tests.live.test_lua import HOST, chained, events, flush, published, run  # noqa: F401


@pytest.fixture
def k(node: str) -> NodeKeys:
    return NodeKeys(node)


async def kill(redis: Redis, k: NodeKeys, fence: bool) -> list[str]:
    return await run(
        redis, "kill", [k.state, k.audit, k.leader, k.audit_head],
        ["alice", "drill", "manual", 0, k.events, "kill", 0, "", 0, int(fence)],
    )  # fmt: skip


class TestKillRecordsTheFence:
    async def test_fence_notice_comes_before_the_kill_notice(
        self,
        redis: Redis,
        k: NodeKeys,
        events: PubSub,  # noqa: F811 (a fixture)
    ) -> None:
        """A kill with the fence announces `FENCE <epoch>` before `KILLED` (whose handler
        writes the state file); one without, only `KILLED`."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 1})
        await kill(redis, k, fence=True)
        await kill(redis, k, fence=False)
        assert await published(redis, events, k) == [
            (k.events, "FENCE 5"), (k.events, "KILLED 5 2"), (k.events, "KILLED 5 3"),
        ]  # fmt: skip

    async def test_fence_flag_reaches_the_round_trip(self, redis: Redis, k: NodeKeys) -> None:
        """A kill with the fence stores `fence`, audits it, and every round trip returns it."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 1})
        await kill(redis, k, fence=True)
        assert await redis.hget(k.state, "fence") == "1"
        assert (await chained(redis, k))[-1]["fence"] == "1"
        assert (await flush(redis, k))[8] == "1"

    async def test_rekill_keeps_it_and_a_new_kill_clears_it(
        self,
        redis: Redis,
        k: NodeKeys,
    ) -> None:
        """Killing a killed node without the fence keeps it; a kill at a new epoch without it
        clears it."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 1})
        await kill(redis, k, fence=True)
        await kill(redis, k, fence=False)
        assert (await flush(redis, k))[8] == "1"
        await redis.hset(k.state, "state", "ARMED")  # armed again, by hand
        await kill(redis, k, fence=False)
        assert (await flush(redis, k))[8] == ""
        assert "fence" not in (await chained(redis, k))[-1]

    async def test_scope_kill_carries_its_cause(self, redis: Redis, k: NodeKeys) -> None:
        """A host's bypass kill stores and audits cause `bypass`; an operator's has none."""
        keys = [k.scopes, k.audit, k.state, k.audit_head, k.pending_arm]
        await run(redis, "scope", keys, ["kill", "host", HOST, "agg", "bypass: uid 7", "",
                                         k.events, "", "", "", "", "", "", "bypass"])  # fmt: skip
        stored = json.loads(await redis.hget(k.scopes, f"host:{HOST}") or "{}")
        assert stored["cause"] == "bypass"
        assert (await chained(redis, k))[-1]["cause"] == "bypass"
        await run(redis, "scope", keys, ["kill", "symbol", "X", "op", "r", "", k.events])
        assert "cause" not in json.loads(await redis.hget(k.scopes, "symbol:X") or "{}")
        assert "cause" not in (await chained(redis, k))[-1]
