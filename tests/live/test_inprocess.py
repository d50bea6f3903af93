"""The in-process gate for Python trading processes: a local check, proven against real Redis."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis

from killswitch.core.node.state import NodeState
from killswitch.ops import control
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import OperatorKeys, make_operators, two_person_arm
from killswitch.store.localstate import LocalState
from killswitch.store.store import Store
from kstest import wait_until_async


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
            await wait_until_async(lambda: sc.gate.view.state.value == "UNARMED")
            armed = await two_person_arm(store, ops, reason="t", timeout=5)
            assert armed.code == 0, armed.report
            await wait_until_async(lambda: sc.gate.is_open)
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
        self, redis: Redis, redis_url: str, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """The in-process callback hears the kill, cancels pass, and `flat()` lists the host."""
        store = Store(redis, node)
        await store.set_roster(["py-02"], "test")
        settings = SidecarSettings(
            node=node, host="py-02", redis_url=redis_url, state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5, operators=str(operator_keys.file),
        )  # fmt: skip
        seen: list[tuple[str, int, str]] = []
        with SidecarThread(settings) as sc:

            def on_state(state: NodeState, epoch: int, reason: str) -> None:
                seen.append((state.value, epoch, reason))

            await wait_until_async(lambda: sc.gate.view.state.value == "UNARMED")
            armed = await two_person_arm(store, operator_keys, reason="t", timeout=5)
            assert armed.code == 0, armed.report
            sc.subscribe(on_state)
            await wait_until_async(lambda: ("ARMED", armed.report["epoch"], "armed") in seen)
            killed = await control.kill(store, reason="t", operator="op", timeout=5)
            epoch = killed.report["epoch"]
            await wait_until_async(lambda: ("KILLED", epoch, "killed") in seen)
            assert sc.gate.cancel("c1", "o-1") == epoch
            assert not sc.gate.allow("o1", "AAPL", "BUY", 1)
            assert (await control.status(store)).report["flat"] == []
            assert sc.flat(on_state, epoch - 1) != ""
            assert sc.flat(on_state, epoch) == ""

            async def flat_listed() -> bool:
                rep = (await control.status(store)).report
                return bool(rep["flat"] == ["py-02"] and rep["hosts"]["py-02"]["cancels"] == 1)

            await wait_until_async(flat_listed, 10, 0.02, "py-02 listed flat")
