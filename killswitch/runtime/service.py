"""The lifecycle every long-running killswitch process shares: start, wait for a signal, stop.

SIGTERM and SIGINT only set an event; the service then drains through its own idempotent
`stop()`. Nothing here knows what the service does.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from killswitch.store.redisconn import classify


async def run_until_signalled(
    start: Callable[[], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await start()
    try:
        await stopping.wait()
    finally:
        await stop()


async def until_reachable(
    step: Callable[[], Awaitable[None]],
    stopping: asyncio.Event,
    warn: Callable[[str], None],
    retry_s: float = 1.0,
) -> bool:
    """Runs `step` until it gets through to Redis; False if `stopping` is set first.

    A service in a container stack may start before Redis does (podman does not gate start
    order on health), so an unreachable Redis at start is a wait, not a crash. Credentials
    Redis refuses (a wrong password, an ACL without the needed keys or commands) propagate:
    waiting would not fix them, and a monitor waiting silently protects nothing.
    """
    failures = 0
    while not stopping.is_set():
        try:
            await step()
            return True
        except (RedisError, OSError) as e:
            if classify(e).kind == "refused credentials":
                raise
            if failures == 0:
                warn(f"{type(e).__name__}: {e}")
            failures += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), retry_s)
    return False
