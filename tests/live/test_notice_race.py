"""A kill notice that arrives while a round trip is in flight.

The notice handler runs on the sidecar's event loop while `sync_once` awaits its round trip.
The read of that trip may predate the kill: it must never reopen the gate the notice closed,
nor write an older epoch into the local state file. Timing is made deterministic by a REAL
Store whose round trip pauses on an event (before sending, or after the reply was read): the
test applies the notice exactly there. The sidecar runs in-process against the real
redis-server.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest
import structlog
from redis.asyncio import Redis
from structlog.testing import CapturingLogger

from killswitch.core.node.state import NodeState
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.localstate import LocalState, Memo
from killswitch.store.store import FlushReply, FlushReport, Store

HOST = "or-01"


class PausingStore(Store):
    """The real Store; its round trip waits on `release`, before sending or after the reply."""

    def __init__(self, redis: Redis, node: str, where: Literal["before", "after"]) -> None:
        super().__init__(redis, node)
        self.where = where
        self.in_flight = asyncio.Event()
        self.release = asyncio.Event()

    async def flush(self, host: str, r: FlushReport, version: str) -> FlushReply:
        if self.where == "before":
            self.in_flight.set()
            await self.release.wait()
        reply = await super().flush(host, r, version)
        if self.where == "after":
            self.in_flight.set()
            await self.release.wait()
        return reply


class RecordingState(LocalState):
    """The real local state file, keeping every (epoch, state) written, in order."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args)
        self.saved: list[tuple[int, NodeState | None]] = []

    def save(self, max_epoch: int, state: NodeState | None, memo: Memo | None = None) -> None:
        self.saved.append((max_epoch, state))
        super().save(max_epoch, state, memo)


def state_file(sc: Sidecar) -> tuple[int, str | None]:
    assert sc.local is not None
    data = json.loads(sc.local.path.read_text("utf-8"))
    return int(data["max_epoch"]), data["max_state"]


@pytest.fixture
async def sidecar(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
) -> AsyncIterator[Sidecar]:
    """A sidecar of a node armed at epoch 1, synced once (gate open), with a long lease."""
    settings = SidecarSettings(
        node=node, host=HOST, redis_url="", flush_interval=30.0, stale_after=60.0,
        state_dir=str(tmp_path), operators=str(operator_keys.file),
    )  # fmt: skip
    sc = Sidecar(settings, redis, logger=structlog.wrap_logger(CapturingLogger()))
    sc.local = RecordingState(str(tmp_path), node, HOST)
    assert await sc.sync_once()  # the host reports its boot id, which the arm then names
    await signed_store_arm(Store(redis, node), operator_keys, reason="open", roster=[HOST])
    assert await sc.sync_once()
    assert sc.gate.status() == (NodeState.ARMED, 1)
    try:
        yield sc
    finally:
        await sc.stop()


async def trip_with_notice(
    sc: Sidecar, redis: Redis, node: str, where: Literal["before", "after"]
) -> tuple[int, int]:
    """Run one round trip; while it is in flight, kill the node and apply the kill's notice.

    Returns (orders allowed after the notice, orders probed) across the rest of the trip.
    """
    store = PausingStore(redis, node, where)
    sc.store = store
    trip = asyncio.create_task(sc.sync_once())
    await store.in_flight.wait()
    res = await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
    assert res.epoch == 2
    sc.notices.notice(f"KILLED {res.epoch} {res.ver}")
    allowed = probes = 0
    allowed += sc.gate.allow("o-notice")
    probes += 1
    store.release.set()
    assert await trip
    allowed += sc.gate.allow("o-after-trip")
    allowed += sc.gate.check("o-after-trip-check")[0]
    probes += 2
    sc.store = Store(redis, node)
    return allowed, probes


def never_back(saved: list[tuple[int, NodeState | None]]) -> bool:
    """Every write is at or above the epoch of every write before it."""
    return all(b[0] >= a[0] for a, b in itertools.pairwise(saved))


class TestNoticeDuringRoundTrip:
    """The read of an in-flight round trip against a kill notice applied meanwhile."""

    async def test_read_from_before_the_kill_never_reopens_the_gate(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """A reply read before the kill (ARMED 1) but delivered after its notice is not applied:
        no order passes, the file never records epoch 1 again, and nothing is a regression."""
        saved = sidecar.local.saved  # type: ignore[union-attr]
        before = len(saved)
        allowed, probes = await trip_with_notice(sidecar, redis, node, "after")
        assert (allowed, probes) == (0, 3)
        assert not sidecar.gate.is_open
        assert sidecar.gate.status() == (NodeState.KILLED, 2)
        assert state_file(sidecar) == (2, "KILLED")
        assert saved[before:] == [(2, NodeState.KILLED)]
        assert never_back(saved)
        assert (sidecar.gate.view.max_epoch, sidecar.gate.view.max_state) == (2, NodeState.KILLED)
        assert sidecar.applier.regressions == 0  # an outdated read is not Redis going back
        assert await sidecar.sync_once()  # the next trip reads the kill and applies it
        assert sidecar.gate.held == 0
        assert sidecar.gate.status() == (NodeState.KILLED, 2)
        assert sidecar.gate.view.regression == ""
        assert not sidecar.gate.allow("o-next")
        assert never_back(saved)

    async def test_read_after_the_kill_applies_at_once(
        self, redis: Redis, node: str, sidecar: Sidecar
    ) -> None:
        """A reply read after the kill (its notice applied while the trip was under way) applies:
        the gate enforces the read KILLED 2 and the hold is released by it."""
        allowed, probes = await trip_with_notice(sidecar, redis, node, "before")
        assert (allowed, probes) == (0, 3)
        assert sidecar.gate.held == 0
        assert sidecar.gate.status() == (NodeState.KILLED, 2)
        assert sidecar.gate.view.regression == ""
        assert state_file(sidecar) == (2, "KILLED")
        assert never_back(sidecar.local.saved)  # type: ignore[union-attr]

    async def test_arm_after_the_kill_read_in_the_same_trip_opens(
        self, redis: Redis, node: str, sidecar: Sidecar, operator_keys: OperatorKeys
    ) -> None:
        """A signed arm made after the kill and read by the trip is fresh proof: it opens."""
        store = PausingStore(redis, node, "before")
        sidecar.store = store
        trip = asyncio.create_task(sidecar.sync_once())
        await store.in_flight.wait()
        await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
        sidecar.notices.notice("KILLED 2 2")
        assert not sidecar.gate.allow("o-notice")
        await signed_store_arm(
            Store(redis, node), operator_keys, reason="again", floor=2, roster=[HOST]
        )
        store.release.set()
        assert await trip
        assert sidecar.gate.status() == (NodeState.ARMED, 3)
        assert sidecar.gate.allow("o-armed")
        assert state_file(sidecar) == (3, "ARMED")
        assert never_back(sidecar.local.saved)  # type: ignore[union-attr]
