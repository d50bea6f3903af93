"""`--log-level` filters what is written; NO_COLOR turns the console renderer's colours off."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

from killswitch.runtime import logs


@pytest.fixture
def tty() -> Iterator[tuple[int, object]]:
    """A pseudo-terminal: the console renderer colours only a terminal."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", buffering=1)
    try:
        yield master, stream
    finally:
        stream.close()
        os.close(master)
        structlog.reset_defaults()


def written(master: int) -> str:
    return os.read(master, 65536).decode("utf-8", "replace")


class TestLogOptions:
    """The console writer as a terminal sees it."""

    @pytest.mark.parametrize(("no_color", "coloured"), [("", True), ("1", False)])
    def test_no_color(
        self,
        tty: tuple[int, object],
        monkeypatch: pytest.MonkeyPatch,
        no_color: str,
        coloured: bool,
    ) -> None:
        """With NO_COLOR set, no ANSI escape reaches the terminal; without it, colours do."""
        master, stream = tty
        monkeypatch.setenv("NO_COLOR", no_color)
        logs.configure(fmt="console", stream=stream)  # type: ignore[arg-type]
        structlog.get_logger().warning("SOMETHING_HAPPENED", host="or-01")
        logs.flush()
        out = written(master)
        assert "SOMETHING_HAPPENED" in out
        assert ("\x1b[" in out) is coloured, out

    def test_level_filters(self, tty: tuple[int, object]) -> None:
        """At `warning`, an info event is not written and a warning is."""
        master, stream = tty
        logs.configure(fmt="json", level="warning", stream=stream)  # type: ignore[arg-type]
        log = structlog.get_logger()
        log.info("QUIET_EVENT")
        log.warning("LOUD_EVENT")
        logs.flush()
        out = written(master)
        assert "LOUD_EVENT" in out and "QUIET_EVENT" not in out
