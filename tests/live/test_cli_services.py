"""The service verbs run in process through the CLI's `main`: a sidecar that runs until
SIGTERM and exits 0, an aggregator refused by a Redis that does not persist (2), and a load
generator that reports what the gate answered.

Real redis-servers, a real sidecar (process-wide signal handlers are saved and restored around
each in-process service, so the test process keeps its own).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from killswitch.cli.main import main
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from killswitch.runtime.config import ListenAddr
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import OperatorKeys
from killswitch.store.keys import NodeKeys
from kstest import wait_until

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@pytest.fixture
def own_signals() -> Iterator[None]:
    """The process's signal handlers as they were, whatever a service run here installs."""
    saved = {s: signal.getsignal(s) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


class TestSidecarVerb:
    """`killswitch sidecar` runs until SIGTERM, then stops cleanly with exit 0."""

    def test_runs_reports_and_exits_0_on_sigterm(
        self, own_signals: None, redis_url: str, node: str, operator_keys: OperatorKeys,
        tmp_path: Path,
    ) -> None:  # fmt: skip
        """The sidecar reports to Redis, answers on its socket, and SIGTERM ends it with 0."""
        report = NodeKeys(node).host("h1").report
        r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        running = threading.Event()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a stray SIGTERM must not end pytest

        sock = tmp_path / "gate.sock"
        replies: list[str] = []

        def stop_once_reporting() -> None:
            wait_until(lambda: r.exists(report), 20, 0.02, "the sidecar reports")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.settimeout(10)
                c.connect(str(sock))
                c.sendall(b"PING\n")
                replies.append(c.makefile().readline().strip())
            if running.is_set():
                os.kill(os.getpid(), signal.SIGTERM)

        stopper = threading.Thread(target=stop_once_reporting, daemon=True)
        running.set()
        stopper.start()
        try:
            code = main([
                "sidecar", "--node", node, "--host", "h1", "--redis", redis_url,
                "--listen", f"unix:{sock}", "--state-dir", str(tmp_path),
                "--operators", str(operator_keys.file),
            ])  # fmt: skip
        finally:
            running.clear()
            stopper.join(30)
            r.close()
        assert code == EXIT_OK
        assert replies == ["PONG UNARMED 0"]  # it served its gate while it ran
        assert not sock.exists()  # and removed its socket on stop


class TestAggregatorVerb:
    """`killswitch aggregator` refuses to start where it cannot keep its promise."""

    def test_require_durable_on_a_redis_without_aof_exits_2(
        self, own_signals: None, redis_url: str, node: str, operator_keys: OperatorKeys,
        capsys: pytest.CaptureFixture[str],
    ) -> None:  # fmt: skip
        """--require-durable and a Redis with appendonly no: exit 2, saying how to fix it."""
        r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert r.config_get("appendonly") == {"appendonly": "no"}
        finally:
            r.close()
        code = main([
            "aggregator", "--node", node, "--hosts", "h1", "--redis", redis_url,
            "--require-durable", "--operators", str(operator_keys.file),
        ])  # fmt: skip
        err = capsys.readouterr().err
        assert code == EXIT_USAGE
        assert "killswitch aggregator: refused: Redis is not durable (" in err
        assert "Run it with appendonly yes" in err and "Traceback" not in err

    def test_credentials_redis_refuses_end_the_start_with_exit_1(
        self, own_signals: None, own_redis: EmbeddedRedis, node: str,
        operator_keys: OperatorKeys, capsys: pytest.CaptureFixture[str],
    ) -> None:  # fmt: skip
        """A wrong password is not waited out like a Redis not up yet: exit 1 at once, the
        refusal named, the password never shown."""
        r = redis_sync.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            r.acl_setuser("agg", enabled=True, passwords=["+right-pw"], keys=["*"],
                          channels=["*"], commands=["+@all"])  # fmt: skip
        finally:
            r.close()
        url = own_redis.url.replace("redis://", "redis://agg:wrong-pw@", 1)
        code = main([
            "aggregator", "--node", node, "--hosts", "h1", "--redis", url,
            "--operators", str(operator_keys.file),
        ])  # fmt: skip
        err = capsys.readouterr().err
        assert code == EXIT_FAILED
        assert "killswitch aggregator: cannot start: Redis at redis://agg:***@" in err
        assert ": refused credentials: " in err and "wrong-pw" not in err


class TestLoadgenVerb:
    """`killswitch loadgen` sends orders to a gate and prints what it answered."""

    def test_all_blocked_by_an_unarmed_node(
        self, redis_url: str, node: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Against an unarmed node's sidecar every order is blocked; the counts add up."""
        sock = tmp_path / "gate.sock"
        settings = SidecarSettings(
            node=node, host="h1", redis_url=redis_url,
            listen=(ListenAddr("unix", path=str(sock)),),
        )  # fmt: skip
        with SidecarThread(settings):
            code = main(["loadgen", "--listen", f"unix:{sock}", "--rate", "50",
                         "--duration", "0.4", "--name", "t"])  # fmt: skip
        assert code == EXIT_OK
        stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert stats["sent"] > 0 and stats["errors"] == 0
        assert (stats["allowed"], stats["blocked"]) == (0, stats["sent"])
