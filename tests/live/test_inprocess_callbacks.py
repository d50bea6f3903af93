"""An in-process state callback that raises: the sidecar logs it and carries on, and the
other callbacks, the gate and the kill's confirmation are unaffected."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from structlog.testing import capture_logs

from killswitch.core.node.state import NodeState
from killswitch.ops import control
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import OperatorKeys, two_person_arm
from killswitch.store.store import Store
from kstest import wait_until_async


class TestFailingCallback:
    """A trading process's handler bug must not reach the sidecar."""

    async def test_a_raising_callback_is_logged_and_the_kill_still_confirms(
        self, redis: Redis, redis_url: str, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """A callback raising on the kill is logged as STATE_CALLBACK_FAILED; the next
        callback still hears the kill, the gate blocks, and the host confirms."""
        store = Store(redis, node)
        await store.set_roster(["py-12"], "test")
        settings = SidecarSettings(
            node=node, host="py-12", redis_url=redis_url, state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5, operators=str(operator_keys.file),
        )  # fmt: skip
        heard: list[tuple[str, int]] = []

        def buggy(state: NodeState, epoch: int, reason: str) -> None:
            if state is NodeState.KILLED:
                raise RuntimeError("the trading process's handler is broken")

        def good(state: NodeState, epoch: int, reason: str) -> None:
            heard.append((state.value, epoch))

        with capture_logs() as logs, SidecarThread(settings) as sc:
            await wait_until_async(lambda: sc.gate.view.state.value == "UNARMED")
            armed = await two_person_arm(store, operator_keys, reason="t", timeout=5)
            assert armed.code == 0, armed.report
            await wait_until_async(lambda: sc.gate.is_open)
            sc.subscribe(buggy)
            sc.subscribe(good)
            killed = await control.kill(store, reason="t", operator="op", timeout=5)
            assert killed.code == 0 and killed.report["confirmed"] == ["py-12"], killed.report
            epoch = killed.report["epoch"]
            await wait_until_async(lambda: ("KILLED", epoch) in heard)
            assert sc.gate.allow("o1", "AAPL", "BUY", 1) is False
            failed = [e for e in logs if e["event"] == "STATE_CALLBACK_FAILED"]
            assert [e["error"] for e in failed] == [
                "RuntimeError: the trading process's handler is broken"
            ]
