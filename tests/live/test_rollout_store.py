"""rollout.lua on a real redis-server: each step only from the state it was signed for, every
change and refusal audited, completion and approval only when they apply."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from killswitch.store.keys import NodeKeys
from killswitch.store.rollout import RolloutStore

A, B = "a" * 64, "b" * 64
FAR = 2**50


async def step(rs: RolloutStore, name: str, seq: int, expires: int = FAR) -> str:
    return await rs.step(
        step=name, seq=seq, proof=f"proof-{name}", approvers=["alice", "bob"], expires_ms=expires,
        from_release=A, to_release=B, hosts=["or-01"], reason="r",
    )  # fmt: skip


async def actions(redis: Redis, node: str) -> list[tuple[str, str]]:
    entries: Any = await redis.xrange(NodeKeys(node).audit)
    return [(f["action"], f.get("refused", "")) for _, f in entries]


class TestRolloutScript:
    """Steps, refusals, completion and approval, each audited in the same call."""

    async def test_steps_in_order_and_refusals_audited(self, redis: Redis, node: str) -> None:
        """begin 1, promote 1, complete 1 apply in order; a step from another state, or past
        its expiry, is refused ('moved', 'expired') and the refusal is audited."""
        rs = RolloutStore(redis, node)
        assert await step(rs, "promote", 1) == "moved"  # nothing to promote
        assert await step(rs, "begin", 2) == "moved"  # the first rollout is number 1
        assert await step(rs, "begin", 1, expires=1) == "expired"
        assert await step(rs, "begin", 1) == ""
        assert await step(rs, "begin", 2) == "moved"  # one rollout at a time
        assert not await rs.complete(1, B, "agg")  # a canary does not complete
        assert await step(rs, "promote", 1) == ""
        assert not await rs.complete(1, A, "agg")  # only to the promoted release
        assert await rs.complete(1, B, "agg")
        rec = await rs.record()
        assert (rec["phase"], rec["approved"], rec["begin"]) == ("complete", B, "proof-begin")
        assert await step(rs, "abort", 1) == "moved"  # finished
        assert await step(rs, "begin", 2) == ""
        assert await step(rs, "abort", 2) == ""
        assert (await rs.record())["phase"] == "aborted"
        assert await actions(redis, node) == [
            ("refused", "moved"), ("refused", "moved"), ("refused", "expired"),
            ("rollout_begin", ""), ("refused", "moved"), ("rollout_promote", ""),
            ("rollout_complete", ""), ("refused", "moved"), ("rollout_begin", ""),
            ("rollout_abort", ""),
        ]  # fmt: skip

    async def test_pending_request_expires_and_is_replaced(self, redis: Redis, node: str) -> None:
        """A first signature is recorded pending with a TTL; a completed step removes it."""
        rs = RolloutStore(redis, node)
        why = await rs.request(step="begin", seq=1, message=b"{}", signature="s",
                               principal="alice", expires_ms=FAR, reason="r")  # fmt: skip
        assert why == ""
        pending = (await rs.read()).pending
        assert pending["principal"] == "alice"
        assert await redis.pttl(NodeKeys(node).pending_rollout) > 0
        assert await step(rs, "begin", 1) == ""
        assert (await rs.read()).pending == {}
        why = await rs.request(step="begin", seq=1, message=b"{}", signature="s",
                               principal="alice", expires_ms=FAR, reason="r")  # fmt: skip
        assert why == "moved"

    async def test_approve_only_once_and_never_during_a_rollout(
        self, redis: Redis, node: str
    ) -> None:
        """An arm approves the roster's release when none is approved; not again, and not
        while a rollout is in progress."""
        rs = RolloutStore(redis, node)
        assert not await rs.approve("", "arm")
        assert await rs.approve(A, "alice+bob")
        assert not await rs.approve(B, "alice+bob")
        await redis.delete(NodeKeys(node).rollout)
        assert await step(rs, "begin", 1) == ""
        assert not await rs.approve(B, "alice+bob")
        assert ("release_approved", "") in await actions(redis, node)

    async def test_junk_of_another_type_never_stops_a_step(self, redis: Redis, node: str) -> None:
        """A rollout key of another type (written by hand) is replaced, and reads as empty."""
        keys = NodeKeys(node)
        await redis.set(keys.rollout, "junk")
        rs = RolloutStore(redis, node)
        await redis.set(keys.pending_rollout, "junk")
        assert (await rs.read()).record == {}
        assert await step(rs, "begin", 1) == ""
        assert (await rs.record())["phase"] == "canary"
