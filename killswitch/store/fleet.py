"""The Redis side of the fleet: the fleet leader lease and every node's aggregator view.

Fleet-level keys live outside any node's hash slot and are read only by the fleet leader
(once per tick: the lease and one pipelined HGETALL per node) and by fleet verbs, so on
Redis Cluster no slot carries per-order or per-host load for the fleet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from killswitch.store.keys import FLEET_LEADER_KEY, NodeKeys
from killswitch.store.scripts import plain_script


class FleetStore:
    """Fleet-wide reads and the fleet leader lease. The client is passed in."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lease: AsyncScript = redis.register_script(plain_script("lease"))

    async def lease(self, token: str, ttl_ms: int) -> tuple[bool, str, int, str]:
        """Acquire or renew the fleet leader lease (ttl 0: release it); see `lease.lua`.
        The last item says what the script repaired (a lease without TTL), "" if nothing."""
        res: Any = await self._lease(keys=[FLEET_LEADER_KEY], args=[token, ttl_ms])
        return bool(int(res[0])), str(res[1] or ""), int(res[2]), str(res[3])

    async def views(self, nodes: Sequence[str]) -> dict[str, dict[str, str]]:
        """Each node's published aggregator view (empty when it has none)."""
        if not nodes:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for n in nodes:
            pipe.hgetall(NodeKeys(n).aggregator)
        res: list[Any] = await pipe.execute()
        return {n: dict(v) for n, v in zip(nodes, res, strict=True)}
