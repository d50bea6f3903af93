"""Any start order: a service started before Redis waits for it instead of crashing.

A container engine that does not gate `depends_on` on health (podman) may start the
aggregator and the sidecars before Redis listens; the stack must still come up by itself.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import redis as redis_sync

from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.sim.operators import OperatorKeys
from killswitch.store.keys import NodeKeys
from kstest import GateClient, Proc, wait_until


def killswitch_proc(tmp_path: Path, name: str, *args: str) -> Proc:
    return Proc(name, [sys.executable, "-m", "killswitch", *args], tmp_path / f"{name}.log")


class TestStartedBeforeRedis:
    def test_aggregator_waits_for_redis_then_stores_the_roster(
        self, tmp_path: Path, node: str, operator_keys: OperatorKeys
    ) -> None:
        """An aggregator started with Redis down keeps running and stores its roster once Redis is up."""
        server = EmbeddedRedis(port=free_port())
        agg = killswitch_proc(
            tmp_path, "aggregator", "aggregator", "--node", node, "--hosts", "h1,h2",
            "--redis", server.url, "--metrics-port", str(free_port()),
            "--operators", str(operator_keys.file),
        )  # fmt: skip
        agg.start(dict(os.environ))
        try:
            wait_until(lambda: agg.events("redis_unreachable_at_start"), what="the wait logged")
            assert agg.popen is not None and agg.popen.poll() is None
            server.start()
            client = redis_sync.Redis.from_url(server.url, decode_responses=True)
            roster = wait_until(
                lambda: client.smembers(NodeKeys(node).roster), what="the roster stored"
            )
            assert roster == {"h1", "h2"}
            assert agg.logged("AGGREGATOR_STARTED")
            client.close()
        finally:
            agg.stop()
            server.cleanup()
        assert "Traceback" not in agg.log_path.read_text()

    def test_aggregator_stopped_while_waiting_exits_cleanly(
        self, tmp_path: Path, node: str, operator_keys: OperatorKeys
    ) -> None:
        """SIGTERM while the aggregator still waits for Redis ends it with exit 0, no traceback."""
        agg = killswitch_proc(
            tmp_path, "aggregator", "aggregator", "--node", node, "--hosts", "h1",
            "--redis", f"redis://127.0.0.1:{free_port()}/0",
            "--operators", str(operator_keys.file),
        )  # fmt: skip
        agg.start(dict(os.environ))
        popen = agg.popen
        assert popen is not None
        try:
            wait_until(lambda: agg.events("redis_unreachable_at_start"), what="the wait logged")
            popen.send_signal(signal.SIGTERM)
            assert popen.wait(10) == 0
        finally:
            agg.stop()
        assert "Traceback" not in agg.log_path.read_text()

    def test_sidecar_blocks_until_redis_is_up(self, tmp_path: Path, node: str) -> None:
        """A sidecar started with Redis down serves its gate (blocking) and syncs once Redis is up."""
        server = EmbeddedRedis(port=free_port())
        gate = f"tcp:127.0.0.1:{free_port()}"
        sidecar = killswitch_proc(
            tmp_path, "sidecar", "sidecar", "--node", node, "--host", "h1", "--listen", gate,
            "--redis", server.url, "--state-dir", str(tmp_path / "state"),
        )  # fmt: skip
        sidecar.start(dict(os.environ))
        try:
            with wait_until(lambda: GateClient(gate), what="the gate listening") as client:
                assert client.order("o1").startswith("BLOCK o1 0 ")
            server.start()
            wait_until(lambda: sidecar.events("SYNC_RECOVERED"), what="the sidecar synced")
            with GateClient(gate) as client:
                assert client.ping() == "PONG UNARMED 0"
        finally:
            sidecar.stop()
            server.cleanup()
        assert "Traceback" not in sidecar.log_path.read_text()
