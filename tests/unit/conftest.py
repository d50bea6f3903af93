"""tests/unit: the pure tests (`./dev test unit` runs them in seconds, no server needed).

A unit test starts no redis-server, no subprocess and opens no network connection: asking
for a server fixture is a collection error, and starting a process or connecting a socket
fails the test, naming tests/live as where it belongs.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

UNIT = Path(__file__).resolve().parent
LIVE_FIXTURES = frozenset({"redis_server", "redis_url", "redis", "own_redis", "operator_keys"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A unit test that asks for a server (or ssh-keygen's keys) is refused at collection."""
    for item in items:
        used = LIVE_FIXTURES & set(getattr(item, "fixturenames", ()))
        if UNIT in Path(item.path).parents and used:
            raise pytest.UsageError(
                f"{item.nodeid} uses {', '.join(sorted(used))}: it is a live test (tests/live)"
            )


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a unit test {what}: it belongs in tests/live")

    return refuse


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """No process started and no socket connected while a unit test runs."""
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("started a process"))
    monkeypatch.setattr(socket.socket, "connect", _refuse("opened a connection"))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("opened a connection"))
