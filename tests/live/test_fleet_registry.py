"""The fleet registry read on a real redis-server: a registry of thousands of nodes is read
whole across SSCAN pages (both transports), and capped at MAX_FLEET_NODES when junk grows it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store import lean
from killswitch.store.fleet import FleetStore
from killswitch.store.keys import NODES_KEY, NodeKeys
from killswitch.store.lean import LeanURL
from killswitch.store.leanclient import LeanRedis
from killswitch.store.reads import MAX_FLEET_NODES, fleet_nodes


@pytest.fixture
async def r(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A client of a Redis of this test's own: the registry key is shared by every node."""
    client = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def register(r: Redis, names: list[str]) -> None:
    for i in range(0, len(names), 1000):
        await r.sadd(NODES_KEY, *names[i : i + 1000])


class TestFleetNodes:
    @pytest.mark.parametrize("transport", ["redis-py", "lean"])
    async def test_many_pages_are_read_whole_and_sorted(
        self, r: Redis, own_redis: EmbeddedRedis, transport: str
    ) -> None:
        """2,500 registered nodes (several SSCAN pages) all come back, sorted, each once."""
        names = [f"node-{i:05d}" for i in range(2500)]
        await register(r, names)
        client = r if transport == "redis-py" else LeanRedis(lean.parse(own_redis.url) or LeanURL())
        try:
            got = await fleet_nodes(client)  # type: ignore[arg-type]
        finally:
            if client is not r:
                await client.aclose()
        assert got == names

    async def test_junk_beyond_the_cap_is_not_read(self, r: Redis) -> None:
        """A registry grown past MAX_FLEET_NODES yields at most that many names, sorted and
        all really registered."""
        names = [f"n{i:06d}" for i in range(MAX_FLEET_NODES + 2000)]
        await register(r, names)
        got = await fleet_nodes(r)
        assert len(got) == MAX_FLEET_NODES
        assert got == sorted(set(got)) and set(got) <= set(names)


class TestFleetViews:
    async def test_views_of_no_nodes_and_of_nodes_without_a_view(self, r: Redis) -> None:
        """No nodes: no round trip and no views; a node whose aggregator never published
        reads as an empty view beside one that did."""
        fleet = FleetStore(r)
        assert await fleet.views([]) == {}
        await r.hset(NodeKeys("alpha").aggregator, mapping={"rules": "2"})
        assert await fleet.views(["alpha", "beta"]) == {"alpha": {"rules": "2"}, "beta": {}}
