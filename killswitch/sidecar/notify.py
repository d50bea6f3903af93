"""Tells trading processes the moment the state their gate enforces changes, and acts on kills.

Three listeners of one event: `STATE` lines to the gate protocol's subscribers, in-process
callbacks, and the `--on-kill` command (once per kill epoch). It never opens anything: it
only reports what the gate already enforces, so a slow or failing listener cannot delay a
block. Callbacks run on the sidecar's event loop thread and must return quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any, Protocol

from killswitch.core.gate import Gate
from killswitch.core.protocol import state_line
from killswitch.core.scope import Held
from killswitch.core.state import NodeState
from killswitch.sidecar.gateserver import GateServer
from killswitch.sidecar.settings import SidecarSettings

StateCallback = Callable[[NodeState, int, str], None]
ON_KILL_TIMEOUT_S = 30.0  # a venue mass-cancel that hangs longer is reported as a timeout


class _Sidecar(Protocol):
    @property
    def s(self) -> SidecarSettings: ...
    @property
    def gate(self) -> Gate: ...
    @property
    def log(self) -> Any: ...
    @property
    def held(self) -> Held: ...


class StateNotifier:
    """`changed()` after anything that may move the gate; it works out whether it did."""

    def __init__(self, sidecar: _Sidecar, server: GateServer) -> None:
        self.sc = sidecar
        self.server = server
        self.callbacks: list[StateCallback] = []
        self.last: tuple[NodeState, int] | None = None
        self.on_kill_epoch = 0  # the kill epoch the on-kill command last ran for
        self.on_kill_status = ""  # "running", "exit 0", "exit 3", "timeout", "error: ..."
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

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
        if now == self.last:
            return
        self.last = now
        state, epoch = now
        if state is NodeState.KILLED:
            self.server.flat.killed(epoch, [*self.server.subscribers, *self.callbacks])
            if self.sc.s.on_kill and epoch > self.on_kill_epoch:
                self.on_kill_epoch = epoch
                self._task = asyncio.get_running_loop().create_task(self._on_kill(epoch))
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

    async def _on_kill(self, epoch: int) -> None:
        cmd = self.sc.s.on_kill
        self.on_kill_status = "running"
        env = dict(os.environ)
        env.update(
            KILLSWITCH_NODE=self.sc.s.node, KILLSWITCH_HOST=self.sc.s.host,
            KILLSWITCH_EPOCH=str(epoch),
        )  # fmt: skip
        proc = None
        try:
            proc = await asyncio.create_subprocess_shell(
                cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env=env,
            )
            async with asyncio.timeout(ON_KILL_TIMEOUT_S):
                rc = await proc.wait()
            self.on_kill_status = f"exit {rc}"
        except TimeoutError:
            self.on_kill_status = "timeout"
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        except OSError as e:
            self.on_kill_status = f"error: {e.strerror or e}"
        self.sc.log.info("ON_KILL", epoch=epoch, status=self.on_kill_status)

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        """What the host reports about its flatten proof, on-kill result and limits."""
        flat = self.server.flat
        return (
            ("subscribers", str(len(self.server.subscribers))),
            ("flat_epoch", str(flat.flat_epoch)),
            ("flat_owed", str(flat.owed)),
            ("on_kill_epoch", str(self.on_kill_epoch)),
            ("on_kill_status", self.on_kill_status),
            ("limits_digest", self.sc.s.limits_digest),
            ("scope_ver", str(self.sc.gate.scope_ver)),
            # scopes still enforced although Redis no longer lists them (no verified lift)
            ("scope_kept", " ".join(sorted(self.sc.held.kept))),
        )

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _reason(state: NodeState) -> str:
    return "armed" if state is NodeState.ARMED else state.value.lower()
