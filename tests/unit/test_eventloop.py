"""The sidecar's event loop choice (runtime.eventloop): a loop that cannot be had is a
configuration error at start, never a traceback."""

from __future__ import annotations

import sys

import pytest

from killswitch.runtime.errors import StartupError
from killswitch.runtime.eventloop import loop_factory, run


class TestLoopFactory:
    def test_uvloop_missing_is_exit_2_naming_it(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without uvloop importable (no wheel for the platform) --event-loop uvloop is a
        StartupError with exit code 2 that names uvloop."""
        monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
        with pytest.raises(StartupError, match="event-loop: uvloop cannot be loaded") as e:
            loop_factory("uvloop")
        assert e.value.code == 2

    def test_an_unknown_name_is_refused_and_the_coroutine_closed(self) -> None:
        """A name that is no loop is refused before any loop starts, and the coroutine that
        would have run is closed (no 'never awaited' warning)."""

        async def main() -> int:
            return 1

        coro = main()
        with pytest.raises(StartupError, match="'trio' is not one of asyncio, uvloop"):
            run(coro, "trio")
        assert coro.cr_frame is None  # closed
