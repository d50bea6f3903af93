"""`ThreadedFaultProxy`: a `FaultProxy` on its own event loop in a daemon thread, with plain
blocking methods, for tests that block while subprocesses talk through it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

from kstest.faultproxy import FaultProxy, ProxyStats

_T = TypeVar("_T")


class ThreadedFaultProxy:
    """A `FaultProxy` on its own event loop in a daemon thread, driven by blocking calls.

    Use it when the test blocks (waits on subprocesses, sleeps in sync code) while other
    processes talk through the proxy. Every method returns once the change is in effect.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self._args = (upstream_host, upstream_port, listen_host, listen_port)
        self._proxy: FaultProxy | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._require().port

    @property
    def url(self) -> str:
        return self._require().url

    def start(self, timeout: float = 5.0) -> ThreadedFaultProxy:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready: concurrent.futures.Future[FaultProxy] = concurrent.futures.Future()

        def main() -> None:
            asyncio.set_event_loop(loop)

            async def boot() -> bool:
                try:
                    proxy = await FaultProxy(*self._args).start()
                except Exception as exc:  # handed to start() in the caller's thread
                    ready.set_exception(exc)
                    return False
                ready.set_result(proxy)
                return True

            try:
                if loop.run_until_complete(boot()):
                    loop.run_forever()
                    loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="faultproxy", daemon=True)
        self._thread.start()
        try:
            self._proxy = ready.result(timeout)
        except BaseException:
            self._teardown(timeout)
            raise
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Abort every connection and end the thread. Idempotent."""
        if self._thread is None:
            return
        if self._proxy is not None and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._proxy.stop(), self._loop).result(timeout)
        self._teardown(timeout)

    def heal(self) -> None:
        self._call(lambda p: p.heal())

    def blackhole(self) -> None:
        self._call(lambda p: p.blackhole())

    def heal_new(self) -> None:
        self._call(lambda p: p.heal_new())

    def stall(self) -> None:
        self._call(lambda p: p.stall())

    def reset(self) -> None:
        self._call(lambda p: p.reset())

    def refuse(self) -> None:
        self._call(lambda p: p.refuse())

    def delay(self, seconds: float) -> None:
        self._call(lambda p: p.delay(seconds))

    def stats(self) -> ProxyStats:
        return self._call(lambda p: p.stats())

    def __enter__(self) -> ThreadedFaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _require(self) -> FaultProxy:
        if self._proxy is None:
            raise RuntimeError("ThreadedFaultProxy is not started")
        return self._proxy

    def _call(self, fn: Callable[[FaultProxy], _T], timeout: float = 5.0) -> _T:
        proxy, loop = self._require(), self._loop
        assert loop is not None

        async def run() -> _T:
            return fn(proxy)

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout)

    def _teardown(self, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        self._proxy = self._loop = self._thread = None
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed itself
                loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
