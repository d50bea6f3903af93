"""The kill-notice path: `Gate.hold` and the sidecar's pub/sub notice handler.

A notice (`KILLED <epoch> <ver>` on the node's events channel) has no authority: it may close
the gate early and record its epoch locally, never open anything or lower what a host has
seen. Each case asserts the gate, the host's view and its local state file; the sidecar runs
in-process against the real redis-server.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from redis.asyncio import Redis
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.node.bounds import MAX_EPOCH_JUMP
from killswitch.core.node.state import MAX_EPOCH, HostView, NodeState
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.localstate import LocalState, Memo
from killswitch.store.store import Store
from kstest import wait_until_async

HOST = "or-01"
T0 = 100.0


def armed(epoch: int) -> HostView:
    return HostView(max_epoch=epoch, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=epoch)


class TestGateHold:
    """`Gate.hold` on a fake clock: which notices close the gate, and what it reports while held."""

    @pytest.fixture
    def gate(self) -> Gate:
        g = Gate("smars", HOST, clock=lambda: T0, log=CapturingLogger())
        g.apply(armed(5), T0 + 60)
        assert g.is_open
        return g

    @pytest.mark.parametrize(
        ("epoch", "accepted"),
        [(4, False), (1, False), (5, True), (6, True), (1000, True), (MAX_EPOCH, True)],
        ids=["below-by-one", "far-below", "at-seen", "above-by-one", "far-above", "at-max"],
    )
    def test_hold_accepts_only_notices_at_or_above_the_seen_epoch(
        self, gate: Gate, epoch: int, accepted: bool
    ) -> None:
        """A notice below the highest epoch seen changes nothing; at or above it closes the gate."""
        assert gate.hold(epoch) is accepted
        if accepted:
            assert not gate.is_open
            assert gate.held == epoch
            assert gate.check("o-1") == (False, epoch, "killed")
            assert gate.status() == (NodeState.KILLED, epoch)
        else:
            assert gate.is_open
            assert gate.held == 0
            assert gate.check("o-1") == (True, 5, "")
            assert gate.status() == (NodeState.ARMED, 5)
        assert gate.view == armed(5)  # the gate never rewrites the view it was given

    @pytest.mark.parametrize("epoch", [MAX_EPOCH + 1, 10**30], ids=["max-plus-one", "10e30"])
    def test_hold_refuses_an_epoch_redis_cannot_hold_exactly(self, gate: Gate, epoch: int) -> None:
        """An epoch beyond what a Lua number holds exactly is absurd: refused, the gate stays open."""
        assert gate.hold(epoch) is False
        assert gate.is_open
        assert gate.held == 0

    def test_allow_is_refused_while_held(self, gate: Gate) -> None:
        """The order path's `allow()` refuses and counts while a notice holds the gate."""
        gate.hold(6)
        assert gate.allow("o-1") is False
        assert (gate.allowed, gate.blocked) == (0, 1)

    def test_next_read_replaces_the_hold(self, gate: Gate) -> None:
        """The next authoritative read applies whatever it says and clears the hold."""
        gate.hold(6)
        gate.apply(armed(7), T0 + 60)
        assert gate.held == 0
        assert gate.is_open
        assert gate.status() == (NodeState.ARMED, 7)

    def test_duplicate_notice_keeps_the_hold(self, gate: Gate) -> None:
        """The same notice twice is accepted twice and holds at the same epoch."""
        assert gate.hold(6) and gate.hold(6)
        assert gate.held == 6
        assert not gate.is_open


# -- the sidecar's handler, in-process against the real redis-server ---------------------------


class CountingState(LocalState):
    """The real local state file, counting writes (a duplicate notice must not rewrite it)."""

    saves = 0

    def save(self, max_epoch: int, state: NodeState | None, memo: Memo | None = None) -> None:
        self.saves += 1
        super().save(max_epoch, state, memo)


def state_file(sc: Sidecar) -> tuple[int, str | None]:
    assert sc.local is not None
    data = json.loads(sc.local.path.read_text("utf-8"))
    return int(data["max_epoch"]), data["max_state"]


@pytest.fixture
async def sidecar(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
) -> AsyncIterator[Sidecar]:
    """A sidecar of a node armed at epoch 1, synced once (gate open); its lease is long
    (60 s) so only the node state and notices decide the gate here, never a slow machine."""
    settings = SidecarSettings(
        node=node, host=HOST, redis_url="", flush_interval=30.0, stale_after=60.0,
        state_dir=str(tmp_path), operators=str(operator_keys.file),
    )  # fmt: skip
    sc = Sidecar(settings, redis, logger=structlog.wrap_logger(CapturingLogger()))
    sc.local = CountingState(tmp_path, node, HOST)
    await signed_store_arm(
        Store(redis, node), operator_keys, reason="open", roster=[HOST], boots={HOST: sc.boot_id}
    )
    assert await sc.sync_once()
    assert sc.gate.is_open
    assert sc.gate.status() == (NodeState.ARMED, 1)
    assert state_file(sc) == (1, "ARMED")
    try:
        yield sc
    finally:
        await sc.stop()


async def confirmed(redis: Redis, node: str) -> list[str | None]:
    return await redis.hmget(Store(redis, node).keys.host(HOST).confirm, "epoch", "ver", "view")


class TestSidecarNotice:
    """The handler: notices at, above and below the seen epoch, duplicated, late, forged, absurd."""

    async def test_notice_above_closes_records_and_is_confirmed_in_one_call(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """A real kill's notice closes the gate at once, is recorded locally first, and the next
        round trip confirms the kill in the same call that reads it."""
        res = await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
        assert (res.epoch, res.ver) == (2, 2)
        sidecar.notices.notice("KILLED 2 2")
        assert sidecar.gate.check("o") == (False, 2, "killed")
        assert state_file(sidecar) == (2, "KILLED")
        assert (sidecar.gate.view.max_epoch, sidecar.gate.view.max_state) == (2, NodeState.KILLED)
        assert await confirmed(redis, node) == [None, None, None]
        assert await sidecar.sync_once()
        assert await confirmed(redis, node) == ["2", "2", "KILLED"]
        assert sidecar.confirmed == (2, 2)
        assert sidecar.gate.held == 0
        assert sidecar.gate.status() == (NodeState.KILLED, 2)

    async def test_notice_at_the_seen_epoch_of_a_rekill(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """A re-kill keeps the epoch: its notice at the seen epoch holds and confirms the new ver."""
        store = Store(redis, node)
        await store.kill(actor="op", reason="r", cause="manual", floor=1)
        await sidecar.sync_once()  # reads KILLED 2
        await sidecar.sync_once()  # confirms it
        assert sidecar.confirmed == (2, 2)
        res = await store.kill(actor="op", reason="again", cause="manual", floor=2)
        assert (res.epoch, res.ver) == (2, 3)
        saves = sidecar.local.saves  # type: ignore[union-attr]
        sidecar.notices.notice("KILLED 2 3")
        assert sidecar.gate.held == 2
        assert sidecar.local.saves == saves  # type: ignore[union-attr]  # nothing new to record
        await sidecar.sync_once()
        assert await confirmed(redis, node) == ["2", "3", "KILLED"]

    async def test_notice_below_the_seen_epoch_changes_nothing(
        self, redis: Redis, node: str, sidecar: Sidecar, operator_keys: OperatorKeys
    ) -> None:
        """A notice older than the epoch seen neither closes the gate nor lowers the remembered epoch."""
        store = Store(redis, node)
        await store.kill(actor="op", reason="r", cause="manual", floor=1)
        await sidecar.sync_once()  # the host holds the epoch the arm lifts
        await signed_store_arm(store, operator_keys, reason="open", floor=2, roster=[HOST])
        await sidecar.sync_once()
        assert sidecar.gate.status() == (NodeState.ARMED, 3)
        saves = sidecar.local.saves  # type: ignore[union-attr]
        sidecar.notices.notice("KILLED 2 2")
        assert sidecar.gate.is_open
        assert sidecar.gate.held == 0
        assert (sidecar.gate.view.max_epoch, sidecar.gate.view.max_state) == (3, NodeState.ARMED)
        assert state_file(sidecar) == (3, "ARMED")
        assert sidecar.local.saves == saves  # type: ignore[union-attr]

    async def test_late_notice_after_the_read_already_applied_it(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """A notice arriving after the round trip applied its kill holds at the same epoch and
        confirms nothing twice."""
        await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
        await sidecar.sync_once()  # reads KILLED 2
        await sidecar.sync_once()  # confirms it
        assert sidecar.confirmed == (2, 2)
        await redis.delete(Store(redis, node).keys.host(HOST).confirm)
        sidecar.notices.notice("KILLED 2 2")
        assert sidecar.gate.status() == (NodeState.KILLED, 2)
        assert state_file(sidecar) == (2, "KILLED")
        await sidecar.sync_once()
        assert await confirmed(redis, node) == [None, None, None]  # not confirmed again

    async def test_duplicated_notice_is_recorded_once(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """The same notice twice holds the gate once and writes the state file once."""
        await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
        saves = sidecar.local.saves  # type: ignore[union-attr]
        sidecar.notices.notice("KILLED 2 2")
        sidecar.notices.notice("KILLED 2 2")
        assert sidecar.local.saves == saves + 1  # type: ignore[union-attr]
        assert sidecar.gate.held == 2
        assert state_file(sidecar) == (2, "KILLED")

    async def test_forged_notice_above_blocks_until_an_arm_above_it(
        self, redis: Redis, node: str, sidecar: Sidecar, operator_keys: OperatorKeys
    ) -> None:
        """A notice with no kill behind it blocks this host (closing is safe) and is remembered;
        the node's ARMED read below it is then a regression, until an arm above its epoch."""
        sidecar.notices.notice("KILLED 9 1")
        assert not sidecar.gate.is_open
        assert state_file(sidecar) == (9, "KILLED")
        await sidecar.sync_once()
        assert sidecar.gate.status() == (NodeState.STALE, 1)
        assert "epoch went back from 9 to 1" in sidecar.gate.view.regression
        assert (await confirmed(redis, node))[:2] == ["1", "1"]  # the old arm, never epoch 9
        report = await redis.hgetall(Store(redis, node).keys.host(HOST).report)
        assert report["max_epoch"] == "9"  # so an arm's floor goes above it
        res = await signed_store_arm(
            Store(redis, node), operator_keys, reason="r", floor=9, roster=[HOST]
        )
        assert res.epoch == 10
        await sidecar.sync_once()
        assert sidecar.gate.is_open
        assert state_file(sidecar) == (10, "ARMED")

    async def test_forged_notice_at_the_seen_armed_epoch_blocks(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """A KILLED notice at the epoch this host saw ARMED (no real kill keeps an armed epoch)
        blocks, and the ARMED read at that epoch is then refused as an overwrite."""
        sidecar.notices.notice("KILLED 1 7")
        assert state_file(sidecar) == (1, "KILLED")
        await sidecar.sync_once()
        assert not sidecar.gate.is_open
        assert sidecar.gate.view.regression == "epoch 1 was KILLED here, Redis now says ARMED"

    @pytest.mark.parametrize(
        "data",
        [
            f"KILLED {MAX_EPOCH + 1} 1",
            "KILLED 99999999999999999999999999 1",
            "KILLED " + "9" * 5000 + " 1",
            "KILLED -3 1",
            "KILLED +3 1",
            "KILLED ³ 1",
            "KILLED ٣ 1",
            "KILLED 3",
            "KILLED 3 1 extra",
            "killed 3 1",
            "ARMED 3 1",
            "",
            "KILLED 0x3 1",
        ],
        ids=[
            "max-plus-one", "26-digits", "5000-digits", "negative", "plus-sign", "superscript",
            "arabic-digit", "no-ver", "extra-field", "lower-case", "armed", "empty", "hex",
        ],
    )  # fmt: skip
    async def test_absurd_notice_changes_nothing(self, sidecar: Sidecar, data: str) -> None:
        """A notice that is not `KILLED <epoch> <ver>` with a sane decimal epoch is ignored."""
        saves = sidecar.local.saves  # type: ignore[union-attr]
        view = sidecar.gate.view
        sidecar.notices.notice(data)
        assert sidecar.gate.is_open
        assert sidecar.gate.held == 0
        assert sidecar.gate.view == view
        assert sidecar.local.saves == saves  # type: ignore[union-attr]
        assert state_file(sidecar) == (1, "ARMED")

    async def test_notice_over_pubsub_closes_the_gate_before_any_round_trip(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """Published on the events channel, a notice reaches the running sidecar's handler: the
        gate closes and the file records it (the round trip it wakes then sees no kill)."""
        ok = sidecar.s  # flush every 30 s: only the notice can close the gate in this test
        assert ok.flush_interval == 30.0
        await sidecar.start()
        channel = Store(redis, node).keys.events

        async def subscribed() -> bool:
            counts: list[tuple[str, int]] = await redis.pubsub_numsub(channel)  # type: ignore[assignment]
            return counts[0][1] > 0

        deadline = time.monotonic() + 10
        while not await subscribed():
            assert time.monotonic() < deadline, "the sidecar never subscribed"
            await asyncio.sleep(0.01)
        await redis.publish(channel, "KILLED 5 1")
        await wait_until_async(
            lambda: state_file(sidecar) == (5, "KILLED"), what="the notice recorded"
        )
        await wait_until_async(lambda: not sidecar.gate.is_open, what="the gate closed")
        await wait_until_async(
            lambda: sidecar.gate.view.regression != "", what="the woken round trip"
        )
        assert sidecar.gate.check("o")[2] in ("killed", "stale")


class TestNoticeAuthority:
    """A notice alone neither runs `--on-kill` nor jumps the epoch past the allowed limit."""

    async def test_forged_notice_does_not_run_on_kill(
        self, redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """`KILLED 3 1` with nothing in the node state closes the gate but starts no --on-kill;
        the real kill read from the node state then starts it, once, for its own epoch."""
        marker = tmp_path / "ran"
        settings = SidecarSettings(
            node=node, host=HOST, redis_url="", flush_interval=30.0, stale_after=60.0,
            state_dir=str(tmp_path), operators=str(operator_keys.file),
            on_kill=f"echo $KILLSWITCH_EPOCH >> {marker}",
        )  # fmt: skip
        sc = Sidecar(settings, redis, logger=structlog.wrap_logger(CapturingLogger()))
        store = Store(redis, node)
        await signed_store_arm(store, operator_keys, reason="open", roster=[HOST])
        try:
            assert await sc.sync_once()
            sc.notices.notice("KILLED 3 1")
            assert sc.gate.status() == (NodeState.KILLED, 3)
            assert sc.notify.on_kill_epoch == 0
            await sc.sync_once()  # reads the node: still ARMED at 1, nothing was killed
            assert sc.notify.on_kill_epoch == 0 and not sc.gate.is_open
            res = await store.kill(actor="op", reason="r", cause="manual", floor=3)
            sc.notices.notice(f"KILLED {res.epoch} {res.ver}")
            assert sc.notify.on_kill_epoch == 0  # the notice of the real kill: not yet either
            await sc.sync_once()
            assert sc.notify.on_kill_epoch == res.epoch
            await wait_until_async(marker.exists, 30, what="the on-kill command ran")
        finally:
            await sc.stop()
        assert marker.read_text().split() == [str(res.epoch)]

    async def test_notice_jump_over_the_limit_is_refused(self, sidecar: Sidecar) -> None:
        """A notice more than MAX_EPOCH_JUMP above the seen epoch is junk: nothing held or kept."""
        seen = sidecar.gate.view.max_epoch
        junk = sidecar.notices.junk_inputs
        sidecar.notices.notice(f"KILLED {seen + MAX_EPOCH_JUMP + 1} 1")
        assert sidecar.gate.is_open and sidecar.gate.held == 0
        assert sidecar.notices.junk_inputs == junk + 1
        assert state_file(sidecar) == (seen, "ARMED")
        sidecar.notices.notice(f"KILLED {seen + MAX_EPOCH_JUMP} 1")  # at the limit: held
        assert sidecar.gate.held == seen + MAX_EPOCH_JUMP
