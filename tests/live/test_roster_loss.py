"""Redis restarted empty under a running aggregator: `ROSTER_MISSING` is logged once, however
the restart falls against the aggregator's 5 s roster upkeep, and the restart itself is named
(`REDIS_RESTARTED`) even when something else stored the roster again first.

A real redis-server without persistence, restarted empty; the aggregator runs in the test's
event loop (the same `Aggregator` as the process) with a clock the test moves, and its ticks
are driven one by one, so which of its checks runs first after the restart is chosen here,
never left to the machine's load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from killswitch.aggregator.service import Aggregator
from killswitch.aggregator.settings import AggregatorSettings
from killswitch.aggregator.upkeep import DURABILITY_CHECK_S
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import OperatorKeys
from killswitch.store.redisconn import connect
from killswitch.store.store import Store
from kstest import wait_until_async
from kstest.auditcopies import Recorder

HOSTS = ("or-01", "or-02")
ROSTER_DUE_S = 6.0  # past the aggregator's 5 s roster upkeep


class Clock:
    """A monotonic clock that moves only when the test says."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    """A Redis without persistence (indirect parameter True: with appendonly)."""
    s = EmbeddedRedis(appendonly=getattr(request, "param", False)).start()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
async def agg(
    server: EmbeddedRedis, node: str, operator_keys: OperatorKeys
) -> AsyncIterator[tuple[Aggregator, Recorder, Clock]]:
    redis = connect(server.url, socket_timeout=2.0)
    log, clock = Recorder(), Clock()
    settings = AggregatorSettings(
        node=node, redis_url=server.url, hosts=HOSTS, tick=0.05,
        operators=str(operator_keys.file),
    )  # fmt: skip
    a = Aggregator(settings, redis, logger=log, clock=clock)
    try:
        await a._first_reads()  # what start() does before its loop; the test drives the ticks
        await a.tick_once()
        yield a, log, clock
    finally:
        await redis.aclose()


async def tick_after_restart(a: Aggregator) -> None:
    """One tick that reaches the restarted server: the first attempt may find the client's
    old connection dead (the clock stands still, so a retry is the same tick)."""
    try:
        await a.tick_once()
    except RedisConnectionError:
        await a.tick_once()


async def killed_then_restarted_empty(a: Aggregator, server: EmbeddedRedis) -> None:
    """The node killed (so it has a state to lose), then its Redis restarted empty."""
    done = await a.store.kill(actor="sre", reason="drill", cause="operator", floor=0)
    assert done.changed
    server.restart(empty=True)


async def stored_roster(a: Aggregator) -> set[str]:
    members = await a.redis.smembers(a.store.keys.roster)  # type: ignore[misc]
    return {m.decode() if isinstance(m, bytes) else str(m) for m in members}


class TestEmptyRestart:
    """The node's data vanishes while the aggregator runs."""

    async def test_first_store_of_a_new_node_is_not_a_loss(
        self, agg: tuple[Aggregator, Recorder, Clock]
    ) -> None:
        """An aggregator storing the roster of a node Redis never held logs ROSTER_STORED only."""
        a, log, _ = agg
        assert log.named("ROSTER_STORED")
        assert not log.named("ROSTER_MISSING")
        assert await stored_roster(a) == set(HOSTS)

    async def test_loss_found_by_the_roster_upkeep_is_logged(
        self, agg: tuple[Aggregator, Recorder, Clock], server: EmbeddedRedis
    ) -> None:
        """Restarted empty and the first tick after it is one where the 5 s roster upkeep
        stores the roster again before the tick's read: ROSTER_MISSING, once, naming the lost
        state."""
        a, log, clock = agg
        await killed_then_restarted_empty(a, server)
        clock.t += ROSTER_DUE_S
        await tick_after_restart(a)
        (missing,) = log.named("ROSTER_MISSING")
        assert missing["state_gone"] is True
        assert len(log.named("ROSTER_STORED")) == 2
        assert await stored_roster(a) == set(HOSTS)
        await a.tick_once()
        assert len(log.named("ROSTER_MISSING")) == 1

    async def test_loss_found_by_the_tick_read_is_logged(
        self, agg: tuple[Aggregator, Recorder, Clock], server: EmbeddedRedis
    ) -> None:
        """Restarted empty between two roster checks: the tick's read finds the roster gone,
        ROSTER_MISSING is logged once, naming the lost state, and the roster is stored again."""
        a, log, _ = agg
        await killed_then_restarted_empty(a, server)
        await tick_after_restart(a)
        (missing,) = log.named("ROSTER_MISSING")
        assert missing["state_gone"] is True
        assert await stored_roster(a) == set(HOSTS)

    async def test_a_roster_edited_by_hand_is_put_back_without_a_loss(
        self, agg: tuple[Aggregator, Recorder, Clock]
    ) -> None:
        """Another roster written over the stored one is replaced at the next upkeep, which
        is not a data loss: ROSTER_STORED, no ROSTER_MISSING."""
        a, log, clock = agg
        assert await Store(a.redis, a.s.node).set_roster(["intruder"], "test") == "replaced"
        clock.t += ROSTER_DUE_S
        await a.tick_once()
        assert len(log.named("ROSTER_STORED")) == 2
        assert not log.named("ROSTER_MISSING")
        assert await stored_roster(a) == set(HOSTS)

    async def test_a_restart_whose_roster_came_back_first_is_still_said(
        self, agg: tuple[Aggregator, Recorder, Clock], server: EmbeddedRedis
    ) -> None:
        """Restarted empty and the roster stored again by another writer (an arm's signed
        roster) before this aggregator looked: its next durability check names the restart
        as an error, Redis not being durable."""
        a, log, clock = agg
        await killed_then_restarted_empty(a, server)
        other = connect(server.url)
        try:
            await Store(other, a.s.node).set_roster(HOSTS, "arm")
        finally:
            await other.aclose()
        await tick_after_restart(a)
        assert not log.named("ROSTER_MISSING")
        assert not log.named("REDIS_RESTARTED")
        clock.t += DURABILITY_CHECK_S
        await a.tick_once()
        assert [lv for lv, e, _ in log.events if e == "REDIS_RESTARTED"] == ["error"]
        assert log.named("REDIS_RESTARTED")[0]["durable"] is False

    @pytest.mark.parametrize("server", [True], indirect=True)
    async def test_a_durable_restart_is_a_warning_and_no_loss(
        self, agg: tuple[Aggregator, Recorder, Clock], server: EmbeddedRedis
    ) -> None:
        """A Redis with appendonly restarted (its data kept): REDIS_RESTARTED as a warning at
        the next durability check, no ROSTER_MISSING."""
        a, log, clock = agg
        server.restart()
        clock.t += DURABILITY_CHECK_S
        await tick_after_restart(a)
        assert [lv for lv, e, _ in log.events if e == "REDIS_RESTARTED"] == ["warning"]
        assert log.named("REDIS_RESTARTED")[0]["durable"] is True
        assert not log.named("ROSTER_MISSING")
        assert await stored_roster(a) == set(HOSTS)


async def test_the_running_loop_names_the_loss_and_the_restart(
    server: EmbeddedRedis, node: str, operator_keys: OperatorKeys
) -> None:
    """The aggregator's own tick loop, Redis restarted empty under it: ROSTER_MISSING and,
    at once, REDIS_RESTARTED as an error (this Redis does not persist)."""
    redis = connect(server.url, socket_timeout=2.0)
    log = Recorder()
    settings = AggregatorSettings(
        node=node, redis_url=server.url, hosts=HOSTS, tick=0.05,
        operators=str(operator_keys.file),
    )  # fmt: skip
    a = Aggregator(settings, redis, logger=log)
    await a.start()
    try:
        await wait_until_async(lambda: a._last_read is not None, 20, 0.02, "a first tick")
        server.restart(empty=True)
        await wait_until_async(lambda: log.named("ROSTER_MISSING"), 20, 0.02, "the loss named")
        await wait_until_async(lambda: log.named("REDIS_RESTARTED"), 20, 0.02, "restart named")
        assert [lv for lv, e, _ in log.events if e == "REDIS_RESTARTED"] == ["error"]
    finally:
        await a.stop()
        await redis.aclose()
