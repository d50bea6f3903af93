"""A real redis-server started on a free loopback port, for the demo and the test suite.

It runs the actual `redis-server` binary (never a Python stand-in) and must never touch a
Redis it did not start: every instance gets its own port and its own data directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import redis

from killswitch.store.scripts import sidecar_library

INSTALL_HINT = (
    "redis-server was not found on PATH. Install it (Debian/Ubuntu: "
    "`sudo apt-get install -y redis-server`) or set KILLSWITCH_REDIS_SERVER to its path."
)


def stop_process(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not ended within `timeout` seconds; reaped either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RedisServerMissing(RuntimeError):
    """No redis-server binary could be found."""


def find_redis_server() -> str:
    """Return the redis-server binary: env KILLSWITCH_REDIS_SERVER, PATH, or /usr/bin."""
    explicit = os.environ.get("KILLSWITCH_REDIS_SERVER")
    if explicit:
        return explicit
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if not found:
        raise RedisServerMissing(INSTALL_HINT)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on `port`, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s") from None
            time.sleep(0.01)


class EmbeddedRedis:
    """One redis-server process on 127.0.0.1 with its own data directory.

    `start()` / `stop()` are idempotent; `kill()` sends SIGKILL (a crash, not a shutdown);
    `restart()` starts it again on the same port and directory, so AOF data survives when
    `appendonly=True` and is gone otherwise. Every start also loads the sidecars' Functions
    library (what a deployment's aggregator does at its start) unless `functions=False` (a
    replica, a cluster node, a server that needs credentials or TLS).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        data_dir: Path | None = None,
        binary: str | None = None,
        functions: bool = True,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.port = port or free_port()
        self.appendonly = appendonly
        self.extra_args = list(extra_args)
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="ks-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.functions = functions

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.proc = subprocess.Popen(
            self.args(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            self.stop()
            log = self.data_dir / "redis.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"redis-server did not start on port {self.port}:\n{tail}") from None
        if self.functions:
            self.load_functions()
        return self

    def load_functions(self) -> None:
        """`FUNCTION LOAD REPLACE` of the sidecars' library (store.scripts), as an aggregator
        does at its start."""
        with redis.Redis(port=self.port, socket_timeout=10) as client:
            client.function_load(sidecar_library().code, replace=True)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, 5.0)

    def kill(self) -> None:
        """SIGKILL: what a crashed or OOM-killed Redis looks like to its clients."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def restart(self, *, empty: bool = False, timeout: float = 10.0) -> None:
        """Start again on the same port; `empty=True` wipes the data directory first."""
        self.kill()
        if empty:
            for child in self.data_dir.iterdir():
                if child.name != "redis.log":
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@contextlib.contextmanager
def embedded_redis(**kwargs: object) -> Iterator[EmbeddedRedis]:
    """`with embedded_redis() as r:` a started server, cleaned up afterwards."""
    server = EmbeddedRedis(**kwargs)  # type: ignore[arg-type]
    try:
        yield server.start()
    finally:
        server.cleanup()
