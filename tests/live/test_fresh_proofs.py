"""Proofs bound to a host's boot: an old proof never opens a host that lost its memory.

A real sidecar (driven round trip by round trip, with its wall clock and lease clock in the
test's hands) against a real redis-server and real ssh-keygen signatures: restarts with and
without the state file, a lapsed lease, an expired request co-signed late, Redis restored
from an older ARMED snapshot, and the admission of a new boot by `arm --host`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis
from structlog.testing import CapturingLogger

from killswitch.core.proof.armproof import ArmRequest, Proof
from killswitch.core.proof.sshsig import parse_allowed_signers
from killswitch.ops.arming import arm
from killswitch.ops.control import EXIT_OK, EXIT_PENDING, EXIT_UNCONFIRMED
from killswitch.ops.scope import arm_scope
from killswitch.ops.signing import ssh_sign
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.localstate import LocalState
from killswitch.store.store import Store

HOST = "or-01"


class Clock:
    """A settable clock (seconds), for the lease (monotonic) and the host's wall clock."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Host:
    """One host: its settings, state directory and clocks; `start()` is a (re)start."""

    def __init__(
        self, redis: Redis, node: str, state_dir: Path, ops: OperatorKeys, memoryless: bool = False
    ) -> None:
        self.redis, self.node, self.state_dir, self.ops = redis, node, state_dir, ops
        self.memoryless = memoryless
        self.lease = Clock(1000.0)
        self.wall = Clock(time.time())
        self.sc: Sidecar | None = None

    def start(self) -> Sidecar:
        settings = SidecarSettings(
            node=self.node, host=HOST, redis_url="", flush_interval=30.0, stale_after=60.0,
            state_dir="" if self.memoryless else str(self.state_dir),
            memoryless=self.memoryless, operators=str(self.ops.file),
        )  # fmt: skip
        self.sc = Sidecar(
            settings, self.redis, clock=self.lease, wall=self.wall,
            logger=structlog.wrap_logger(CapturingLogger()),
        )  # fmt: skip
        return self.sc

    async def sync(self) -> Sidecar:
        assert self.sc is not None
        assert await self.sc.sync_once()
        return self.sc

    def order(self) -> str:
        assert self.sc is not None
        g = self.sc.gate
        return "ALLOW" if g.allow("o", "AAPL", "BUY", 1) else f"BLOCK {g.status()[0].value}"

    @property
    def refusal(self) -> str:
        assert self.sc is not None
        return self.sc.gate.view.refusal


@pytest.fixture
def host(redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys) -> Host:
    return Host(redis, node, tmp_path / "state", operator_keys)


async def state_hash(redis: Redis, node: str) -> dict[str, Any]:
    return await redis.hgetall(Store(redis, node).keys.state)  # type: ignore[no-any-return]


async def restore(redis: Redis, node: str, snapshot: dict[str, Any]) -> None:
    """Write an older copy of the node state back, as a Redis writer (or a restore) would."""
    key = Store(redis, node).keys.state
    await redis.delete(key)
    await redis.hset(key, mapping=snapshot)


class TestBoundToTheBoot:
    """What opens a host, and what no longer does once it lost its memory."""

    async def test_boot_id_is_kept_in_the_state_file_and_reported(
        self, host: Host, redis: Redis, node: str
    ) -> None:
        """The boot id is made once, kept in the state file across a restart, and reported."""
        first = host.start().boot_id
        await host.sync()
        report = await redis.hgetall(Store(redis, node).keys.host(HOST).report)
        assert report["boot_id"] == first
        assert host.start().boot_id == first
        LocalState(host.state_dir, node, HOST).path.unlink()
        assert host.start().boot_id != first

    async def test_restart_with_memory_reopens_on_the_proof_it_accepted_even_expired(
        self, host: Host, redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """A restart with its state file (same boot), and a lease that lapsed, reopen on the
        proof accepted before, long after the request expired; no new arm is needed."""
        host.start()
        await host.sync()
        await signed_store_arm(
            Store(redis, node),
            operator_keys,
            roster=[HOST],
            expires_ms=int(time.time() * 1000) + 60_000,
        )
        await host.sync()
        assert host.order() == "ALLOW"
        host.wall.t += 3600  # the request expired an hour ago by the host's clock
        host.lease.t += 120  # and the lease lapsed
        assert host.order() == "BLOCK STALE"  # closed by the lease
        await host.sync()
        assert host.order() == "ALLOW"
        host.start()  # a restart that kept the state file
        await host.sync()
        assert host.order() == "ALLOW"

    async def test_lost_memory_blocks_unproven_on_an_old_snapshot_and_admission_opens_it(
        self, host: Host, redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """Arm, snapshot, kill; the host loses its state file; Redis shows no node, then the
        old ARMED snapshot (the "epoch 0 first" trick): the host blocks `unproven`; a signed
        `arm --host` (alice 5, bob 0) admits its new boot at that epoch."""
        store = Store(redis, node)
        host.start()
        await host.sync()
        await signed_store_arm(store, operator_keys, roster=[HOST])
        await host.sync()
        assert host.order() == "ALLOW"
        snapshot = await state_hash(redis, node)
        await store.kill(actor="op", reason="r", cause="manual", floor=1)
        await host.sync()
        assert host.order() == "BLOCK KILLED"
        LocalState(host.state_dir, node, HOST).path.unlink()  # reimaged: no memory
        host.start()
        await redis.delete(store.keys.state)  # epoch 0 first
        await host.sync()
        assert host.order() == "BLOCK UNARMED"
        await restore(redis, node, snapshot)
        await host.sync()
        assert host.order() == "BLOCK UNARMED"
        assert host.refusal == "unproven"
        assert host.sc is not None and host.sc.gate.view.block_reason.value == "unproven"
        await self._admit(host, store, operator_keys)
        assert host.order() == "ALLOW"

    async def test_memoryless_host_needs_an_admission_at_every_start(
        self, redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """A host run without memory on purpose opens after the arm that named its boot; once
        restarted it is a new boot, blocked `unproven` until admitted again."""
        host = Host(redis, node, tmp_path, operator_keys, memoryless=True)
        store = Store(redis, node)
        host.start()
        await host.sync()
        await signed_store_arm(store, operator_keys, roster=[HOST])
        await host.sync()
        assert host.order() == "ALLOW"
        assert not list(tmp_path.iterdir())  # noqa: ASYNC240  no state file written here
        host.start()
        await host.sync()
        assert (host.order(), host.refusal) == ("BLOCK UNARMED", "unproven")
        await host.sync()  # reported: a plain arm of the armed node names the host to admit
        operators = parse_allowed_signers(operator_keys.file.read_text())
        out = await arm(store, key=operator_keys.key("alice"), operators=operators)
        assert out.code == EXIT_UNCONFIRMED and "or-01 blocks unproven" in out.message
        await self._admit(host, store, operator_keys)
        assert host.order() == "ALLOW"

    async def _admit(self, host: Host, store: Store, ops: OperatorKeys) -> None:
        operators = parse_allowed_signers(ops.file.read_text())
        await host.sync()  # its report (boot id, `unproven`) is what the operators sign for
        for who, code in (("alice", EXIT_PENDING), ("bob", EXIT_OK)):
            out = await arm_scope(
                store, kind="host", value=HOST, key=ops.key(who), operators=operators,
                reason="admit", timeout=0.01,
            )  # fmt: skip
            assert out.code in (code, EXIT_UNCONFIRMED), out.message  # the host syncs below
            await host.sync()


class TestExpiredAndStale:
    """Old consent: an expired request co-signed late, a proof for another epoch."""

    async def test_late_co_signature_of_an_expired_request_opens_nothing(
        self, host: Host, redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """Bob co-signs Alice's expired request offline and writes the proof into the state
        hash: the host refuses it as expired by its own clock (and `arm.lua` refuses it too)."""
        store = Store(redis, node)
        host.start()
        await host.sync()
        sc = host.sc
        assert sc is not None
        now_ms = int(host.wall.t * 1000)
        req = ArmRequest(
            node=node, lifts_epoch=0, lifts_ver=0, epoch=1, roster=(HOST,), reason="open",
            expires_ms=now_ms - 4000, boots=((HOST, sc.boot_id),),
        )  # fmt: skip
        msg = req.encode()
        proof = Proof(msg, (await ssh_sign(operator_keys.key("alice"), msg),
                            await ssh_sign(operator_keys.key("bob"), msg))).to_text()  # fmt: skip
        res = await store.arm(
            actor="alice+bob", reason="open", approvers=["alice", "bob"], epoch=1, lifts=(0, 0),
            expires_ms=req.expires_ms, proof=proof, roster=req.roster,
        )  # fmt: skip
        assert (res.changed, res.refused) == (False, "expired")
        await redis.hset(
            store.keys.state, mapping={"state": "ARMED", "epoch": "1", "ver": "1", "proof": proof}
        )
        await host.sync()
        assert (host.order(), host.refusal) == ("BLOCK UNARMED", "expired")
        await host.sync()  # the next round trip reports why, and the reason holds
        report = await redis.hgetall(store.keys.host(HOST).report)
        assert report["proof"] == host.refusal == "expired"

    async def test_proof_lifting_an_epoch_the_host_does_not_hold_opens_nothing(
        self, host: Host, redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """A valid proof for this boot that lifts epoch 5 does not open a host holding 1."""
        store = Store(redis, node)
        host.start()
        await host.sync()
        await signed_store_arm(store, operator_keys, roster=[HOST])
        await host.sync()
        sc = host.sc
        assert sc is not None
        req = ArmRequest(
            node=node, lifts_epoch=5, lifts_ver=3, epoch=6, roster=(HOST,), reason="r",
            expires_ms=2**50, boots=((HOST, sc.boot_id),),
        )  # fmt: skip
        msg = req.encode()
        sigs = (await ssh_sign(operator_keys.key("alice"), msg),
                await ssh_sign(operator_keys.key("bob"), msg))  # fmt: skip
        await redis.hset(
            store.keys.state,
            mapping={
                "state": "ARMED",
                "epoch": "6",
                "ver": "9",
                "proof": Proof(msg, sigs).to_text(),
            },
        )
        await host.sync()
        assert (host.order(), host.refusal) == ("BLOCK UNARMED", "wrong_lift")

    async def test_proof_with_an_empty_roster_opens_no_host(
        self, host: Host, redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """Two operators' signatures over an arm naming no host open nothing."""
        store = Store(redis, node)
        host.start()
        await host.sync()
        req = ArmRequest(node, 0, 0, 1, (), "r", 2**50)
        msg = req.encode()
        sigs = (await ssh_sign(operator_keys.key("alice"), msg),
                await ssh_sign(operator_keys.key("bob"), msg))  # fmt: skip
        await redis.hset(
            store.keys.state,
            mapping={
                "state": "ARMED",
                "epoch": "1",
                "ver": "1",
                "proof": Proof(msg, sigs).to_text(),
            },
        )
        await host.sync()
        assert host.order() == "BLOCK UNARMED"
        assert host.refusal in ("bad_proof", "unlisted")
