"""The in-process gate for Python trading processes: a `Sidecar` run in a background thread.

The trading thread calls `gate.allow(...)`, a local check with no network round trip; the
sidecar's sync loop runs on its own event loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from killswitch.core.enforce.gate import Gate
from killswitch.runtime.config import default_state_dir
from killswitch.sidecar.notify import StateCallback
from killswitch.sidecar.onkill import ON_KILL_TERM_WAIT_S
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.store.redisconn import connect

T = TypeVar("T")

__all__ = ["SidecarSettings", "SidecarThread", "StateCallback"]


async def _call(fn: Callable[..., T], *args: Any) -> T:
    return fn(*args)


class SidecarThread:
    """Runs a `Sidecar` in a background thread for a Python trading process.

    The trading thread calls `sidecar.gate.allow(...)`: a local check, no network round trip.
    It keeps a state file (the settings' `state_dir`, else the default state directory)
    unless `memoryless=True` says it must not.
    """

    def __init__(
        self, settings: SidecarSettings, *, registry: CollectorRegistry | None = None
    ) -> None:
        if not settings.state_dir and not settings.memoryless:
            # A gate with memory by default: without it every start would need an admission,
            # and a proof could never be bound to this host across restarts.
            settings = replace(settings, state_dir=default_state_dir())
        self.settings = settings
        self.registry = registry
        # Made by the thread itself: a SidecarThread never started holds no loop to leak.
        self._loop: asyncio.AbstractEventLoop
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"killswitch-{settings.host}", daemon=True
        )
        self.sidecar: Sidecar | None = None
        self._error: BaseException | None = None

    @classmethod
    def from_url(cls, redis_url: str, *, node: str, host: str, **kw: Any) -> SidecarThread:
        state_dir = kw.pop("state_dir", "")
        return cls(
            SidecarSettings(node=node, host=host, redis_url=redis_url, state_dir=state_dir, **kw)
        )

    @property
    def gate(self) -> Gate:
        assert self.sidecar is not None, "start() the SidecarThread first"
        return self.sidecar.gate

    def subscribe(self, callback: StateCallback) -> None:
        """`callback(state, epoch, reason)` at once and on every change of what the gate enforces.

        It runs on the sidecar's thread: hand the work to the trading thread and return.
        """
        assert self.sidecar is not None, "start() the SidecarThread first"
        notify = self.sidecar.notify
        asyncio.run_coroutine_threadsafe(_call(notify.subscribe, callback), self._loop).result(10)

    def flat(self, callback: StateCallback, epoch: int) -> str:
        """Report that the process behind `callback` cancelled its resting orders after the
        kill at `epoch`; "" when recorded, else why not."""
        assert self.sidecar is not None, "start() the SidecarThread first"
        notify = self.sidecar.notify
        fut = asyncio.run_coroutine_threadsafe(_call(notify.flat, callback, epoch), self._loop)
        why: str = fut.result(10)
        self._loop.call_soon_threadsafe(self.sidecar._wake.set)
        return why

    def _run(self) -> None:
        self._loop = loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._main())
        loop.close()

    async def _main(self) -> None:
        try:
            redis = connect(self.settings.redis_url, socket_timeout=self.settings.stale_after)
            self.sidecar = Sidecar(self.settings, redis, registry=self.registry)
            await self.sidecar.start()
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self.sidecar._stop.wait()
        finally:
            await self.sidecar.stop()
            await redis.aclose()

    def start(self) -> SidecarThread:
        self._thread.start()
        self._ready.wait()
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self.sidecar is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.sidecar._stop.set)
            # A running --on-kill command is given its grace and then ended (sidecar.onkill).
            self._thread.join(timeout=10 + self.settings.on_kill_grace + 2 * ON_KILL_TERM_WAIT_S)

    def __enter__(self) -> SidecarThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
