"""Tells trading processes the moment the state their gate enforces changes, and acts on kills.

Three listeners of one event: `STATE` lines to the gate protocol's subscribers, in-process
callbacks, and the `--on-kill` command (once per kill epoch, see `onkill`). It never opens anything: it
only reports what the gate already enforces, so a slow or failing listener cannot delay a
block. Callbacks run on the sidecar's event loop thread and must return quickly.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, Protocol

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.protocol import state_line
from killswitch.core.node.state import NodeState
from killswitch.sidecar.fence import Fence, NoFence
from killswitch.sidecar.gateserver import GateServer
from killswitch.sidecar.onkill import OnKill
from killswitch.sidecar.settings import SidecarSettings
from killswitch.store.redisconn import scrub
from killswitch.store.store import FlushReport, Store

StateCallback = Callable[[NodeState, int, str], None]


class _Sidecar(Protocol):
    @property
    def s(self) -> SidecarSettings: ...
    @property
    def gate(self) -> Gate: ...
    @property
    def log(self) -> Any: ...
    @property
    def fence(self) -> Fence | NoFence: ...


class StateNotifier:
    """`changed()` after anything that may move the gate; it works out whether it did."""

    def __init__(self, sidecar: _Sidecar, server: GateServer) -> None:
        self.sc = sidecar
        self.server = server
        self.callbacks: list[StateCallback] = []
        self.last: tuple[NodeState, int] | None = None
        s = sidecar.s
        self.on_kill = OnKill(
            s.on_kill, {**os.environ, "KILLSWITCH_NODE": s.node, "KILLSWITCH_HOST": s.host},
            sidecar.log, grace=s.on_kill_grace,
        )  # fmt: skip
        self._timer: asyncio.TimerHandle | None = None

    @property
    def on_kill_epoch(self) -> int:
        """The kill epoch the on-kill command last ran for (0: never)."""
        return self.on_kill.epoch

    @property
    def on_kill_status(self) -> str:
        """Its outcome: "running", "exit N", "timeout", "interrupted", "error: ..."."""
        return self.on_kill.status

    def subscribe(self, callback: StateCallback) -> None:
        """Call `callback(state, epoch, reason)` now and on every change (on the sidecar loop)."""
        self.callbacks.append(callback)
        self.server.flat.subscribed(callback)
        if self.last is not None:
            state, epoch = self.last
            callback(state, epoch, _reason(state))

    def flat(self, callback: StateCallback, epoch: int) -> str:
        """An in-process subscriber's `FLAT <epoch>`: "" accepted, else why not."""
        why = self.server.flat.flat(callback, epoch)
        if not why:
            self.sc.log.info("FLAT", epoch=epoch, owed=self.server.flat.owed)
        return why

    def changed(self) -> None:
        gate = self.sc.gate
        now = gate.status()
        self._arm_timer(gate)
        state, epoch = now
        if state is NodeState.KILLED and not gate.held:
            # Only a kill read from the node state runs --on-kill (once per epoch): a held
            # pub/sub notice closes the gate but may be forged, and a mass-cancel is no
            # harmless side effect. The read that follows a real notice starts it.
            self.on_kill.start(epoch)
        if now == self.last:
            return
        self.last = now
        if state is NodeState.KILLED:
            self.server.flat.killed(epoch, [*self.server.subscribers, *self.callbacks])
        elif state is NodeState.ARMED:
            self.server.flat.armed()
        self.server.publish(state_line(state, epoch))
        for cb in list(self.callbacks):
            try:
                cb(state, epoch, _reason(state))
            except Exception as e:  # a trading process's bug must not stop the sidecar
                self.sc.log.error("STATE_CALLBACK_FAILED", error=f"{type(e).__name__}: {e}")

    def _arm_timer(self, gate: Gate) -> None:
        # An open gate goes STALE by itself when its lease runs out; nothing else would tell.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if gate.is_open:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(gate.lease_left() + 0.001, self.changed)

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        """What the host reports about its flatten proof, on-kill result, limits and network
        fence."""
        flat = self.server.flat
        return (
            ("subscribers", str(len(self.server.subscribers))),
            ("flat_epoch", str(flat.flat_epoch)),
            ("flat_owed", str(flat.owed)),
            *self.on_kill_fields(),
            ("limits_digest", self.sc.s.limits_digest),
            *self.sc.fence.report_fields(),
        )

    def on_kill_fields(self) -> tuple[tuple[str, str], ...]:
        return (("on_kill_epoch", str(self.on_kill_epoch)), ("on_kill_status", self.on_kill_status))

    async def report_on_kill(self, store: Store, acked: FlushReport | None) -> None:
        """Best effort, if no round trip reported it (`acked`: the last report Redis took): the
        on-kill outcome into the host's last report, so the aggregator does not show `running`
        for good (no lease is renewed)."""
        fields = self.on_kill_fields()
        if not self.on_kill_epoch or (acked and set(fields) <= set(acked.extra)):
            return
        try:
            async with asyncio.timeout(self.sc.s.stale_after):
                await store.report_fields(self.sc.s.host, fields)
        except Exception as e:
            self.sc.log.warning("ON_KILL_NOT_REPORTED", error=scrub(f"{type(e).__name__}: {e}"))

    async def close(self) -> bool:
        """Stop the lease timer and see a running on-kill command out (`OnKill.close`);
        True if one was running, so its outcome is news to report."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        return await self.on_kill.close()


def _reason(state: NodeState) -> str:
    return "armed" if state is NodeState.ARMED else state.value.lower()
