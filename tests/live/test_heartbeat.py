"""An idle sidecar renews its lease instead of making a round trip every flush interval.

The decision (`core.node.heartbeat`) is tested by table and property; the sidecar's sync loop runs
in-process against the real redis-server on a clock the test moves, so which wake-ups make a
round trip is decided by the rule alone and never by how busy the machine is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis
from structlog.testing import CapturingLogger

from killswitch.core.node.heartbeat import IDLE_MAX_S, LEASES_PER_STALE, idle_every, trip_due
from killswitch.core.node.state import NodeState
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.store import Store
from kstest import wait_until_async

HOST = "or-01"
FLUSH, STALE = 0.05, 0.9  # an idle host renews every 0.3 s (stale_after / 3)


class TestRule:
    """`trip_due` and `idle_every`, pure."""

    @pytest.mark.parametrize(
        ("flush", "stale", "every"),
        [(0.1, 1.0, 1.0 / 3), (0.1, 0.2, 0.1), (0.5, 1.0, 0.5), (0.1, 30.0, IDLE_MAX_S),
         (2.0, 30.0, 2.0)],
        ids=["default", "flush-wins", "flush-equal-share", "capped", "slow-flush"],
    )  # fmt: skip
    def test_idle_every(self, flush: float, stale: float, every: float) -> None:
        """An idle host renews stale_after/3 apart, capped at a second, never faster than it flushes."""
        assert idle_every(flush, stale) == pytest.approx(every)

    @pytest.mark.parametrize(
        ("now", "last", "moved", "woken", "due"),
        [
            (10.0, None, False, False, True),  # first trip, or the last one failed
            (10.0, 9.9, True, False, True),  # orders or a state to confirm
            (10.0, 9.9, False, True, True),  # a notice, a FLAT, a changed release
            (10.0, 9.9, False, False, False),  # idle, lease fresh
            (10.0, 9.76, False, False, False),  # 0.24 s < 0.3 - 0.05
            (10.0, 9.72, False, False, True),  # a loop waking a little early still renews
            (10.0, 9.0, False, False, True),  # overdue
        ],
        ids=["never", "moved", "woken", "fresh", "nearly", "slack", "overdue"],
    )
    def test_trip_due(
        self, now: float, last: float | None, moved: bool, woken: bool, due: bool
    ) -> None:
        """Anything to say or learn makes the trip; silence waits for the lease's renewal."""
        got = trip_due(
            now=now, last_trip=last, moved=moved, woken=woken, flush_interval=0.1, every=0.3
        )
        assert got is due

    @pytest.mark.parametrize(
        ("last", "due"),
        [(9.5, False), (9.25, True), (9.125, True)],
        ids=["below", "at-threshold", "above"],
    )
    def test_trip_due_threshold(self, last: float, due: bool) -> None:
        """An idle trip is due once exactly `every` less half a flush interval has passed
        (the values are exact in binary, so the boundary itself is tested)."""
        got = trip_due(
            now=10.0, last_trip=last, moved=False, woken=False, flush_interval=0.5, every=1.0
        )
        assert got is due

    @given(
        flush=st.floats(0.01, 5.0),
        stale=st.floats(0.05, 120.0),
        gap=st.floats(0.0, 200.0),
    )
    def test_an_idle_host_always_renews_within_its_share_of_the_lease(
        self, flush: float, stale: float, gap: float
    ) -> None:
        """Whatever the settings, an idle host whose last trip is a lease share old (or a
        flush interval, if that is longer) makes the next one."""
        every = idle_every(flush, stale)
        assert flush <= every <= max(flush, stale / LEASES_PER_STALE, 0.0) + 1e-12
        assert every <= max(flush, IDLE_MAX_S)
        due = trip_due(
            now=100.0 + gap, last_trip=100.0, moved=False, woken=False,
            flush_interval=flush, every=every,
        )  # fmt: skip
        if gap >= every:
            assert due
        if gap < every - flush / 2:
            assert not due


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def running(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
) -> AsyncIterator[tuple[Sidecar, Clock]]:
    """An armed sidecar running its real sync loop on a clock that stands still."""
    clock = Clock()
    settings = SidecarSettings(
        node=node, host=HOST, redis_url="", flush_interval=FLUSH, stale_after=STALE,
        state_dir=str(tmp_path), operators=str(operator_keys.file),
    )  # fmt: skip
    sc = Sidecar(settings, redis, clock=clock, logger=structlog.wrap_logger(CapturingLogger()))
    await signed_store_arm(
        Store(redis, node), operator_keys, reason="open", roster=[HOST], boots={HOST: sc.boot_id}
    )
    await sc.start()
    try:
        await wait_until_async(lambda: sc.gate.is_open, 10)
        yield sc, clock
    finally:
        await sc.stop()


async def settled(sc: Sidecar) -> int:
    """Wait until the loop has skipped three wake-ups in a row; the trips made so far.

    The first trips after arming report the arm's confirmation and then its acknowledgement;
    after those nothing moves, and on a clock that stands still the lease never ages.
    """
    for _ in range(10):
        trips, skips = sc.round_trips, sc.idle_skips

        def moved(t: int = trips, k: int = skips) -> bool:
            return sc.idle_skips >= k + 3 or sc.round_trips > t

        await wait_until_async(moved, 10)
        if sc.round_trips == trips:
            return trips
    raise AssertionError(f"never idle: {sc.round_trips} trips, {sc.idle_skips} skips")


class TestIdleLoop:
    """The real sync loop: idle wake-ups skip; orders, notices and the lease's age do not."""

    async def test_idle_loop_skips_round_trips_and_keeps_the_gate_open(
        self, running: tuple[Sidecar, Clock]
    ) -> None:
        """With nothing to report and a fresh lease, wake-ups make no round trip."""
        sc, _ = running
        trips = await settled(sc)
        assert sc.gate.is_open
        assert sc.failures == 0
        labels = {"node": sc.s.node, "host": HOST}
        value = sc.registry.get_sample_value
        assert value("killswitch_sync_round_trips_total", labels) == trips
        assert (value("killswitch_sync_idle_skips_total", labels) or 0) >= 3

    async def test_heartbeat_renews_the_lease_when_due(
        self, running: tuple[Sidecar, Clock]
    ) -> None:
        """Once a lease share has passed, the next wake-up renews the lease with a round trip."""
        sc, clock = running
        trips = await settled(sc)
        assert sc.gate.lease_left() == pytest.approx(STALE)
        clock.t += idle_every(FLUSH, STALE)
        assert sc.gate.lease_left() == pytest.approx(STALE - idle_every(FLUSH, STALE))
        await wait_until_async(lambda: sc.round_trips > trips, 10)
        assert sc.gate.lease_left() == pytest.approx(STALE)  # renewed from the new send time
        assert sc.gate.is_open

    async def test_an_order_is_reported_at_the_next_wake_up(
        self, redis: Redis, node: str, running: tuple[Sidecar, Clock]
    ) -> None:
        """An order after a quiet spell is counted in Redis without waiting for the heartbeat."""
        sc, _ = running
        trips = await settled(sc)
        assert sc.gate.allow("o-1")
        await wait_until_async(lambda: sc.round_trips > trips, 10)
        report = await redis.hgetall(Store(redis, node).keys.host(HOST).report)
        assert report["allowed"] == "1"

    async def test_a_kill_notice_is_confirmed_while_idle(
        self, redis: Redis, node: str, running: tuple[Sidecar, Clock]
    ) -> None:
        """A kill's notice wakes the idle loop: confirmed although the heartbeat is not due."""
        sc, _ = running
        await settled(sc)
        res = await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
        await wait_until_async(lambda: sc.confirmed == (res.epoch, res.ver), 10)
        assert sc.gate.status() == (NodeState.KILLED, res.epoch)
        assert not sc.gate.allow("o-1")

    async def test_a_failed_trip_is_retried_at_the_next_wake_up(
        self, node: str, tmp_path: Path
    ) -> None:
        """After a failed round trip the idle rule does not wait for the heartbeat: it retries."""
        dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
        clock = Clock()
        settings = SidecarSettings(node=node, host=HOST, redis_url="", flush_interval=FLUSH,
                                   stale_after=STALE, state_dir=str(tmp_path))  # fmt: skip
        sc = Sidecar(settings, dead, clock=clock, logger=structlog.wrap_logger(CapturingLogger()))
        try:
            assert not await sc.sync_once(woken=False)
            assert not await sc.sync_once(woken=False)
            assert (sc.failures, sc.idle_skips) == (2, 0)
        finally:
            await dead.aclose()

    async def test_an_arm_notice_reopens_an_idle_killed_host(
        self, redis: Redis, node: str, running: tuple[Sidecar, Clock], operator_keys: OperatorKeys
    ) -> None:
        """A re-arm changes nothing this host reports; only its notice's wake-up makes the read
        that opens the gate before the heartbeat is due."""
        sc, _ = running
        store = Store(redis, node)
        res = await store.kill(actor="op", reason="r", cause="manual", floor=1)
        await wait_until_async(lambda: sc.confirmed == (res.epoch, res.ver), 10)
        await settled(sc)
        assert not sc.gate.is_open
        await signed_store_arm(store, operator_keys, reason="again", floor=res.epoch, roster=[HOST])
        await wait_until_async(lambda: sc.gate.is_open, 10)
        assert sc.gate.status()[0] is NodeState.ARMED

    async def test_a_kill_without_its_notice_is_read_at_the_renewal(
        self, redis: Redis, node: str, running: tuple[Sidecar, Clock]
    ) -> None:
        """A KILLED state whose notice was lost (written straight into the hash) is not read
        by an idle host before its renewal is due, and closes the gate at that renewal."""
        sc, clock = running
        await settled(sc)
        await redis.hset(Store(redis, node).keys.state, mapping={"state": "KILLED", "epoch": "2"})
        await settled(sc)
        assert sc.gate.is_open  # nothing woke it: the read waits for the renewal
        clock.t += idle_every(FLUSH, STALE)
        await wait_until_async(lambda: not sc.gate.is_open, 10)
        assert sc.gate.status() == (NodeState.KILLED, 2)
