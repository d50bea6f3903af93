"""The event loop a service runs on: asyncio's own, or uvloop's (libuv under the same asyncio
API). Chosen once, at start; nothing else in the service knows which one it got.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from killswitch.core.settings.options import option
from killswitch.runtime.errors import StartupError

T = TypeVar("T")
LOOPS: tuple[str, ...] = option("event-loop").choices  # the one table's choices


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the loop `name` (`--event-loop`); a StartupError when it cannot be had."""
    if name == "uvloop":
        try:
            import uvloop
        except ImportError as e:  # no wheel for this platform (Windows)
            raise StartupError(f"event-loop: uvloop cannot be loaded here ({e})", 2) from None
        return uvloop.new_event_loop
    if name != "asyncio":
        raise StartupError(f"event-loop: {name!r} is not one of {', '.join(LOOPS)}", 2)
    return asyncio.new_event_loop


def running() -> str:
    """The name of the loop this coroutine runs on (the SIDECAR_STARTED line says it)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """`asyncio.run(main)` on the loop named (`asyncio.run` takes no factory before 3.12)."""
    try:
        factory = loop_factory(loop)
    except BaseException:
        main.close()  # never awaited: say so quietly, not with a RuntimeWarning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
