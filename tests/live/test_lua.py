"""Every branch of every Lua script, run directly on the real redis-server: one test per branch.

Each test names the branch it takes, sets the keys up, calls the script with explicit KEYS and
ARGV (as `Store` does), and asserts the reply, the keys written and what was not written. A
mutant of a branch condition (`./dev mutants` runs a catalogue of them) fails at least one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from killswitch.core.proof.auditchain import parse_head, verify
from killswitch.store import scripts
from killswitch.store.keys import NodeKeys
from kstest.mutants import check_catalogue

HOST = "or-01"
END = "end-of-test-marker"


AUDITED = {"kill", "arm", "arm_request", "roster", "scope", "audit_event"}


def source(name: str) -> str:
    """The script as `Store` loads it, with the prelude when it audits (looked up at call
    time, so a Lua mutant applies here too)."""
    return scripts.audited_script(name) if name in AUDITED else scripts.plain_script(name)


async def run(redis: Redis, name: str, keys: Sequence[str], args: Sequence[Any]) -> list[str]:
    """EVAL the shipped script; every reply element as a string."""
    res: Any = await redis.eval(source(name), len(keys), *keys, *args)  # type: ignore[misc]
    return [str(x) for x in res] if isinstance(res, list) else [str(res)]


@pytest.fixture
def k(node: str) -> NodeKeys:
    return NodeKeys(node)


@pytest.fixture
async def events(redis: Redis, k: NodeKeys) -> AsyncIterator[PubSub]:
    """A subscriber on the node's events and confirms channels, subscribed before the test acts."""
    ps = redis.pubsub()
    await ps.subscribe(k.events, k.confirms)
    for _ in range(2):
        await ps.get_message(timeout=5)
    try:
        yield ps
    finally:
        await ps.aclose()  # type: ignore[no-untyped-call]


async def published(redis: Redis, ps: PubSub, k: NodeKeys) -> list[tuple[str, str]]:
    """Every message published so far: an end marker published after them arrives last."""
    # Redis delivers messages to a subscriber in the order the server executed the PUBLISHes.
    await redis.publish(k.events, END)
    out: list[tuple[str, str]] = []
    while True:
        msg = await ps.get_message(ignore_subscribe_messages=True, timeout=5)
        assert msg is not None, "the end marker never arrived"
        if (msg["channel"], msg["data"]) == (k.events, END):
            return out
        out.append((str(msg["channel"]), str(msg["data"])))


async def audit(redis: Redis, k: NodeKeys) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(k.audit)
    return [fields for _id, fields in entries]


async def chained(redis: Redis, k: NodeKeys) -> list[dict[str, str]]:
    """The audit entries, after checking they form one intact chain ending at the head."""
    entries: Any = await redis.xrange(k.audit)
    head: Any = await redis.hgetall(k.audit_head)
    verdict = verify(entries, parse_head(head))
    assert verdict.ok, verdict
    if entries:
        assert head["id"] == entries[-1][0]
    return [fields for _id, fields in entries]


async def server_ms(redis: Redis) -> int:
    secs, micros = await redis.time()
    return int(secs) * 1000 + int(micros) // 1000


# -- kill.lua ---------------------------------------------------------------------------------


async def kill(
    redis: Redis,
    k: NodeKeys,
    *,
    floor: int = 0,
    only_if_armed: bool = False,
    fence: str = "",
    action: str = "kill",
    ceiling: int = 0,
) -> list[str]:
    return await run(
        redis,
        "kill",
        [k.state, k.audit, k.leader, k.audit_head],
        ["alice", "drill", "manual", floor, k.events, action, int(only_if_armed), fence, ceiling],
    )


class TestKillLua:
    """kill.lua: the fence, the armed-only refusal, and how the new epoch is chosen."""

    async def test_fenced_when_the_lease_is_held_by_another(
        self, redis: Redis, k: NodeKeys, events: PubSub
    ) -> None:
        """A caller fencing on a lease token it no longer holds is refused `fenced`: the state is
        untouched, nothing is announced, and the refusal is the one (chained) audit entry."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 2})
        await redis.set(k.leader, "agg-b:token")
        before = await server_ms(redis)
        res = await kill(redis, k, fence="agg-a:token", only_if_armed=True)
        assert res[0] == "0"
        assert res[1:3] == ["4", "2"]
        assert int(res[3]) >= before
        assert res[4:] == ["ARMED", "fenced"]
        assert await redis.hgetall(k.state) == {"state": "ARMED", "epoch": "4", "ver": "2"}
        (entry,) = await chained(redis, k)
        assert (entry["action"], entry["attempt"], entry["refused"]) == (
            "refused",
            "kill",
            "fenced",
        )
        assert (entry["actor"], entry["epoch"], entry["prev_state"]) == ("alice", "4", "ARMED")
        assert await published(redis, events, k) == []

    async def test_fenced_when_the_lease_expired(self, redis: Redis, k: NodeKeys) -> None:
        """A fence token with no lease key at all (it expired) is refused `fenced`, not trusted."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 2})
        res = await kill(redis, k, fence="agg-a:token")
        assert (res[0], res[5]) == ("0", "fenced")
        assert await redis.hget(k.state, "state") == "ARMED"

    async def test_fence_checked_before_the_armed_only_refusal(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A stale leader is told `fenced` even when the node is not armed (the fence comes first)."""
        await redis.set(k.leader, "agg-b:token")
        res = await kill(redis, k, fence="agg-a:token", only_if_armed=True)
        assert res[5] == "fenced"

    async def test_fence_held_kills(self, redis: Redis, k: NodeKeys, events: PubSub) -> None:
        """The caller still holding the lease trips the armed node to a new epoch."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 2})
        await redis.set(k.leader, "agg-a:token")
        res = await kill(redis, k, fence="agg-a:token", only_if_armed=True, action="trip")
        assert res[0] == "1"
        assert res[1:3] == ["5", "3"]
        assert res[4:] == ["ARMED", ""]
        state = await redis.hgetall(k.state)
        assert (state["state"], state["epoch"], state["ver"]) == ("KILLED", "5", "3")
        assert state["killed_ms"] == state["ts_ms"] == res[3]
        (entry,) = await chained(redis, k)
        assert entry["action"] == "trip"
        assert (entry["prev_state"], entry["prev_epoch"], entry["epoch"]) == ("ARMED", "4", "5")
        assert await published(redis, events, k) == [(k.events, "KILLED 5 3")]

    @pytest.mark.parametrize(
        ("state", "epoch"), [(None, 0), ("KILLED", 6)], ids=["unarmed", "killed"]
    )
    async def test_not_armed_refusal(
        self, redis: Redis, k: NodeKeys, events: PubSub, state: str | None, epoch: int
    ) -> None:
        """An automatic trip (only if armed) of an unarmed or killed node is refused `not_armed`."""
        if state:
            await redis.hset(k.state, mapping={"state": state, "epoch": epoch, "ver": 1})
        res = await kill(redis, k, only_if_armed=True)
        assert res[0] == "0"
        assert res[1] == str(epoch)
        assert res[4:] == [state or "", "not_armed"]
        assert (await redis.hget(k.state, "epoch")) == (str(epoch) if state else None)
        assert await chained(redis, k) == []
        assert await published(redis, events, k) == []

    async def test_rekill_keeps_the_epoch(self, redis: Redis, k: NodeKeys) -> None:
        """Killing a killed node at or above the floor keeps its epoch and bumps `ver`."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 7, "ver": 3})
        res = await kill(redis, k, floor=7)
        assert res[:3] == ["1", "7", "4"]
        assert res[4] == "KILLED"
        assert await redis.hmget(k.state, "state", "epoch", "ver") == ["KILLED", "7", "4"]

    async def test_rekill_below_a_host_floor_takes_a_new_epoch(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A killed node whose stored epoch is below an epoch a host reports is killed above it."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 7, "ver": 3})
        res = await kill(redis, k, floor=9)
        assert res[:3] == ["1", "10", "4"]

    async def test_kill_of_a_missing_state_takes_epoch_above_the_floor(
        self, redis: Redis, k: NodeKeys, events: PubSub
    ) -> None:
        """With no state hash (lost data) an operator's kill takes max(0, floor) + 1."""
        res = await kill(redis, k, floor=12)
        assert res[:3] == ["1", "13", "1"]
        assert res[4:] == ["", ""]
        (entry,) = await chained(redis, k)
        assert (entry["prev_state"], entry["prev_epoch"], entry["actor"]) == ("", "0", "alice")
        assert (entry["reason"], entry["cause"]) == ("drill", "manual")
        assert await published(redis, events, k) == [(k.events, "KILLED 13 1")]

    async def test_killed_at_epoch_zero_takes_a_new_epoch(self, redis: Redis, k: NodeKeys) -> None:
        """A KILLED state at epoch 0 (never valid) is not kept: the kill takes epoch 1."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 0, "ver": 0})
        res = await kill(redis, k)
        assert res[:3] == ["1", "1", "1"]

    async def test_kill_of_an_armed_node_without_fence(self, redis: Redis, k: NodeKeys) -> None:
        """An operator's kill (no fence) of an armed node takes the next epoch even with no lease."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 9})
        res = await kill(redis, k)
        assert res[:3] == ["1", "5", "10"]
        assert await redis.get(k.leader) is None


class TestKillLuaJunk:
    """kill.lua with junk in the stored state: the kill still happens and the audit names it."""

    async def test_state_of_another_type_is_replaced(self, redis: Redis, k: NodeKeys) -> None:
        """A node state key that is no hash (written by hand) is deleted and the kill goes on."""
        await redis.set(k.state, "junk")
        res = await kill(redis, k, floor=3)
        assert res[:3] == ["1", "4", "1"]
        assert await redis.hget(k.state, "state") == "KILLED"
        (entry,) = await chained(redis, k)
        assert entry["junk"] == "node state was a string, replaced"

    @pytest.mark.parametrize("stored", ["1e29", "-3", "7.5", "9" * 30], ids=str)
    async def test_unparsable_epoch_counts_as_zero(
        self, redis: Redis, k: NodeKeys, stored: str
    ) -> None:
        """A stored epoch that is no plain bounded integer counts as 0: the floor decides."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": stored, "ver": "x"})
        res = await kill(redis, k, floor=5)
        assert res[:3] == ["1", "6", "1"]
        (entry,) = await chained(redis, k)
        assert entry["junk"] == f"stored epoch {stored[:40]} ignored"
        assert entry["prev_epoch"] == "0"

    async def test_epoch_above_the_ceiling_is_ignored(self, redis: Redis, k: NodeKeys) -> None:
        """A stored epoch above the ceiling (implausible jump) is ignored, not kept."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 1000, "ver": 2})
        res = await kill(redis, k, floor=5, ceiling=100)
        assert res[:3] == ["1", "6", "3"]
        (entry,) = await chained(redis, k)
        assert entry["junk"] == "stored epoch 1000 ignored"

    async def test_epoch_at_the_ceiling_is_kept(self, redis: Redis, k: NodeKeys) -> None:
        """A stored epoch at the ceiling is believed: a re-kill keeps it and no junk is noted."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 100, "ver": 2})
        res = await kill(redis, k, floor=5, ceiling=100)
        assert res[:3] == ["1", "100", "3"]
        (entry,) = await chained(redis, k)
        assert "junk" not in entry

    async def test_leader_of_another_type_fences(self, redis: Redis, k: NodeKeys) -> None:
        """A leader key of another type never matches a fence token: the trip is refused."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 2})
        await redis.sadd(k.leader, "agg-a:token")
        res = await kill(redis, k, fence="agg-a:token", only_if_armed=True)
        assert (res[0], res[5]) == ("0", "fenced")


# -- arm.lua ----------------------------------------------------------------------------------


async def arm(
    redis: Redis,
    k: NodeKeys,
    *,
    epoch: int,
    lifts: tuple[int, int] = (0, 0),
    expires_ms: int = 2**50,
    ceiling: int = 0,
    roster: Sequence[str] = (HOST,),
) -> list[str]:
    return await run(
        redis, "arm", [k.state, k.audit, k.audit_head, k.roster, k.pending_arm],
        ["alice+bob", "open", "alice,bob", epoch, k.events, lifts[0], lifts[1], expires_ms,
         "PROOF", ceiling, *roster],
    )  # fmt: skip


class TestArmLua:
    """arm.lua: completes a signed arm only while the request is current; refusals audited."""

    async def test_arm_of_a_killed_node(self, redis: Redis, k: NodeKeys, events: PubSub) -> None:
        """A KILLED node is armed at the signed epoch; state, proof, roster, audit, notice."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 8, "ver": 4, "cause": "x"})
        await redis.hset(k.pending_arm, mapping={"msg": "m"})
        res = await arm(redis, k, epoch=9, lifts=(8, 4), roster=("or-02", HOST))
        assert res[0] == "1"
        assert res[1:3] == ["9", "5"]
        assert (res[4], res[5]) == ("KILLED", "")
        state = await redis.hgetall(k.state)
        assert (state["state"], state["epoch"], state["ver"]) == ("ARMED", "9", "5")
        assert (state["approvers"], state["cause"], state["actor"]) == (
            "alice,bob",
            "",
            "alice+bob",
        )
        assert state["proof"] == "PROOF"
        assert state["armed_ms"] == state["ts_ms"] == res[3]
        assert await redis.smembers(k.roster) == {"or-02", HOST}
        assert await redis.exists(k.pending_arm) == 0
        (entry,) = await chained(redis, k)
        assert (entry["action"], entry["prev_state"], entry["prev_epoch"]) == ("arm", "KILLED", "8")
        assert entry["roster"] == f"or-02,{HOST}"
        assert await published(redis, events, k) == [(k.events, "ARMED 9 5")]

    async def test_arm_of_a_missing_state(self, redis: Redis, k: NodeKeys) -> None:
        """With no state hash a request lifting (0, 0) arms at its epoch with ver 1."""
        res = await arm(redis, k, epoch=5)
        assert res[:3] == ["1", "5", "1"]
        assert res[4] == ""

    @pytest.mark.parametrize(
        ("stored", "lifts", "epoch"),
        [((8, 4), (7, 4), 9), ((8, 4), (8, 3), 9), ((8, 4), (8, 4), 8)],
        ids=["epoch_moved", "ver_moved", "epoch_not_lifted"],
    )
    async def test_moved_is_refused_and_audited(
        self, redis: Redis, k: NodeKeys, stored: tuple[int, int], lifts: tuple[int, int],
        epoch: int,
    ) -> None:  # fmt: skip
        """A request that no longer matches the stored epoch and ver changes nothing."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": stored[0], "ver": stored[1]})
        res = await arm(redis, k, epoch=epoch, lifts=lifts)
        assert (res[0], res[5]) == ("0", "moved")
        assert (await redis.hgetall(k.state))["state"] == "KILLED"
        (entry,) = await chained(redis, k)
        assert (entry["action"], entry["attempt"], entry["refused"]) == ("refused", "arm", "moved")

    async def test_expired_is_refused_and_audited(self, redis: Redis, k: NodeKeys) -> None:
        """A request past its expiry (server time) changes nothing and is audited."""
        res = await arm(redis, k, epoch=1, expires_ms=1)
        assert (res[0], res[5]) == ("0", "expired")
        assert await redis.exists(k.state) == 0
        (entry,) = await chained(redis, k)
        assert entry["refused"] == "expired"

    async def test_implausible_stored_epoch_counts_as_zero(self, redis: Redis, k: NodeKeys) -> None:
        """A stored epoch above the ceiling is junk: a request lifting 0 arms above it."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 10**12, "ver": 2})
        res = await arm(redis, k, epoch=4, lifts=(0, 2), ceiling=100)
        assert res[:3] == ["1", "4", "3"]

    async def test_without_a_roster_the_stored_one_stays(self, redis: Redis, k: NodeKeys) -> None:
        """An arm that names no host leaves the stored roster as it is."""
        await redis.sadd(k.roster, "or-09")
        res = await arm(redis, k, epoch=1, roster=())
        assert res[0] == "1"
        assert await redis.smembers(k.roster) == {"or-09"}

    async def test_arm_replaces_a_state_of_another_type(self, redis: Redis, k: NodeKeys) -> None:
        """A node state key that is no hash is deleted and the node armed at the signed epoch."""
        await redis.rpush(k.state, "junk")
        res = await arm(redis, k, epoch=1)
        assert res[:3] == ["1", "1", "1"]
        assert await redis.hget(k.state, "state") == "ARMED"


# -- lease.lua --------------------------------------------------------------------------------


async def lease(redis: Redis, k: NodeKeys, token: str, ttl_ms: int) -> list[str]:
    return await run(redis, "lease", [k.leader], [token, ttl_ms])


class TestLeaseLua:
    """lease.lua: acquire, renew, lose to another holder, release."""

    async def test_acquire_a_free_lease(self, redis: Redis, k: NodeKeys) -> None:
        """Nobody holds it: the caller takes it with the given expiry on server time."""
        assert await lease(redis, k, "a", 5000) == ["1", "a", "5000", ""]
        assert await redis.get(k.leader) == "a"
        assert 0 < await redis.pttl(k.leader) <= 5000

    async def test_renew_a_held_lease(self, redis: Redis, k: NodeKeys) -> None:
        """The holder extends its own lease (compare and extend)."""
        await redis.set(k.leader, "a", px=100)
        assert await lease(redis, k, "a", 60000) == ["1", "a", "60000", ""]
        assert await redis.pttl(k.leader) > 1000

    async def test_held_by_another(self, redis: Redis, k: NodeKeys) -> None:
        """Another holder keeps the lease; the caller learns who and for how long."""
        await redis.set(k.leader, "b", px=60000)
        res = await lease(redis, k, "a", 5000)
        assert res[:2] == ["0", "b"]
        assert 5000 < int(res[2]) <= 60000
        assert await redis.get(k.leader) == "b"

    async def test_release_a_held_lease(self, redis: Redis, k: NodeKeys) -> None:
        """ttl 0 from the holder deletes the lease."""
        await redis.set(k.leader, "a", px=60000)
        assert await lease(redis, k, "a", 0) == ["0", "", "0", ""]
        assert await redis.exists(k.leader) == 0

    async def test_release_by_a_non_holder_changes_nothing(self, redis: Redis, k: NodeKeys) -> None:
        """ttl 0 from anyone but the holder leaves the holder's lease in place."""
        await redis.set(k.leader, "b", px=60000)
        assert await lease(redis, k, "a", 0) == ["0", "", "0", ""]
        assert await redis.get(k.leader) == "b"

    async def test_lease_without_ttl_is_repaired(self, redis: Redis, k: NodeKeys) -> None:
        """A lease with no TTL (hand-written) is deleted and the caller takes the lease."""
        await redis.set(k.leader, "stuck")
        assert await lease(redis, k, "a", 5000) == [
            "1", "a", "5000", "lease without TTL held by stuck",
        ]  # fmt: skip
        assert 0 < await redis.pttl(k.leader) <= 5000

    async def test_leader_of_another_type_is_repaired(self, redis: Redis, k: NodeKeys) -> None:
        """A leader key of another type is deleted and the caller takes the lease."""
        await redis.hset(k.leader, "x", "1")
        assert await lease(redis, k, "a", 5000) == ["1", "a", "5000", "leader key of type hash"]
        assert await redis.get(k.leader) == "a"


# -- roster.lua -------------------------------------------------------------------------------


async def roster(redis: Redis, k: NodeKeys, *hosts: str) -> list[str]:
    return await run(redis, "roster", [k.roster, k.audit, k.audit_head], ["agg", *sorted(hosts)])


class TestRosterLua:
    """roster.lua: store and audit a change, leave an identical roster alone."""

    async def test_first_roster_is_stored_and_audited(self, redis: Redis, k: NodeKeys) -> None:
        """No roster yet: the hosts are stored (reply 2, created) and one audit entry records
        the change."""
        assert await roster(redis, k, "or-02", "or-01") == ["2"]
        assert await redis.smembers(k.roster) == {"or-01", "or-02"}
        (entry,) = await chained(redis, k)
        assert (entry["action"], entry["actor"]) == ("roster", "agg")
        assert (entry["reason"], entry["prev_roster"]) == ("roster set to or-01,or-02", "")

    async def test_same_roster_is_a_no_op(self, redis: Redis, k: NodeKeys) -> None:
        """The same hosts again: reply 0 and no audit entry."""
        await roster(redis, k, "or-01", "or-02")
        assert await roster(redis, k, "or-02", "or-01") == ["0"]
        assert len(await chained(redis, k)) == 1

    @pytest.mark.parametrize(
        "hosts", [("or-01", "or-03"), ("or-01",), ("or-01", "or-02", "or-03")],
        ids=["same-size-different-host", "shorter", "longer"],
    )  # fmt: skip
    async def test_changed_roster_replaces_the_old_one(
        self, redis: Redis, k: NodeKeys, hosts: tuple[str, ...]
    ) -> None:
        """A different host, or a different count, replaces the set (reply 1) and audits the
        previous one."""
        await roster(redis, k, "or-01", "or-02")
        assert await roster(redis, k, *hosts) == ["1"]
        assert await redis.smembers(k.roster) == set(hosts)
        entries = await chained(redis, k)
        assert len(entries) == 2
        assert entries[1]["prev_roster"] == "or-01,or-02"

    async def test_roster_of_another_type_is_replaced(self, redis: Redis, k: NodeKeys) -> None:
        """A roster key that is no set is deleted and the hosts stored as a set (reply 2: no
        roster was stored as a set before)."""
        await redis.set(k.roster, "junk")
        assert await roster(redis, k, "or-01") == ["2"]
        assert await redis.smembers(k.roster) == {"or-01"}
        (entry,) = await chained(redis, k)
        assert entry["prev_roster"] == ""


# -- flush.lua --------------------------------------------------------------------------------


def flush_args(
    k: NodeKeys,
    *,
    boot: str = "b1",
    allowed: int = 0,
    blocked: int = 0,
    acked: tuple[int, int] = (0, 0),
    max_epoch: int = 0,
    view: str = "ARMED",
    confirm: tuple[int, int] = (0, 0),
    held: int = 0,
    confirmed: tuple[int, int] = (0, 0),
    proof_digest: str = "",
    refusal: str = "",
    cancels: int = 0,
    limited: int = 0,
    acked_extra: tuple[int, int] = (0, 0),
    extra: Sequence[str] = (),
) -> tuple[list[str], list[Any]]:
    hk = k.host(HOST)
    keys = [hk.report, hk.flow, hk.confirm, k.hosts]
    args: list[Any] = [
        boot, allowed, blocked, acked[0], acked[1], max_epoch, view, "open", "1.500", 1000, "",
        900000, confirm[0], confirm[1], k.confirms, HOST, "1.2.3", 4242, held,
        confirmed[0], confirmed[1], cancels, limited, acked_extra[0], acked_extra[1],
        k.state, k.scopes, proof_digest, refusal, *extra,
    ]  # fmt: skip
    return keys, args


async def flush(redis: Redis, k: NodeKeys, **kw: Any) -> list[str]:
    keys, args = flush_args(k, **kw)
    return await run(redis, "flush", keys, args)


async def flows(redis: Redis, k: NodeKeys) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(k.host(HOST).flow)
    return [fields for _id, fields in entries]


class TestFlushLuaCounts:
    """flush.lua, the report: cumulative counts turned into flow deltas exactly once."""

    async def test_same_boot_counts_from_the_stored_report(self, redis: Redis, k: NodeKeys) -> None:
        """A flush of the same boot adds what grew since the stored report, not since the ack."""
        await flush(redis, k, allowed=10, blocked=2)
        await flush(redis, k, allowed=15, blocked=2, acked=(0, 0))
        assert await flows(redis, k) == [{"a": "10", "b": "2"}, {"a": "5", "b": "0"}]

    async def test_resent_flush_adds_nothing_twice(self, redis: Redis, k: NodeKeys) -> None:
        """The same cumulative counts again (a lost reply, resent) write no flow entry."""
        await flush(redis, k, allowed=10, blocked=2)
        await flush(redis, k, allowed=10, blocked=2)
        assert len(await flows(redis, k)) == 1

    async def test_new_boot_counts_from_the_acknowledged_values(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A report of another boot (or none: lost data) counts from what this boot had acked."""
        await flush(redis, k, boot="old", allowed=100, blocked=100)
        await flush(redis, k, boot="b1", allowed=30, blocked=7, acked=(20, 5))
        assert (await flows(redis, k))[-1] == {"a": "10", "b": "2"}

    async def test_counts_below_the_previous_are_clamped_to_zero(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A count lower than before never writes a negative delta; the other still counts."""
        await flush(redis, k, allowed=10, blocked=5)
        await flush(redis, k, allowed=4, blocked=6)
        assert (await flows(redis, k))[-1] == {"a": "0", "b": "1"}

    async def test_report_fields(self, redis: Redis, k: NodeKeys) -> None:
        """The host report holds every field the aggregator and status read, on server time."""
        before = await server_ms(redis)
        res = await flush(redis, k, allowed=3, blocked=1, max_epoch=4, view="ARMED")
        rep = await redis.hgetall(k.host(HOST).report)
        assert int(rep.pop("ts_ms")) == int(res[4]) >= before
        assert rep == {
            "boot": "b1", "allowed": "3", "blocked": "1", "max_epoch": "4", "view": "ARMED",
            "gate": "open", "orders_per_s": "1.500", "stale_after_ms": "1000", "regression": "",
            "version": "1.2.3", "pid": "4242", "cancels": "0", "limited": "0", "proof": "",
        }  # fmt: skip

    async def test_reply_without_a_state(self, redis: Redis, k: NodeKeys) -> None:
        """No node state stored: the reply carries empty state, epoch 0, ver 0, no confirmation."""
        res = await flush(redis, k)
        assert res[:4] == ["", "0", "0", ""]
        assert res[5] == "0"

    async def test_reply_carries_the_node_state(self, redis: Redis, k: NodeKeys) -> None:
        """The reply is the node state as stored: state, epoch, ver, reason."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 3, "ver": 2, "reason": "r"})
        res = await flush(redis, k, max_epoch=3)
        assert res[:4] == ["KILLED", "3", "2", "r"]

    async def test_cancels_and_limit_refusals_in_the_flow(self, redis: Redis, k: NodeKeys) -> None:
        """Cancels and limit refusals add `c` and `l` to the flow entry; cancels alone write one."""
        await flush(redis, k, allowed=2, blocked=3, cancels=4, limited=1)
        await flush(redis, k, allowed=2, blocked=3, cancels=6, limited=1)
        assert await flows(redis, k) == [
            {"a": "2", "b": "3", "c": "4", "l": "1"}, {"a": "0", "b": "0", "c": "2"},
        ]  # fmt: skip
        rep = await redis.hmget(k.host(HOST).report, "cancels", "limited")
        assert rep == ["6", "1"]

    async def test_new_boot_counts_cancels_from_the_acknowledged_values(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A new boot counts cancels and limit refusals from what it had acknowledged."""
        await flush(redis, k, boot="old", cancels=50, limited=50)
        await flush(redis, k, boot="b1", blocked=3, cancels=9, limited=3, acked_extra=(7, 1))
        assert (await flows(redis, k))[-1] == {"a": "0", "b": "3", "c": "2", "l": "2"}

    async def test_extra_report_fields(self, redis: Redis, k: NodeKeys) -> None:
        """Name, value pairs after the fixed arguments are written into the report as they are."""
        await flush(redis, k, extra=["flat_epoch", "3", "limits_digest", "abc"])
        rep = await redis.hmget(k.host(HOST).report, "flat_epoch", "limits_digest", "boot")
        assert rep == ["3", "abc", "b1"]

    async def test_reply_carries_the_scopes(self, redis: Redis, k: NodeKeys) -> None:
        """The scopes hash follows the node state and the proof in the reply, read on the same
        lease."""
        await redis.hset(k.scopes, mapping={"_ver": "2", "host:or-01": "{}"})
        res = await flush(redis, k)
        assert len(res) == 15
        assert dict(zip(res[11::2], res[12::2], strict=True)) == {"_ver": "2", "host:or-01": "{}"}

    async def test_reply_carries_lift_proofs_while_the_host_lags(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A host reporting a scopes version other than the stored one gets the lift proofs."""
        await redis.hset(k.scopes, mapping={"_ver": "3", "lift:host:or-01": "P"})
        res = await flush(redis, k, extra=["scope_ver", "2"])
        assert dict(zip(res[11::2], res[12::2], strict=True)) == {
            "_ver": "3", "lift:host:or-01": "P",
        }  # fmt: skip

    async def test_reply_omits_lift_proofs_once_applied(self, redis: Redis, k: NodeKeys) -> None:
        """A host that reports the stored scopes version gets the scopes without the proofs."""
        await redis.hset(k.scopes, mapping={"_ver": "3", "lift:host:or-01": "P", "symbol:X": "{}"})
        res = await flush(redis, k, extra=["scope_ver", "3"])
        assert dict(zip(res[11::2], res[12::2], strict=True)) == {"_ver": "3", "symbol:X": "{}"}

    async def test_reply_without_scopes_ends_after_the_state(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """No scopes stored: the reply is the eleven fields of the state, confirmation, proof,
        the kill's fence flag and the report's previous writer."""
        assert len(await flush(redis, k)) == 11

    async def test_reply_names_the_previous_writer(self, redis: Redis, k: NodeKeys) -> None:
        """The boot and pid that wrote the report before this call come back (a duplicate)."""
        assert (await flush(redis, k, boot="other"))[9:11] == ["", ""]
        assert (await flush(redis, k))[9:11] == ["other", "4242"]
        assert (await flush(redis, k))[9:11] == ["b1", "4242"]


class TestFlushLuaConfirm:
    """flush.lua, the confirmation: of an applied state, and of a notice's held epoch."""

    async def test_no_confirmation_requested(
        self, redis: Redis, k: NodeKeys, events: PubSub
    ) -> None:
        """confirm epoch 0 and no hold: no confirm hash, nothing published."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 3, "ver": 2})
        await flush(redis, k, max_epoch=3)
        assert await redis.exists(k.host(HOST).confirm) == 0
        assert await published(redis, events, k) == []

    async def test_confirm_an_applied_state(
        self, redis: Redis, k: NodeKeys, events: PubSub
    ) -> None:
        """A confirm epoch writes the confirm hash (with blocked count) and publishes it."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 3, "ver": 2})
        res = await flush(redis, k, blocked=9, max_epoch=3, view="KILLED", confirm=(3, 2))
        assert res[5] == "0"  # an ordinary confirmation, not the notice's one-call one
        conf = await redis.hgetall(k.host(HOST).confirm)
        assert conf.pop("applied_ms") == res[4]
        assert conf == {"host": HOST, "epoch": "3", "ver": "2", "view": "KILLED", "blocked": "9"}
        assert await published(redis, events, k) == [(k.confirms, f"{HOST} 3 2")]

    async def test_notice_confirmation_of_the_held_epoch(
        self, redis: Redis, k: NodeKeys, events: PubSub
    ) -> None:
        """A held epoch read KILLED at exactly that epoch is confirmed in this call; the report
        already says what the host will enforce on reply."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 6, "ver": 4})
        res = await flush(redis, k, blocked=2, max_epoch=5, view="ARMED", held=6)
        assert res[:3] == ["KILLED", "6", "4"]
        assert res[5] == "1"
        conf = await redis.hgetall(k.host(HOST).confirm)
        assert (conf["epoch"], conf["ver"], conf["view"], conf["blocked"]) == (
            "6",
            "4",
            "KILLED",
            "2",
        )
        rep = await redis.hgetall(k.host(HOST).report)
        assert (rep["max_epoch"], rep["view"], rep["gate"]) == ("6", "KILLED", "closed")
        assert await published(redis, events, k) == [(k.confirms, f"{HOST} 6 4")]

    async def test_notice_confirmation_at_the_seen_epoch_leaves_the_report(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A held epoch the host already reported as its max is confirmed; the report is not rewritten."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 6, "ver": 5})
        res = await flush(redis, k, max_epoch=6, view="KILLED", held=6, confirmed=(6, 4))
        assert res[5] == "1"
        rep = await redis.hgetall(k.host(HOST).report)
        assert (rep["max_epoch"], rep["view"], rep["gate"]) == ("6", "KILLED", "open")
        assert await redis.hget(k.host(HOST).confirm, "ver") == "5"

    @pytest.mark.parametrize(
        ("stored", "held", "confirmed"),
        [
            (("ARMED", 6, 4), 6, (0, 0)),
            (("KILLED", 7, 4), 6, (0, 0)),
            (("KILLED", 5, 4), 6, (0, 0)),
            (("KILLED", 6, 4), 6, (6, 4)),
            (None, 6, (0, 0)),
            (("KILLED", 0, 1), 0, (0, 0)),
        ],
        ids=[
            "read-armed",
            "read-newer-epoch",
            "read-older-epoch",
            "already-confirmed",
            "no-state",
            "no-hold-killed-at-epoch-zero",
        ],
    )
    async def test_notice_confirmation_refused(
        self,
        redis: Redis,
        k: NodeKeys,
        events: PubSub,
        stored: tuple[str, int, int] | None,
        held: int,
        confirmed: tuple[int, int],
    ) -> None:
        """A hold confirms only a KILLED read at exactly its epoch, never one already confirmed."""
        if stored:
            state, epoch, ver = stored
            await redis.hset(k.state, mapping={"state": state, "epoch": epoch, "ver": ver})
        res = await flush(redis, k, max_epoch=5, view="ARMED", held=held, confirmed=confirmed)
        assert res[5] == "0"
        assert await redis.exists(k.host(HOST).confirm) == 0
        assert await redis.hget(k.host(HOST).report, "max_epoch") == "5"
        assert await published(redis, events, k) == []

    async def test_notice_confirmation_of_a_new_ver_at_a_confirmed_epoch(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A re-kill keeps the epoch with a new ver: a hold at that epoch confirms the new ver."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 6, "ver": 5})
        res = await flush(redis, k, max_epoch=6, view="KILLED", held=6, confirmed=(6, 4))
        assert res[5] == "1"
        assert await redis.hmget(k.host(HOST).confirm, "epoch", "ver") == ["6", "5"]

    async def test_held_confirmation_wins_over_a_requested_one(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """With both a stale confirm request and a hold, the confirmation is of the KILLED read."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 6, "ver": 4})
        res = await flush(redis, k, max_epoch=5, view="ARMED", confirm=(5, 1), held=6)
        assert res[5] == "1"
        conf = await redis.hgetall(k.host(HOST).confirm)
        assert (conf["epoch"], conf["ver"], conf["view"]) == ("6", "4", "KILLED")


# -- scope.lua --------------------------------------------------------------------------------


async def scope(
    redis: Redis, k: NodeKeys, op: str, kind: str = "host", value: str = HOST, lifts_ver: int = 1
) -> list[str]:
    """A scoped kill, or a lift signed against node (0, 0) and scopes version `lifts_ver`."""
    signed = [0, 0, lifts_ver, 2**50, "P", 0] if op == "arm" else []
    return await run(
        redis,
        "scope",
        [k.scopes, k.audit, k.state, k.audit_head, k.pending_arm],
        [op, kind, value, "alice", "drill", "alice,bob" if op == "arm" else "", k.events, *signed],
    )


class TestScopeLua:
    """scope.lua: a scoped kill, a re-kill of an active scope, a lift, and a lift of nothing."""

    async def test_kill_of_a_scope(self, redis: Redis, k: NodeKeys, events: PubSub) -> None:
        """A scoped kill stores the scope at a new version, audits it and announces it."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 1})
        before = await server_ms(redis)
        res = await scope(redis, k, "kill", "symbol", "XYZ")
        assert res[:2] == ["1", "1"]
        assert int(res[2]) >= before
        stored = json.loads(await redis.hget(k.scopes, "symbol:XYZ") or "{}")
        assert stored == {"ver": 1, "ts_ms": int(res[2]), "actor": "alice", "reason": "drill"}
        assert await redis.hget(k.scopes, "_ver") == "1"
        assert await redis.hgetall(k.state) == {"state": "ARMED", "epoch": "4", "ver": "1"}
        (entry,) = await chained(redis, k)
        assert (entry["action"], entry["scope"], entry["scope_ver"]) == (
            "kill_symbol", "symbol:XYZ", "1",
        )  # fmt: skip
        assert (entry["state"], entry["epoch"], entry["approvers"]) == ("ARMED", "4", "")
        assert await published(redis, events, k) == [(k.events, "SCOPE 1")]

    async def test_kill_of_an_active_scope_bumps_its_version(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """Killing an active scope again gives it a new version, so every host proves it again."""
        await scope(redis, k, "kill")
        res = await scope(redis, k, "kill")
        assert res[:2] == ["1", "2"]
        stored = json.loads(await redis.hget(k.scopes, f"host:{HOST}") or "{}")
        assert stored["ver"] == 2
        assert len(await chained(redis, k)) == 2

    async def test_lift_of_an_active_scope(self, redis: Redis, k: NodeKeys, events: PubSub) -> None:
        """Arming an active scope removes it at a new version and leaves its signed proof for the
        hosts to verify, audited with its approvers."""
        await scope(redis, k, "kill")
        res = await scope(redis, k, "arm")
        assert res[:2] == ["1", "2"]
        assert await redis.hgetall(k.scopes) == {"_ver": "2", f"lift:host:{HOST}": "P"}
        entries = await chained(redis, k)
        assert (entries[1]["action"], entries[1]["approvers"]) == ("arm_host", "alice,bob")
        assert (entries[1]["state"], entries[1]["epoch"]) == ("", "0")
        assert await published(redis, events, k) == [(k.events, "SCOPE 1"), (k.events, "SCOPE 2")]

    async def test_kill_after_a_lift_removes_its_proof(self, redis: Redis, k: NodeKeys) -> None:
        """A new kill of a lifted scope drops the lift's proof: it lifts an older kill."""
        await scope(redis, k, "kill")
        await scope(redis, k, "arm")
        await scope(redis, k, "kill", "symbol", "XYZ")
        assert await redis.hget(k.scopes, f"lift:host:{HOST}") == "P"  # another scope's kill
        await scope(redis, k, "kill")
        assert await redis.hget(k.scopes, f"lift:host:{HOST}") is None
        assert await redis.hexists(k.scopes, f"host:{HOST}")

    async def test_lift_of_an_absent_scope_changes_nothing(
        self, redis: Redis, k: NodeKeys, events: PubSub
    ) -> None:
        """Arming a scope that is not active replies 0 with the current version; nothing written."""
        await scope(redis, k, "kill", "symbol", "XYZ")
        res = await scope(redis, k, "arm")
        assert res[:2] == ["0", "1"]
        assert await redis.hget(k.scopes, "_ver") == "1"
        assert len(await chained(redis, k)) == 1
        assert await published(redis, events, k) == [(k.events, "SCOPE 1")]

    async def test_lift_with_no_scopes_at_all(self, redis: Redis, k: NodeKeys) -> None:
        """With no scopes hash a lift replies version 0 and creates nothing."""
        res = await scope(redis, k, "arm")
        assert res[:2] == ["0", "0"]
        assert await redis.exists(k.scopes, k.audit, k.audit_head) == 0


# -- audit_event.lua and prelude.lua's audit chain --------------------------------------------


async def audit_event(redis: Redis, k: NodeKeys, *fields: str) -> list[str]:
    return await run(redis, "audit_event", [k.audit, k.audit_head], fields)


class TestAuditChainLua:
    """audit_event.lua and prelude's audit_append: one chained entry, and junk never stops it."""

    async def test_audit_event_appends_a_chained_entry(self, redis: Redis, k: NodeKeys) -> None:
        """The caller's fields are kept in order after seq and prev, with ts_ms and hash added."""
        before = await server_ms(redis)
        (entry_id,) = await audit_event(redis, k, "action", "refused", "actor", "bob")
        entries: Any = await redis.xrange(k.audit)
        assert [e[0] for e in entries] == [entry_id]
        fields = entries[0][1]
        assert list(fields)[:6] == ["seq", "prev", "action", "actor", "ts_ms", "hash"]
        assert (fields["action"], fields["actor"]) == ("refused", "bob")
        assert int(fields["ts_ms"]) >= before
        await chained(redis, k)

    async def test_entries_of_every_script_form_one_chain(self, redis: Redis, k: NodeKeys) -> None:
        """Entries appended by different scripts link to each other in one chain."""
        await roster(redis, k, HOST)
        await arm(redis, k, epoch=1)
        await kill(redis, k)
        await scope(redis, k, "kill")
        await audit_event(redis, k, "action", "note")
        entries = await chained(redis, k)
        assert [e["seq"] for e in entries] == ["1", "2", "3", "4", "5"]
        assert [e["action"] for e in entries] == ["roster", "arm", "kill", "kill_host", "note"]

    async def test_audit_keys_of_the_wrong_type_are_repaired(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """An audit stream or head of another type is deleted; the entry says so and restarts at 1."""
        await redis.set(k.audit, "junk")
        await redis.rpush(k.audit_head, "junk")
        await kill(redis, k)
        (entry,) = await chained(redis, k)
        assert entry["seq"] == "1"
        assert entry["repaired"] == "audit keys of the wrong type deleted: string,list"
        assert await redis.hget(k.state, "state") == "KILLED"

    @pytest.mark.parametrize("seq", ["x", "-1", "1" * 16], ids=["word", "negative", "too-long"])
    async def test_junk_head_seq_restarts_the_count(
        self, redis: Redis, k: NodeKeys, seq: str
    ) -> None:
        """A head seq that is no bounded integer counts as 0: the append still happens."""
        await redis.hset(k.audit_head, mapping={"seq": seq, "hash": "h"})
        await audit_event(redis, k, "action", "note")
        (fields,) = await audit(redis, k)
        assert (fields["seq"], fields["prev"]) == ("1", "h")
        assert await redis.hget(k.audit_head, "seq") == "1"

    async def test_head_seq_is_continued(self, redis: Redis, k: NodeKeys) -> None:
        """A plausible head seq is continued: the next entry takes seq + 1 and links to its hash."""
        await redis.hset(k.audit_head, mapping={"seq": "41", "hash": "h"})
        await audit_event(redis, k, "action", "note")
        (fields,) = await audit(redis, k)
        assert (fields["seq"], fields["prev"]) == ("42", "h")


class TestScriptsAreAtomic:
    """The scripts are single round trips: concurrent callers never interleave inside one."""

    async def test_concurrent_kills_take_one_epoch(self, redis: Redis, k: NodeKeys) -> None:
        """Twenty concurrent kills of an armed node: one new epoch, twenty vers, one per audit entry."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 4, "ver": 0})
        results = await asyncio.gather(*(kill(redis, k) for _ in range(20)))
        assert {r[1] for r in results} == {"5"}
        assert sorted(int(r[2]) for r in results) == list(range(1, 21))
        assert len(await chained(redis, k)) == 20


# -- read.lua ---------------------------------------------------------------------------------


async def read(redis: Redis, k: NodeKeys, hosts: Sequence[str], after: Sequence[str] | None) -> Any:
    keys = [k.state, k.aggregator, k.leader, k.roster, k.scopes, k.hosts, k.pending_arm]
    for h in hosts:
        hk = k.host(h)
        keys += [hk.report, hk.confirm, hk.flow]
    args = ["1" if after is not None else "0", *(after or [])]
    return await redis.eval(source("read"), len(keys), *keys, *args)  # type: ignore[misc]


class TestReadLua:
    """read.lua: one atomic read of a node, server time first, flows only when asked."""

    async def test_read_of_an_empty_node(self, redis: Redis, k: NodeKeys) -> None:
        """Nothing stored: empty hashes, no leader, no roster, and the server time first."""
        before = await server_ms(redis)
        res = await read(redis, k, [], None)
        secs, micros = res[0]
        assert int(secs) * 1000 + int(micros) // 1000 >= before
        assert res[1:] == [[], [], "", 0, -2, 0, [], [], []]

    async def test_read_without_flows(self, redis: Redis, k: NodeKeys) -> None:
        """Per host its report and confirmation, in roster order, and no flow entries."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 2})
        await redis.hset(k.aggregator, mapping={"limit": "5"})
        await redis.set(k.leader, "agg-a")
        await redis.sadd(k.roster, "or-01", "or-02")
        await redis.hset(k.host("or-02").report, mapping={"view": "ARMED"})
        await redis.hset(k.host("or-01").confirm, mapping={"epoch": "2"})
        await redis.xadd(k.host("or-01").flow, {"a": 1, "b": 0})
        res = await read(redis, k, ["or-01", "or-02"], None)
        assert res[1:] == [
            ["state", "ARMED", "epoch", "2"], ["limit", "5"], "agg-a", 1,
            [], ["epoch", "2"], ["view", "ARMED"], [], -1, 0, [], [], [],
        ]  # fmt: skip

    async def test_read_with_flows_from_the_start(self, redis: Redis, k: NodeKeys) -> None:
        """With flows and no last ID, every retained flow entry of the host is returned."""
        ids = [await redis.xadd(k.host(HOST).flow, {"a": i, "b": 0}) for i in (1, 2)]
        res = await read(redis, k, [HOST], [""])
        assert [entry[0] for entry in res[7]] == ids

    async def test_read_with_flows_after_an_id(self, redis: Redis, k: NodeKeys) -> None:
        """With a last ID seen, only the entries after it (exclusive) are returned."""
        ids = [await redis.xadd(k.host(HOST).flow, {"a": i, "b": 0}) for i in (1, 2, 3)]
        res = await read(redis, k, [HOST], [ids[0]])
        assert [entry[0] for entry in res[7]] == ids[1:]
        assert res[7][0][1] == ["a", "2", "b", "0"]


# -- signed arms: flush.lua's proof, arm_request.lua, read.lua's extras -----------------------


class TestSignedArmLua:
    """The proof travels to the hosts once per change; the pending request is audited."""

    async def test_flush_returns_the_proof_only_when_its_digest_changed(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A new proof comes back with its sha1; the same digest sent back gets no proof."""
        await redis.hset(k.state, mapping={"state": "ARMED", "epoch": 1, "ver": 1, "proof": "P"})
        first = await flush(redis, k)
        assert first[7] == "P" and len(first[6]) == 40
        again = await flush(redis, k, proof_digest=first[6])
        assert (again[6], again[7]) == (first[6], "")

    async def test_flush_adds_the_host_to_the_seen_set_and_reports_its_refusal(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """Once per boot the host joins `hosts`; its refusal of the arm is in its report."""
        await flush(redis, k, refusal="unlisted")
        assert await redis.smembers(k.hosts) == {HOST}
        assert await redis.hget(k.host(HOST).report, "proof") == "unlisted"

    async def test_read_returns_seen_hosts_and_the_pending_request(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """After the wrong-type count: the seen-hosts set, the pending request, the scopes."""
        await redis.sadd(k.hosts, "or-09")
        await redis.hset(k.pending_arm, mapping={"principal": "alice"})
        res = await read(redis, k, [], None)
        assert res[-3:] == [["or-09"], ["principal", "alice"], []]

    async def test_arm_request_is_recorded_with_a_ttl_and_audited(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A current request is stored pending (expiring) and audited as `arm_request`."""
        now = await server_ms(redis)
        res = await run(
            redis, "arm_request", [k.state, k.pending_arm, k.audit, k.audit_head],
            [0, 0, "MSG", "SIG", "alice", now + 60_000, "open", 0],
        )  # fmt: skip
        assert (res[0], res[2]) == ("1", "")
        assert (await redis.hgetall(k.pending_arm))["principal"] == "alice"
        assert 0 < await redis.pttl(k.pending_arm) <= 60_000
        (entry,) = await chained(redis, k)
        assert (entry["action"], entry["actor"]) == ("arm_request", "alice")

    async def test_arm_request_of_a_moved_node_is_refused_and_audited(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A request lifting another epoch than the stored one is refused `moved`, audited."""
        await redis.hset(k.state, mapping={"state": "KILLED", "epoch": 3, "ver": 2})
        res = await run(
            redis, "arm_request", [k.state, k.pending_arm, k.audit, k.audit_head],
            [2, 2, "MSG", "SIG", "alice", 2**50, "open", 0],
        )  # fmt: skip
        assert (res[0], res[2]) == ("0", "moved")
        assert await redis.exists(k.pending_arm) == 0
        (entry,) = await chained(redis, k)
        assert (entry["attempt"], entry["refused"]) == ("arm_request", "moved")

    async def test_scoped_lift_refused_after_a_later_scoped_kill(
        self, redis: Redis, k: NodeKeys
    ) -> None:
        """A lift signed at scopes version 1 is void once another scoped kill made it 2."""
        scope_keys = [k.scopes, k.audit, k.state, k.audit_head, k.pending_arm]
        kill_args = ["kill", "host", HOST, "op", "r", "", k.events]
        await run(redis, "scope", scope_keys, kill_args)
        await run(redis, "scope", scope_keys, kill_args)
        res = await run(
            redis, "scope", scope_keys,
            ["arm", "host", HOST, "a+b", "r", "a,b", k.events, 0, 0, 1, 2**50, "P", 0],
        )  # fmt: skip
        assert (res[0], res[3]) == ("0", "moved")
        assert await redis.hexists(k.scopes, f"host:{HOST}")
        ok = await run(
            redis, "scope", scope_keys,
            ["arm", "host", HOST, "a+b", "r", "a,b", k.events, 0, 0, 2, 2**50, "P", 0],
        )  # fmt: skip
        assert (ok[0], ok[3]) == ("1", "")
        assert not await redis.hexists(k.scopes, f"host:{HOST}")
        assert (await chained(redis, k))[-1]["proof_sha1"]

    async def test_read_returns_the_scopes_last(self, redis: Redis, k: NodeKeys) -> None:
        """The scopes hash comes last, after every host, the leader's PTTL, the wrong-type count,
        the seen hosts and the pending request."""
        await redis.set(k.leader, "agg-a", px=60000)
        await redis.hset(k.scopes, mapping={"_ver": "1", "symbol:XYZ": "{}"})
        res = await read(redis, k, [HOST], None)
        assert 0 < res[-5] <= 60000
        assert res[-4:] == [0, [], [], ["_ver", "1", "symbol:XYZ", "{}"]]

    async def test_keys_of_the_wrong_type_read_as_empty(self, redis: Redis, k: NodeKeys) -> None:
        """Junk of another type in any read key reads as empty and is counted, never an error."""
        await redis.set(k.state, "junk")
        await redis.set(k.aggregator, "junk")
        await redis.hset(k.leader, "x", "1")
        await redis.set(k.roster, "junk")
        await redis.set(k.scopes, "junk")
        await redis.set(k.hosts, "junk")
        await redis.set(k.pending_arm, "junk")
        await redis.set(k.host(HOST).report, "junk")
        await redis.set(k.host(HOST).confirm, "junk")
        await redis.set(k.host(HOST).flow, "junk")
        res = await read(redis, k, [HOST], [""])
        assert res[1:] == [[], [], "", 0, [], [], [], -1, 9, [], [], []]


class TestMutantCatalogue:
    """The Lua mutant catalogue tracks the scripts these tests cover."""

    def test_every_mutant_text_occurs_once(self) -> None:
        """Each catalogued mutant's text occurs exactly once in its script (else it tests nothing)."""
        root = Path(scripts.__file__).resolve().parents[2]
        assert check_catalogue(root) == []
