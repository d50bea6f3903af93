"""Lifting a scoped kill against a real sidecar (in-process) and a real Redis: only a lift two
operators signed, verified by the host itself, reopens; a stray write never does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from killswitch.core.node.bounds import uint_or
from killswitch.core.node.scope import REPLAYED_LIFT, UNSIGNED_LIFT, Held
from killswitch.core.proof.armproof import ArmRequest, Proof
from killswitch.core.proof.sshsig import parse_allowed_signers
from killswitch.ops.control import EXIT_OK, EXIT_PENDING, EXIT_UNCONFIRMED, status
from killswitch.ops.scope import arm_scope, kill_scope
from killswitch.ops.signing import ssh_sign
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import OperatorKeys, two_person_arm
from killswitch.store.store import Store
from kstest import wait_until_async

HOST = "py-11"
FIELD = f"host:{HOST}"


@pytest.fixture
async def armed(
    redis: Redis, redis_url: str, node: str, tmp_path: Path, operator_keys: OperatorKeys
) -> AsyncIterator[tuple[Store, SidecarThread]]:
    """One armed host whose gate is then killed by a scoped kill of that host."""
    store = Store(redis, node)
    await store.set_roster([HOST], "test")
    settings = SidecarSettings(
        node=node, host=HOST, redis_url=redis_url, state_dir=str(tmp_path),
        flush_interval=0.05, stale_after=0.5, operators=str(operator_keys.file),
    )  # fmt: skip
    with SidecarThread(settings) as sc:
        await wait_until_async(lambda: sc.gate.view.state.value == "UNARMED")
        done = await two_person_arm(store, operator_keys, reason="t", timeout=5)
        assert done.code == EXIT_OK, done.report
        await wait_until_async(lambda: sc.gate.is_open)
        await kill_host(store)
        assert not sc.gate.allow("k1", "MSFT", "BUY", 1)
        yield store, sc


async def kill_host(store: Store) -> None:
    out = await kill_scope(store, kind="host", value=HOST, reason="t", operator="op", timeout=5)
    assert out.code == EXIT_OK and out.report["confirmed"] == [HOST], out.report


async def lift(store: Store, ops: OperatorKeys) -> Any:
    """The real operator path: alice's signed request (pending), then bob's, which lifts."""
    operators = parse_allowed_signers(ops.file.read_text())
    kw: Any = {"kind": "host", "value": HOST, "operators": operators, "timeout": 5}
    first = await arm_scope(store, key=ops.key("alice"), reason="fixed", **kw)
    assert first.code == EXIT_PENDING, first.report
    return await arm_scope(store, key=ops.key("bob"), reason=None, **kw)


async def forged(
    store: Store,
    ops: OperatorKeys,
    *,
    scope: str = FIELD,
    node: str = "",
    names: Sequence[str] = ("alice", "bob"),
    tamper: bool = False,
    boots: tuple[tuple[str, str], ...] = (),
    expires_ms: int = 2**50,
) -> str:
    """A lift proof signed with the real operator keys over what the arguments say."""
    st: Any = await store.redis.hgetall(store.keys.state)
    scope_ver = uint_or(await store.redis.hget(store.keys.scopes, "_ver"))
    epoch, ver = uint_or(st.get("epoch")), uint_or(st.get("ver"))

    def request(reason: str) -> bytes:
        return ArmRequest(
            node=node or store.node, lifts_epoch=epoch, lifts_ver=ver, epoch=epoch,
            roster=(HOST,), reason=reason, expires_ms=expires_ms, scope=scope,
            scope_ver=scope_ver, boots=boots,
        ).encode()  # fmt: skip

    sigs = tuple([await ssh_sign(ops.key(n), request("signed")) for n in names])
    return Proof(request("tampered" if tamper else "signed"), sigs).to_text()


async def stray_lift(store: Store, proof: str | None) -> int:
    """What a Redis writer can do without keys: drop the scope, bump `_ver`, plant a proof."""
    async with store.redis.pipeline(transaction=True) as p:
        p.hdel(store.keys.scopes, FIELD)
        if proof is not None:
            p.hset(store.keys.scopes, f"lift:{FIELD}", proof)
        p.hincrby(store.keys.scopes, "_ver", 1)
        res = await p.execute()
    return int(res[-1])


def held(sc: SidecarThread) -> Held:
    assert sc.sidecar is not None
    return sc.sidecar.applier.scope_held


async def kept_in_status(store: Store) -> list[str]:
    return list((await status(store)).report["hosts"][HOST]["scope_kept"])


class TestSignedLift:
    async def test_signed_lift_reopens_the_host(
        self, armed: tuple[Store, SidecarThread], operator_keys: OperatorKeys
    ) -> None:
        """Two operators' lift through the operator path is verified by the host and reopens it."""
        store, sc = armed
        out = await lift(store, operator_keys)
        assert out.code == EXIT_OK and out.report["confirmed"] == [HOST], out.report
        assert sc.gate.allow("o1", "MSFT", "BUY", 1)
        assert held(sc).kept == {}
        assert await store.redis.hexists(store.keys.scopes, f"lift:{FIELD}")


class TestUnsignedLift:
    async def test_stray_delete_keeps_the_host_blocked_and_says_so(
        self, armed: tuple[Store, SidecarThread], operator_keys: OperatorKeys
    ) -> None:
        """HDEL of the scope plus HINCRBY of `_ver` leaves the host blocked, reported in
        `status` and by `arm --host` (exit 3); killing it again and a signed lift reopen it."""
        store, sc = armed
        ver = await stray_lift(store, None)
        await wait_until_async(lambda: sc.gate.scope_ver == ver)
        assert not sc.gate.allow("o1", "MSFT", "BUY", 1)
        assert held(sc).kept == {FIELD: UNSIGNED_LIFT}
        await wait_until_async(lambda: kept_in_status(store), what="scope_kept reported")
        assert await kept_in_status(store) == [FIELD]
        operators = parse_allowed_signers(operator_keys.file.read_text())
        nothing = await arm_scope(store, kind="host", value=HOST, key=operator_keys.key("alice"),
                                  operators=operators, reason="x", timeout=1)  # fmt: skip
        assert nothing.code == EXIT_UNCONFIRMED and nothing.report["missing"] == [HOST]
        assert "still enforces it" in nothing.message and "kill the scope again" in nothing.message
        await kill_host(store)
        assert await lift(store, operator_keys) is not None
        await wait_until_async(lambda: sc.gate.allow("o2", "MSFT", "BUY", 1))
        assert await kept_in_status(store) == []

    @pytest.mark.parametrize(
        ("kw", "why"),
        [
            ({"tamper": True}, "bad_signature"),
            ({"names": ("alice", "alice")}, "one_operator"),
            ({"scope": "symbol:MSFT"}, "wrong_scope"),
            ({"node": "othernode"}, "wrong_node"),
        ],
        ids=["tampered", "one-operator-twice", "another-scope", "another-node"],
    )
    async def test_forged_proof_keeps_the_host_blocked(
        self,
        armed: tuple[Store, SidecarThread],
        operator_keys: OperatorKeys,
        kw: dict[str, Any],
        why: str,
    ) -> None:
        """A planted proof that is not two operators' lift of exactly this scope on this node
        leaves the host blocked, kept for the proof's refusal."""
        store, sc = armed
        ver = await stray_lift(store, await forged(store, operator_keys, **kw))
        await wait_until_async(lambda: sc.gate.scope_ver == ver)
        assert not sc.gate.allow("o1", "MSFT", "BUY", 1)
        assert held(sc).kept == {FIELD: why}

    async def test_replayed_older_lift_keeps_the_host_blocked(
        self, armed: tuple[Store, SidecarThread], operator_keys: OperatorKeys
    ) -> None:
        """The genuine proof of an earlier lift, planted again after a new kill of the same
        host, is refused as a replay: it lifts a kill older than the one the host enforces."""
        store, sc = armed
        assert (await lift(store, operator_keys)).code == EXIT_OK
        old = str(await store.redis.hget(store.keys.scopes, f"lift:{FIELD}") or "")
        assert old
        await kill_host(store)
        ver = await stray_lift(store, old)
        await wait_until_async(lambda: sc.gate.scope_ver == ver)
        assert not sc.gate.allow("o1", "MSFT", "BUY", 1)
        assert held(sc).kept == {FIELD: REPLAYED_LIFT}


def boot_of(sc: SidecarThread) -> str:
    assert sc.sidecar is not None
    return sc.sidecar.boot_id


class TestFreshLift:
    """A lift opens a host only fresh for it: its own boot, unexpired by its own clock."""

    async def test_lift_naming_this_boot_reopens(
        self, armed: tuple[Store, SidecarThread], operator_keys: OperatorKeys
    ) -> None:
        """The control: a planted, genuine two-operator lift naming the host's boot, unexpired,
        reopens it (so the refusals below are about freshness, not the planting)."""
        store, sc = armed
        boots = ((HOST, boot_of(sc)),)
        ver = await stray_lift(store, await forged(store, operator_keys, boots=boots))
        await wait_until_async(lambda: sc.gate.scope_ver == ver)
        await wait_until_async(lambda: sc.gate.allow("o1", "MSFT", "BUY", 1))
        assert held(sc).kept == {}

    @pytest.mark.parametrize(
        ("boot", "expired", "why"),
        [
            ("0123456789abcdef", False, "unproven"),
            ("", False, "unproven"),
            ("own", True, "expired"),
        ],
        ids=["another-boot", "no-boot", "expired"],
    )
    async def test_stale_lift_keeps_the_host_blocked(
        self,
        armed: tuple[Store, SidecarThread],
        operator_keys: OperatorKeys,
        boot: str,
        expired: bool,
        why: str,
    ) -> None:
        """Two operators' lift of exactly this scope, but signed for another boot of the host
        (or none), or expired by the host's clock when it first sees it, does not reopen."""
        store, sc = armed
        named = boot_of(sc) if boot == "own" else boot
        boots = ((HOST, named),) if named else ()
        expires = int((time.time() - 60) * 1000) if expired else 2**50
        proof = await forged(store, operator_keys, boots=boots, expires_ms=expires)
        ver = await stray_lift(store, proof)
        await wait_until_async(lambda: sc.gate.scope_ver == ver)
        assert not sc.gate.allow("o1", "MSFT", "BUY", 1)
        assert held(sc).kept == {FIELD: why}

    async def test_expired_symbol_lift_keeps_the_symbol_blocked(
        self, armed: tuple[Store, SidecarThread], operator_keys: OperatorKeys
    ) -> None:
        """A symbol's lift, genuine but expired by the host's clock, leaves the symbol blocked;
        an unexpired one lifts it."""
        store, sc = armed
        assert (await lift(store, operator_keys)).code == EXIT_OK
        out = await kill_scope(store, kind="symbol", value="KCG", reason="t", operator="op",
                               timeout=5)  # fmt: skip
        assert out.code == EXIT_OK, out.report
        old = int((time.time() - 60) * 1000)
        for expires, blocked in ((old, True), (2**50, False)):
            proof = await forged(store, operator_keys, scope="symbol:KCG", expires_ms=expires)
            async with store.redis.pipeline(transaction=True) as p:
                p.hdel(store.keys.scopes, "symbol:KCG")
                p.hset(store.keys.scopes, "lift:symbol:KCG", proof)
                p.hincrby(store.keys.scopes, "_ver", 1)
                ver = int((await p.execute())[-1])
            await wait_until_async(lambda v=ver: sc.gate.scope_ver == v)
            assert sc.gate.allow("o1", "MSFT", "BUY", 1)
            assert sc.gate.allow("o2", "KCG", "BUY", 1) is not blocked
            assert held(sc).kept == ({"symbol:KCG": "expired"} if blocked else {})


class TestScopesLost:
    async def test_rebuilt_hash_with_a_higher_version_keeps_the_old_scopes(
        self, armed: tuple[Store, SidecarThread]
    ) -> None:
        """The scopes hash deleted and rebuilt past the host's version: the old host and symbol
        kills stay enforced, reported, and the new one is enforced too."""
        store, sc = armed
        out = await kill_scope(store, kind="symbol", value="KCG", reason="t", operator="op",
                               timeout=5)  # fmt: skip
        assert out.code == EXIT_OK, out.report
        await store.redis.delete(store.keys.scopes)
        await store.redis.hset(store.keys.scopes, mapping={"_ver": "9", "symbol:XYZ": "{}"})
        await wait_until_async(lambda: sc.gate.scope_ver == 9)
        assert held(sc).kept == {FIELD: UNSIGNED_LIFT, "symbol:KCG": UNSIGNED_LIFT}
        assert not sc.gate.allow("o1", "MSFT", "BUY", 1)
        assert held(sc).scopes.for_host(HOST) == (True, frozenset({"KCG", "XYZ"}))
        await wait_until_async(lambda: kept_in_status(store), what="scope_kept reported")
        assert await kept_in_status(store) == [FIELD, "symbol:KCG"]

    async def test_same_version_reached_again_with_new_scopes_applies_them(
        self, armed: tuple[Store, SidecarThread]
    ) -> None:
        """After a loss, a hash back at the host's own version but listing other scopes is
        applied (closing needs no proof), so the host's report proves only what it enforces."""
        store, sc = armed
        ver = sc.gate.scope_ver
        await store.redis.delete(store.keys.scopes)
        await store.redis.hset(store.keys.scopes, mapping={"_ver": str(ver), "symbol:XYZ": "{}"})
        await wait_until_async(lambda: "symbol:XYZ" in {s.field for s in held(sc).scopes.active})
        assert not sc.gate.allow("o1", "XYZ", "BUY", 1)
        assert held(sc).kept == {FIELD: UNSIGNED_LIFT}
