"""The in-process gate for Python trading processes: a local check, proven against real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

from redis.asyncio import Redis

from killswitch.core.state import NodeState
from killswitch.ops import control
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
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
        settings = SidecarSettings(
            node=node, host="py-01", redis_url=redis_url, state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5,
        )  # fmt: skip
        with SidecarThread(settings) as sc:
            assert sc.gate.allow("o1", "AAPL", "BUY", 1) is False
            await _until(lambda: sc.gate.view.state.value == "UNARMED")
            armed = await control.arm(store, approvers=["a", "b"], reason="t", timeout=5)
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

    async def test_callback_cancel_and_flat(
        self, redis: Redis, redis_url: str, node: str, tmp_path: Path
    ) -> None:
        """The in-process callback hears the kill, cancels pass, and `flat()` lists the host."""
        store = Store(redis, node)
        await store.set_roster(["py-02"], "test")
        settings = SidecarSettings(
            node=node, host="py-02", redis_url=redis_url, state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5,
        )  # fmt: skip
        seen: list[tuple[str, int, str]] = []
        with SidecarThread(settings) as sc:

            def on_state(state: NodeState, epoch: int, reason: str) -> None:
                seen.append((state.value, epoch, reason))

            await _until(lambda: sc.gate.view.state.value == "UNARMED")
            armed = await control.arm(store, approvers=["a", "b"], reason="t", timeout=5)
            assert armed.code == 0, armed.report
            sc.subscribe(on_state)
            await _until(lambda: ("ARMED", armed.report["epoch"], "armed") in seen)
            killed = await control.kill(store, reason="t", operator="op", timeout=5)
            epoch = killed.report["epoch"]
            await _until(lambda: ("KILLED", epoch, "killed") in seen)
            assert sc.gate.cancel("c1", "o-1") == epoch
            assert not sc.gate.allow("o1", "AAPL", "BUY", 1)
            assert (await control.status(store)).report["flat"] == []
            assert sc.flat(on_state, epoch - 1) != ""
            assert sc.flat(on_state, epoch) == ""

            async def flat_listed() -> bool:
                rep = (await control.status(store)).report
                return bool(rep["flat"] == ["py-02"] and rep["hosts"]["py-02"]["cancels"] == 1)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not await flat_listed():
                assert loop.time() < deadline, "py-02 never listed flat"
                await asyncio.sleep(0.02)
