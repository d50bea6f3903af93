"""The two-person arm at its edges, in process: no roster, a key that cannot sign, a second
operator who signs other terms, a node that moves while an operator signs, pending requests
that are void (forged, expired, overtaken by what hosts saw), and an arm some host does not
confirm in time.

Real sidecars (`SidecarThread`, the same `Sidecar` as the process, on its own thread), a real
redis-server and real ssh-keygen keys; `ops.arming.arm` is called as the CLI calls it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from killswitch.core.proof.sshsig import Operators, parse_allowed_signers
from killswitch.ops import control
from killswitch.ops.arming import arm
from killswitch.ops.control import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_UNCONFIRMED,
    EXIT_USAGE,
    Outcome,
)
from killswitch.ops.signing import ssh_sign
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import OperatorKeys
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store
from kstest import wait_until_async

HOSTS = ["h1", "h2"]
# Generous liveness (sidecars and arm agree on it): a host starved for a moment on a busy
# machine must not turn a test of something else into an arm refused for a dead host.
ALIVE_S = 5.0
ALIVE_MS = round(ALIVE_S * 1000)


def ops_of(keys: OperatorKeys) -> Operators:
    return parse_allowed_signers(keys.file.read_text())


def sidecar(redis_url: str, node: str, host: str, keys: OperatorKeys, state_dir: Path) -> Any:
    return SidecarThread(
        SidecarSettings(
            node=node, host=host, redis_url=redis_url, flush_interval=0.05, stale_after=ALIVE_S,
            operators=str(keys.file), state_dir=str(state_dir),
        )
    ).start()  # fmt: skip


async def all_alive(store: Store, hosts: list[str]) -> None:
    async def alive() -> bool:
        rep = (await control.status(store, alive_ms=ALIVE_MS)).report
        return all(rep["hosts"].get(h, {}).get("alive") for h in hosts)

    await wait_until_async(alive, 20, 0.05, f"{hosts} alive and reporting")


@pytest.fixture
async def live(
    redis: Redis, redis_url: str, node: str, operator_keys: OperatorKeys, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """Two roster hosts h1, h2 alive and reporting, each a real sidecar loading the operators."""
    store = Store(redis, node)
    await store.set_roster(HOSTS, "test")
    threads = {h: sidecar(redis_url, node, h, operator_keys, tmp_path) for h in HOSTS}
    try:
        await all_alive(store, HOSTS)
        yield {"store": store, "threads": threads, "dir": tmp_path}
    finally:
        for t in threads.values():
            await asyncio.to_thread(t.stop)


async def arm_as(store: Store, keys: OperatorKeys, who: str, **kw: Any) -> Outcome:
    return await arm(store, key=keys.key(who), operators=ops_of(keys), alive_ms=ALIVE_MS, **kw)


async def audit(redis: Redis, node: str) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(NodeKeys(node).audit)
    return [f for _, f in entries]


def signing_then(action: Callable[[], Awaitable[object]]) -> Callable[[str, bytes], Awaitable[str]]:
    """A signer that does `action` (something another operator does meanwhile), then signs
    with the real ssh-keygen: the node changes between the operator's read and their write."""

    async def sign(key: str, message: bytes) -> str:
        await action()
        return await ssh_sign(key, message)

    return sign


class TestRefusedBeforeSigning:
    """Refusals decided before anyone signs, each audited."""

    async def test_no_roster_anywhere_is_refused_and_audited(
        self, redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """No stored roster, no --roster, no pending request: 4, 'no roster', audited."""
        out = await arm_as(Store(redis, node), operator_keys, "alice")
        assert out.code == EXIT_REFUSED
        assert out.report == {"node": node, "refused": "no roster"}
        assert "give --roster H1,H2" in out.message
        entry = (await audit(redis, node))[-1]
        assert (entry["action"], entry["attempt"], entry["refused"]) == (
            "refused",
            "arm",
            "no roster",
        )

    async def test_a_key_that_cannot_sign_is_a_usage_error(
        self, live: dict[str, Any], operator_keys: OperatorKeys, tmp_path: Path
    ) -> None:
        """A key path that does not exist: exit 2 'cannot sign', nothing pending, node UNARMED."""
        store: Store = live["store"]
        out = await arm(
            store, key=str(tmp_path / "no.key"), operators=ops_of(operator_keys), alive_ms=ALIVE_MS
        )
        assert out.code == EXIT_USAGE
        assert out.report["refused"] == "cannot sign"
        assert out.message.startswith(f"arm: ssh-keygen could not sign with {tmp_path / 'no.key'}")
        snap = await store.snapshot()
        assert not snap.pending and snap.state.get("state", "UNARMED") == "UNARMED"


class TestPendingTerms:
    """What the second operator signs must be what the first signed."""

    async def test_other_terms_replace_the_pending_request(
        self, live: dict[str, Any], operator_keys: OperatorKeys
    ) -> None:
        """bob gives another reason: alice's request is replaced by his, still pending (5)."""
        store: Store = live["store"]
        assert (await arm_as(store, operator_keys, "alice", reason="open")).code == EXIT_PENDING
        out = await arm_as(store, operator_keys, "bob", reason="something else")
        assert out.code == EXIT_PENDING
        assert out.message.startswith(
            "(the pending request by alice signs other terms; this call replaces it)\n"
        )
        assert out.report["pending_arm"]["by"] == "bob"
        assert ((await store.snapshot()).pending or {}).get("principal") == "bob"

    async def test_a_forged_pending_request_is_void(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """A pending request whose signature was altered in Redis: bob starts anew (5) and is
        told why the old one is void; nothing is armed."""
        store: Store = live["store"]
        assert (await arm_as(store, operator_keys, "alice")).code == EXIT_PENDING
        key = NodeKeys(node).pending_arm
        sig = str(await redis.hget(key, "sig"))
        await redis.hset(key, "sig", sig.replace(sig[60:64], "AAAA"))
        out = await arm_as(store, operator_keys, "bob")
        assert out.code == EXIT_PENDING
        assert out.message.startswith("(the pending request by alice is void: ")
        assert out.report["pending_arm"]["by"] == "bob" and out.report["state"] == "UNARMED"

    async def test_a_pending_request_past_its_expiry_is_void_without_its_ttl(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """A request whose TTL was removed by hand still ends at its signed expiry."""
        store: Store = live["store"]
        assert (await arm_as(store, operator_keys, "alice", expires_s=0.2)).code == EXIT_PENDING
        key = NodeKeys(node).pending_arm
        await redis.persist(key)
        expires = int(str(await redis.hget(key, "expires_ms")))

        async def past() -> bool:
            sec, usec = await redis.time()
            return int(sec) * 1000 + int(usec) // 1000 > expires

        await wait_until_async(past, 10, 0.02, "server time past the expiry")
        out = await arm_as(store, operator_keys, "bob")
        assert out.code == EXIT_PENDING
        assert out.message.startswith("(the pending request by alice expired)\n")
        assert out.report["pending_arm"]["by"] == "bob"

    async def test_a_pending_request_below_an_epoch_hosts_saw_is_void(
        self,
        live: dict[str, Any],
        redis_url: str,
        node: str,
        operator_keys: OperatorKeys,
        tmp_path: Path,
    ) -> None:
        """A host that remembers epoch 7 reports after alice signed epoch 1: her request is
        void and bob's new one arms above 7."""
        store: Store = live["store"]
        first = await arm_as(store, operator_keys, "alice")
        assert first.code == EXIT_PENDING and "it arms epoch 1 " in first.message
        remembered = tmp_path / "h3"
        remembered.mkdir()
        (remembered / f"{node}@h3.json").write_text(
            json.dumps({"max_epoch": 7, "max_state": "KILLED"})
        )
        h3 = sidecar(redis_url, node, "h3", operator_keys, remembered)
        try:

            async def h3_reported() -> bool:
                return (await store.snapshot()).reports.get("h3", {}).get("max_epoch") == "7"

            await wait_until_async(h3_reported, 20, 0.05, "h3 reports the epoch it remembers")
            out = await arm_as(store, operator_keys, "bob")
        finally:
            await asyncio.to_thread(h3.stop)
        assert out.code == EXIT_PENDING
        assert out.message.startswith("(the pending request by alice is void: hosts saw epoch 7)")
        assert "it arms epoch 8 " in out.message


class TestNodeMovesWhileSigning:
    """A kill recorded while an operator's key signs voids what they signed."""

    async def test_first_request_refused_when_the_node_moved(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """alice signs while someone kills the node: refused 'moved' (4), audited, no pending."""
        store: Store = live["store"]

        async def kill() -> None:
            await store.kill(actor="carol", reason="meanwhile", cause="operator", floor=0)

        out = await arm(
            store, key=operator_keys.key("alice"), operators=ops_of(operator_keys),
            sign=signing_then(kill), alive_ms=ALIVE_MS,
        )  # fmt: skip
        assert out.code == EXIT_REFUSED
        assert out.report == {"node": node, "refused": "moved"}
        assert out.message == "refused: the node changed while signing (moved)"
        last = (await audit(redis, node))[-1]
        assert (last["attempt"], last["refused"], last["actor"]) == (
            "arm_request",
            "moved",
            "alice",
        )
        assert not (await store.snapshot()).pending

    async def test_second_signature_void_when_the_node_moved(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """bob completes alice's request while the node is killed: void (4), not armed."""
        store: Store = live["store"]
        assert (await arm_as(store, operator_keys, "alice")).code == EXIT_PENDING

        async def kill() -> None:
            await store.kill(actor="carol", reason="meanwhile", cause="operator", floor=0)

        out = await arm(
            store, key=operator_keys.key("bob"), operators=ops_of(operator_keys),
            sign=signing_then(kill), alive_ms=ALIVE_MS,
        )  # fmt: skip
        assert out.code == EXIT_REFUSED and out.report["refused"] == "moved"
        assert "the request is void (the node was killed or armed since); run arm again" in (
            out.message
        )
        assert (await store.snapshot()).state["state"] == "KILLED"


class TestCompletedArm:
    """The second distinct operator's signature arms the node; confirmations are proven."""

    async def test_both_hosts_confirm(
        self, live: dict[str, Any], operator_keys: OperatorKeys
    ) -> None:
        """alice then bob: 0, ARMED, both hosts confirmed, approvers and elapsed_s reported."""
        store: Store = live["store"]
        assert (await arm_as(store, operator_keys, "alice")).code == EXIT_PENDING
        out = await arm_as(store, operator_keys, "bob", timeout=10.0)
        assert out.code == EXIT_OK, out.message
        rep = out.report
        assert (rep["state"], rep["changed"], rep["approvers"]) == ("ARMED", True, ["alice", "bob"])
        assert rep["confirmed"] == HOSTS and rep["missing"] == []
        assert rep["elapsed_s"] >= 0
        assert out.message == f"armed at epoch {rep['epoch']}, signed by alice and bob"
        assert all(t.gate.allow("o1", "AAPL", "BUY", 1) for t in live["threads"].values())

    async def test_a_host_that_stops_before_confirming_is_missing(
        self, live: dict[str, Any], operator_keys: OperatorKeys
    ) -> None:
        """h2 stops while bob signs: the arm is recorded, but exit 3 names h2 missing."""
        store: Store = live["store"]
        assert (await arm_as(store, operator_keys, "alice")).code == EXIT_PENDING

        async def stop_h2() -> None:
            await asyncio.to_thread(live["threads"]["h2"].stop)

        out = await arm(
            store, key=operator_keys.key("bob"), operators=ops_of(operator_keys), timeout=1.0,
            sign=signing_then(stop_h2), alive_ms=ALIVE_MS,
        )  # fmt: skip
        assert out.code == EXIT_UNCONFIRMED
        assert out.report["state"] == "ARMED" and out.report["changed"] is True
        assert out.report["missing"] == ["h2"] and "elapsed_s" not in out.report
        assert "h2" in out.message
