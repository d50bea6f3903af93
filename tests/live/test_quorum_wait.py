"""`wait_for_quorum`: between full reads, only the hosts still unconfirmed are read again.

Three in-process sidecars on the real redis-server, each making its round trips when the test
says so; a `Store` that records what the wait reads. The full read decides and is returned,
so a change of state in the middle of a wait is judged on a fresh read of every host.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import structlog
from redis.asyncio import Redis
from structlog.testing import CapturingLogger

from killswitch.ops.control import wait_for_quorum
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.reads import NodeSnapshot
from killswitch.store.store import Store
from kstest import wait_until_async

HOSTS = ("or-01", "or-02", "or-03")


class Recording(Store):
    """The real store, recording the hosts each partial read asks for and counting full reads."""

    def __init__(self, redis: Redis, node: str) -> None:
        super().__init__(redis, node)
        self.asked: list[tuple[str, ...]] = []
        self.full = 0

    async def progress(self, hosts: Sequence[str]) -> NodeSnapshot:
        self.asked.append(tuple(hosts))
        return await super().progress(hosts)

    async def snapshot(self, roster: Sequence[str] | None = None) -> NodeSnapshot:
        self.full += 1
        return await super().snapshot(roster)


@pytest.fixture
async def cars(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
) -> AsyncIterator[dict[str, Sidecar]]:
    """Three sidecars of an armed node, each confirmed ARMED, syncing only when told."""
    out = {}
    for h in HOSTS:
        settings = SidecarSettings(
            node=node, host=h, redis_url="", flush_interval=30.0, stale_after=60.0,
            state_dir=str(tmp_path / h), operators=str(operator_keys.file),
        )  # fmt: skip
        out[h] = Sidecar(settings, redis, logger=structlog.wrap_logger(CapturingLogger()))
    await signed_store_arm(Store(redis, node), operator_keys, reason="open", roster=list(HOSTS))
    for sc in out.values():
        await confirm(sc)
    yield out


async def confirm(sc: Sidecar) -> None:
    """Round trips until the host confirmed the state it reads (two at most)."""
    for _ in range(3):
        await sc.sync_once()
        if sc.confirmed == (sc.gate.view.epoch, sc.gate.view.ver) and sc.confirmed[0]:
            return
    raise AssertionError(f"{sc.s.host} did not confirm: {sc.confirmed}")


async def killed_two_confirmed(redis: Redis, node: str, cars: dict[str, Sidecar]) -> Recording:
    """The node killed and confirmed by or-01 and or-02; or-03 has not synced since."""
    store = Recording(redis, node)
    await store.kill(actor="op", reason="r", cause="manual", floor=1)
    for h in HOSTS[:2]:
        await confirm(cars[h])
    return store


async def test_only_unconfirmed_hosts_are_read_again(
    redis: Redis, node: str, cars: dict[str, Sidecar]
) -> None:
    """After the first full read, the wait reads only the host that had not confirmed, then
    one full read proves the kill."""
    store = await killed_two_confirmed(redis, node, cars)
    async with store.confirmations() as wake:
        task = asyncio.create_task(wait_for_quorum(store, HOSTS, wake, 30.0, 60_000))
        await wait_until_async(lambda: store.full >= 1, 10)
        await confirm(cars["or-03"])
        snap, q = await task
    assert q.complete and set(q.confirmed) == set(HOSTS)
    assert store.asked and all(a == ("or-03",) for a in store.asked)
    assert store.full == 2  # the first read, and the one that decided
    assert snap.state["state"] == "KILLED"


async def test_a_new_kill_during_the_wait_is_judged_on_every_host(
    redis: Redis, node: str, cars: dict[str, Sidecar]
) -> None:
    """A re-kill (new ver) in the middle of a wait sends it back to a full read: the hosts
    that had confirmed the old ver are pending again until they confirm the new one."""
    store = await killed_two_confirmed(redis, node, cars)
    async with store.confirmations() as wake:
        task = asyncio.create_task(wait_for_quorum(store, HOSTS, wake, 30.0, 60_000))
        await wait_until_async(lambda: store.full >= 1, 10)
        again = await store.kill(actor="op", reason="again", cause="manual", floor=1)
        await confirm(cars["or-03"])
        await wait_until_async(lambda: ("or-01", "or-02") in store.asked, 10)
        assert not task.done()
        for h in HOSTS[:2]:
            await confirm(cars[h])
        snap, q = await task
    assert q.complete
    assert (snap.state["epoch"], snap.state["ver"]) == (str(again.epoch), str(again.ver))
    assert all(cars[h].confirmed == (again.epoch, again.ver) for h in HOSTS)


async def test_timeout_names_the_host_on_a_full_read(
    redis: Redis, node: str, cars: dict[str, Sidecar]
) -> None:
    """A host that never confirms is named missing, from a full read at the deadline."""
    store = await killed_two_confirmed(redis, node, cars)
    async with store.confirmations() as wake:
        snap, q = await wait_for_quorum(store, HOSTS, wake, 0.5, 60_000)
    assert q.missing == ("or-03",)
    assert set(q.confirmed) == set(HOSTS[:2])
    assert set(snap.reports) == set(HOSTS)
