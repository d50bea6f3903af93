"""The Redis side of rollouts: one read and the `rollout.lua` operations, nothing decided here.

Keys come from `keys`; every change (and every refusal) is audited by the script in the same
call. The signatures are checked by whoever reads a record (`core.proof.rollout.verify_record`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from killswitch.store.keys import NodeKeys
from killswitch.store.scripts import audited_script

if TYPE_CHECKING:
    from redis.asyncio import Redis

MAX_FIELD = 64 * 1024  # a record field longer than two proofs is junk: read as empty


@dataclass(frozen=True, slots=True)
class RolloutRead:
    record: dict[str, str]  # the rollout hash ({} none)
    pending: dict[str, str]  # a step waiting for a second operator ({} none)


class RolloutStore:
    """The rollout keys of one node; the client is passed in (decode_responses=True)."""

    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.keys = NodeKeys(node)
        self._script: Any = redis.register_script(audited_script("rollout"))

    async def read(self) -> RolloutRead:
        """The record and the pending step; a key of the wrong type (junk) reads as empty."""
        return RolloutRead(
            await self._hash(self.keys.rollout), await self._hash(self.keys.pending_rollout)
        )

    async def record(self) -> dict[str, str]:
        return await self._hash(self.keys.rollout)

    async def _hash(self, key: str) -> dict[str, str]:
        try:
            raw: Any = await self.redis.hgetall(key)
        except Exception as e:  # redis-py's ResponseError or the lean client's ReplyError
            if "WRONGTYPE" not in str(e):
                raise
            return {}
        if isinstance(raw, list):  # the lean client answers HGETALL as a flat list
            raw = {raw[i]: raw[i + 1] for i in range(0, len(raw) - 1, 2)}
        out = {}
        for name, value in raw.items():
            text = _text(value)
            out[_text(name)] = text if len(text) <= MAX_FIELD else ""
        return out

    async def audit_fields(self, limit: int = 10_000) -> list[dict[str, str]]:
        """The fields of the node's newest `limit` audit entries (junk of another type: none)."""
        try:
            entries: Any = await self.redis.xrevrange(self.keys.audit, count=limit)
        except Exception as e:  # redis-py's ResponseError or the lean client's ReplyError
            if "WRONGTYPE" not in str(e):
                raise
            return []
        return [{_text(k): _text(v) for k, v in dict(f).items()} for _, f in entries]

    async def request(
        self, *, step: str, seq: int, message: bytes, signature: str, principal: str,
        expires_ms: int, reason: str,
    ) -> str:  # fmt: skip
        """Record a first signature as the pending step; returns the refusal ("" recorded)."""
        return await self._run(
            "request", step, seq, message.decode("ascii"), signature, principal, expires_ms,
            reason,
        )  # fmt: skip

    async def step(
        self, *, step: str, seq: int, proof: str, approvers: Sequence[str], expires_ms: int,
        from_release: str, to_release: str, hosts: Sequence[str], reason: str,
    ) -> str:  # fmt: skip
        """Complete a step signed by two operators; returns the refusal ("" done)."""
        return await self._run(
            "step", step, seq, proof, ",".join(approvers), expires_ms, from_release,
            to_release, ",".join(hosts), reason,
        )  # fmt: skip

    async def complete(self, seq: int, to_release: str, actor: str) -> bool:
        """Mark promoted rollout `seq` complete (its release becomes the approved one)."""
        return not await self._run("complete", seq, to_release, actor)

    async def approve(self, release: str, actor: str) -> bool:
        """Record the release an arm approved, when none is approved and no rollout runs."""
        return not await self._run("approve", release, actor)

    async def _run(self, op: str, *args: object) -> str:
        keys = [
            self.keys.rollout, self.keys.pending_rollout, self.keys.audit, self.keys.audit_head,
        ]  # fmt: skip
        res = await self._script(keys=keys, args=[op, *(str(a) for a in args)])
        return _text(res[2])


def _text(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
