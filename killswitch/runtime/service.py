"""The lifecycle every long-running killswitch process shares: start, wait for a signal, stop.

SIGTERM and SIGINT only set an event; the service then drains through its own idempotent
`stop()`. Nothing here knows what the service does.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


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
