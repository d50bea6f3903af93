"""`SidecarThread` built from a URL, and started when its sidecar cannot start: the trading
thread gets the sidecar's own error, nothing stays bound and no thread is left behind."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

import killswitch.inprocess
from killswitch.runtime.config import ListenAddr
from killswitch.runtime.errors import StartupError
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import OperatorKeys
from killswitch.store.store import Store
from kstest import wait_until, wait_until_async


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A TCP port another listener holds for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


class TestFromUrl:
    """The short constructor the README shows."""

    async def test_from_url_runs_a_sidecar_with_those_settings(
        self, redis: Redis, redis_url: str, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """from_url passes node, host, state_dir and any other setting through, and the
        resulting thread syncs the node's state like one built from settings."""
        await Store(redis, node).set_roster(["py-07"], "test")
        sc = SidecarThread.from_url(
            redis_url, node=node, host="py-07", state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5, operators=str(operator_keys.file),
        )  # fmt: skip
        assert (sc.settings.node, sc.settings.host, sc.settings.redis_url) == (
            node, "py-07", redis_url,
        )  # fmt: skip
        assert (sc.settings.state_dir, sc.settings.flush_interval) == (str(tmp_path), 0.05)
        with sc:
            await wait_until_async(lambda: sc.gate.view.state.value == "UNARMED")
            assert sc.gate.allow("o1", "AAPL", "BUY", 1) is False
        wait_until(lambda: not threads_named("killswitch-py-07"), what="the sidecar thread ends")

    def test_from_url_without_state_dir_keeps_no_state_file(self, redis_url: str) -> None:
        """Without state_dir the thread's settings say so (no remembered epoch on disk)."""
        sc = SidecarThread.from_url(redis_url, node="n", host="h")
        assert sc.settings.state_dir == ""
        assert sc.settings == SidecarSettings(node="n", host="h", redis_url=redis_url)

    def test_public_entry_point_is_the_same_class(self) -> None:
        """`killswitch.inprocess`, the documented import, names the sidecar's own classes."""
        assert killswitch.inprocess.SidecarThread is SidecarThread
        assert killswitch.inprocess.SidecarSettings is SidecarSettings


class TestStartFailure:
    """The sidecar refuses to start: the caller hears why, in its own thread."""

    def test_listen_path_that_is_a_regular_file(self, redis_url: str, tmp_path: Path) -> None:
        """A listen path holding a regular file: start() raises the sidecar's StartupError,
        keeps the file, and leaves no sidecar thread running."""
        path = tmp_path / "not-a-socket"
        path.write_text("keep me\n")
        settings = SidecarSettings(
            node="n", host="py-08", redis_url=redis_url, state_dir=str(tmp_path),
            listen=(ListenAddr("unix", path=str(path)),),
        )  # fmt: skip
        sc = SidecarThread(settings)
        with pytest.raises(StartupError, match="exists and is not a socket"):
            sc.start()
        assert path.read_text() == "keep me\n"
        wait_until(lambda: not threads_named("killswitch-py-08"), what="the thread ends")
        sc.stop()  # after a failed start: nothing to stop, and no error

    def test_metrics_port_in_use_releases_the_gate_socket(
        self, redis_url: str, tmp_path: Path, busy_port: int
    ) -> None:
        """A metrics port already taken: start() raises, and the gate socket the sidecar had
        bound first is released (a retry can bind it)."""
        sock = tmp_path / "g.sock"
        settings = SidecarSettings(
            node="n", host="py-09", redis_url=redis_url, state_dir=str(tmp_path),
            listen=(ListenAddr("unix", path=str(sock)),), metrics_port=busy_port,
        )  # fmt: skip
        with pytest.raises(StartupError, match=str(busy_port)):
            SidecarThread(settings).start()
        assert not sock.exists()
        wait_until(lambda: not threads_named("killswitch-py-09"), what="the thread ends")

    def test_stop_before_start_is_a_no_op(self, redis_url: str) -> None:
        """A thread never started can be stopped (e.g. by a finally block) without error."""
        sc = SidecarThread(SidecarSettings(node="n", host="py-10", redis_url=redis_url))
        sc.stop()
        assert sc.sidecar is None
        with pytest.raises(AssertionError, match="start"):
            _ = sc.gate
