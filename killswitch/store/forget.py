"""The Redis side of `forget`: one audited script (`lua/forget.lua`) per step, and the fleet
registry removal that follows a completed two-person `forget --node`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from killswitch.store.keys import NODES_KEY, NodeKeys
from killswitch.store.scripts import audited_script

if TYPE_CHECKING:
    from redis.asyncio import Redis


class NodeForget:
    """Forget steps for one node. The client is passed in (decode_responses=True)."""

    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.node = node
        self.keys = NodeKeys(node)
        self._forget = redis.register_script(audited_script("forget"))

    async def host(self, host: str, actor: str, actor_kind: str, reason: str) -> str:
        """Remove an off-roster host's keys and seen-mark; the refusal ("" done, "on_roster")."""
        k, hk = self.keys, self.keys.host(host)
        res: Any = await self._forget(
            keys=[k.roster, k.hosts, k.audit, k.audit_head, hk.report, hk.flow, hk.confirm],
            args=["host", actor, actor_kind, host, reason],
        )
        return str(res[1])

    async def pending(self) -> dict[str, str]:
        """The pending signed request (msg, sig, principal, expires_ms); empty when none."""
        data: Any = await self.redis.hgetall(self.keys.pending_forget)
        return dict(data)

    async def request(
        self, principal: str, msg: str, sig: str, expires_ms: int, reason: str, key: str
    ) -> str:
        """Record the first operator's signed request (the refusal: "" or "expired")."""
        k = self.keys
        res: Any = await self._forget(
            keys=[k.pending_forget, k.audit, k.audit_head],
            args=["request", principal, msg, sig, expires_ms, reason, key],
        )
        return str(res[1])

    async def complete(self, actor: str, msg: str, reason: str, keys: str) -> str:
        """Complete the pending request and remove the node from the fleet registry (the
        refusal: "" done, "not_pending"). The registry lives in another hash slot, so it is
        changed after the audited step; a failure between the two is retried by running
        `forget --node` again (the node stays covered by `kill --fleet` until then)."""
        k = self.keys
        res: Any = await self._forget(
            keys=[k.pending_forget, k.audit, k.audit_head],
            args=["node", actor, msg, reason, keys],
        )
        if str(res[1]):
            return str(res[1])
        await self.redis.srem(NODES_KEY, self.node)
        return ""

    async def registered(self) -> bool:
        return bool(await self.redis.sismember(NODES_KEY, self.node))
