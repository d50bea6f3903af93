"""A node's writes: kill, arm and its signed request, scoped kills, the roster, the leader
lease, audit events, the aggregator's view and its baseline. Each state change is one
audited Lua script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from killswitch.core.node.bounds import MAX_EPOCH_JUMP
from killswitch.store.keys import NODES_KEY
from killswitch.store.scripts import NodeScripts

RosterWrite = Literal["", "replaced", "created"]  # what `set_roster` found
REPLACED: RosterWrite = "replaced"
CREATED: RosterWrite = "created"


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """The outcome of a kill or arm script."""

    changed: bool
    epoch: int
    ver: int
    ts_ms: int
    prev_state: str
    refused: str = ""  # why nothing changed: "not_armed", "fenced" (lease lost) or ""


class NodeWrites:
    """Writes of one node (`Store` offers each of them)."""

    def __init__(self, scripts: NodeScripts) -> None:
        self.redis = scripts.redis
        self.node = scripts.node
        self.keys = scripts.keys
        self._scope = scripts.scope
        self._kill = scripts.kill
        self._lease = scripts.lease
        self._arm = scripts.arm
        self._arm_request = scripts.arm_request
        self._roster = scripts.roster
        self._audit_event = scripts.audit_event

    async def scope(
        self,
        *,
        op: str,
        kind: str,
        value: str,
        actor: str,
        reason: str,
        approvers: Sequence[str] = (),
        lifts: tuple[int, int, int] = (0, 0, 0),
        expires_ms: int = 0,
        proof: str = "",
        ceiling: int = 0,
        cause: str = "",
        admit: bool = False,
    ) -> tuple[bool, int, int, str]:
        """A scoped kill (`op` "kill") or its signed lift ("arm", binding the node's epoch and
        ver and the scopes version in `lifts`): (changed, scope version, now ms, refusal).
        `admit`: a host lift that is recorded even with no scoped kill of the host active (the
        admission of its new boot, `arm --host` on an ARMED node)."""
        res = await self._scope(
            keys=[
                self.keys.scopes, self.keys.audit, self.keys.state, self.keys.audit_head,
                self.keys.pending_arm,
            ],
            args=[
                op, kind, value, actor, reason, ",".join(approvers), self.keys.events, *lifts,
                expires_ms, proof, ceiling, cause, int(admit),
            ],
        )  # fmt: skip
        return bool(int(res[0])), int(res[1]), int(res[2]), str(res[3])

    async def kill(
        self,
        *,
        actor: str,
        reason: str,
        cause: str,
        floor: int,
        action: str = "kill",
        only_if_armed: bool = False,
        fence: str = "",
        net_fence: bool = False,
        actor_kind: str = "",
        key: str = "",
    ) -> ChangeResult:
        """`fence`: a leader lease token the caller must still hold, checked in the script;
        `net_fence`: the hosts raise their network kill fence (`kill --fence`); `actor_kind`
        and `key` (a signing key's fingerprint) are recorded in the audit."""
        res = await self._kill(
            keys=[self.keys.state, self.keys.audit, self.keys.leader, self.keys.audit_head],
            args=[
                actor, reason, cause, floor, self.keys.events, action, int(only_if_armed), fence,
                epoch_ceiling(floor), int(net_fence), actor_kind, key,
            ],
        )  # fmt: skip
        return _change(res)

    async def lease(self, token: str, ttl_ms: int) -> tuple[bool, str, int, str]:
        """Acquire or renew the aggregator leader lease (ttl 0: release it if held).

        Returns (held by `token` now, holder token, ms left, what was repaired: a lease key
        without TTL or of another type is deleted by the script, "" when none was).
        """
        res = await self._lease(keys=[self.keys.leader], args=[token, ttl_ms])
        return bool(int(res[0])), str(res[1]), int(res[2]), str(res[3])

    async def arm(
        self,
        *,
        actor: str,
        reason: str,
        approvers: Sequence[str],
        epoch: int,
        lifts: tuple[int, int],
        expires_ms: int,
        proof: str,
        roster: Sequence[str],
        ceiling: int = 0,
    ) -> ChangeResult:
        """Complete a signed arm (refused "moved" or "expired" when no longer current)."""
        res = await self._arm(
            keys=[
                self.keys.state, self.keys.audit, self.keys.audit_head, self.keys.roster,
                self.keys.pending_arm,
            ],
            args=[
                actor, reason, ",".join(approvers), epoch, self.keys.events, lifts[0], lifts[1],
                expires_ms, proof, ceiling, *sorted(roster),
            ],
        )  # fmt: skip
        return _change(res)

    async def arm_request(
        self,
        *,
        lifts: tuple[int, int],
        message: bytes,
        signature: str,
        principal: str,
        expires_ms: int,
        reason: str,
        ceiling: int = 0,
    ) -> str:
        """Record a first signature as the pending request; returns the refusal ("" recorded)."""
        res = await self._arm_request(
            keys=[
                self.keys.state, self.keys.pending_arm, self.keys.audit, self.keys.audit_head,
            ],
            args=[
                lifts[0], lifts[1], message.decode("ascii"), signature, principal, expires_ms,
                reason, ceiling,
            ],
        )  # fmt: skip
        return str(res[2])

    async def set_roster(self, hosts: Sequence[str], actor: str) -> RosterWrite:
        """Store the roster; what the write found: `CREATED` when no roster was stored (a
        first store, or Redis lost its data), `REPLACED` another one, "" the same one."""
        res = int(
            await self._roster(
                keys=[self.keys.roster, self.keys.audit, self.keys.audit_head],
                args=[actor, *sorted(hosts)],
            )
        )
        await self.redis.sadd(NODES_KEY, self.node)
        return CREATED if res == 2 else REPLACED if res == 1 else ""

    async def audit_event(self, action: str, /, **fields: object) -> str:
        """Append one chained audit entry (e.g. a refused attempt: who, what, why refused).

        For decisions no state-changing script records; those append in their own script.
        Returns the entry's stream ID.
        """
        args: list[str] = ["action", action]
        for name, value in fields.items():
            args += [name, str(value)]
        entry_id = await self._audit_event(keys=[self.keys.audit, self.keys.audit_head], args=args)
        return str(entry_id)

    async def publish_aggregator_view(self, view: dict[str, str]) -> None:
        mapping: dict[Any, Any] = dict(view)
        await self.redis.hset(self.keys.aggregator, mapping=mapping)

    async def save_baseline(self, data: dict[str, str]) -> None:
        """Replace the stored baseline in one MULTI: `from_dict` trusts every field it finds,
        so a stale profile bucket must never survive next to a newer layout."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.baseline)
        if data:
            mapping: dict[Any, Any] = dict(data)
            pipe.hset(self.keys.baseline, mapping=mapping)
        await pipe.execute()


def epoch_ceiling(floor: int) -> int:
    """The highest stored epoch a kill or arm believes, given the hosts' floor (0: no bound,
    when no host reports one)."""
    return floor + MAX_EPOCH_JUMP if floor > 0 else 0


def _change(res: Sequence[Any]) -> ChangeResult:
    return ChangeResult(
        changed=bool(int(res[0])),
        epoch=int(res[1]),
        ver=int(res[2]),
        ts_ms=int(res[3]),
        prev_state=str(res[4]),
        refused=str(res[5]) if len(res) > 5 else "",
    )
