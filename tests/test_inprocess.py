"""The in-process gate for Python trading processes: a local check, proven against real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from killswitch.core.state import NodeState
from killswitch.ops import control
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import make_operators, two_person_arm
from killswitch.store.localstate import LocalState
from killswitch.store.store import Store


async def _until(cond: object, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class TestSidecarThread:
    """A trading thread asks `gate.allow()`; the sidecar thread keeps the lease."""

    async def test_allow_follows_arm_and_kill_and_confirms(
        self, redis: Redis, redis_url: str, node: str, tmp_path: Path
    ) -> None:
        """Blocked before arm, allowed after, blocked and confirmed after a kill."""
        store = Store(redis, node)
        await store.set_roster(["py-01"], "test")
        ops = make_operators(tmp_path / "operators")
        settings = SidecarSettings(
            node=node, host="py-01", redis_url=redis_url, state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5, operators=str(ops.file),
        )  # fmt: skip
        with SidecarThread(settings) as sc:
            assert sc.gate.allow("o1", "AAPL", "BUY", 1) is False
            await _until(lambda: sc.gate.view.state.value == "UNARMED")
            armed = await two_person_arm(store, ops, reason="t", timeout=5)
            assert armed.code == 0, armed.report
            await _until(lambda: sc.gate.is_open)
            assert sc.gate.allow("o2", "AAPL", "BUY", 1) is True
            killed = await control.kill(store, reason="t", operator="op", timeout=5)
            assert killed.code == 0, killed.report
            assert killed.report["confirmed"] == ["py-01"]
            # Confirmed means remembered: the local state file already holds the kill.
            assert LocalState(tmp_path, node, "py-01").load()[:2] == (
                killed.report["epoch"],
                NodeState.KILLED,
            )
            assert sc.gate.allow("o3", "AAPL", "BUY", 1) is False
            assert sc.gate.check("o4")[1:] == (killed.report["epoch"], "killed")
            assert (sc.gate.allowed, sc.gate.blocked) == (1, 3)
        # The highest epoch seen outlives the thread: a new one starts closed at that epoch.
        again = SidecarThread(settings)
        with again:
            assert again.gate.view.max_epoch == killed.report["epoch"]
            assert again.gate.allow() is False
