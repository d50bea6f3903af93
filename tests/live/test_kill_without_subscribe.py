"""A kill by an operator whose Redis ACL allows publishing the kill notice but not
subscribing to confirmations: both transports fall back to polling and still prove the kill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from redis.asyncio import Redis

from killswitch.ops import control
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store import lean
from killswitch.store.keys import NodeKeys
from killswitch.store.leanclient import LeanRedis, LeanStore, drive
from killswitch.store.store import Store
from kstest import wait_until

NODE = "smars"


@pytest.fixture
def server_with_sidecar(own_redis: EmbeddedRedis, tmp_path: Path) -> Iterator[SidecarThread]:
    """A node of one host, py-14, whose sidecar (full rights) runs in this process; and an
    ACL user `deaf` that may publish on the node's channels but subscribe to none."""
    keys = NodeKeys(NODE)
    with redis_sync.Redis(port=own_redis.port, decode_responses=True) as admin:
        admin.sadd(keys.roster, "py-14")
        admin.execute_command(
            "ACL", "SETUSER", "deaf", "on", ">pw", "~*", "resetchannels", f"&{keys.events}", "+@all"
        )
    settings = SidecarSettings(
        node=NODE, host="py-14", redis_url=own_redis.url, state_dir=str(tmp_path),
        flush_interval=0.05, stale_after=0.5,
    )  # fmt: skip
    with SidecarThread(settings) as sc:
        wait_until(lambda: sc.gate.view.state.value == "UNARMED", what="the sidecar's first read")
        yield sc


def deaf_url(server: EmbeddedRedis) -> str:
    return f"redis://deaf:pw@127.0.0.1:{server.port}/0"


class TestKillWithoutSubscribe:
    """Confirmations heard by polling when pub/sub is denied: slower, never unproven."""

    async def test_redis_py_transport_polls_and_proves_the_kill(
        self, own_redis: EmbeddedRedis, server_with_sidecar: SidecarThread
    ) -> None:
        """The service transport: SUBSCRIBE is refused, the kill still waits for and lists
        the host's confirmation, and the host blocks."""
        client = Redis.from_url(deaf_url(own_redis), decode_responses=True)
        try:
            with pytest.raises(Exception, match="no permissions to access one of the channels"):
                await client.execute_command("SUBSCRIBE", NodeKeys(NODE).confirms)
            killed = await control.kill(Store(client, NODE), reason="t", operator="op", timeout=10)
        finally:
            await client.aclose()
        assert killed.code == control.EXIT_OK, killed.report
        assert killed.report["confirmed"] == ["py-14"]
        assert server_with_sidecar.gate.allow("o1", "AAPL", "BUY", 1) is False

    def test_lean_transport_polls_and_proves_the_kill(
        self, own_redis: EmbeddedRedis, server_with_sidecar: SidecarThread
    ) -> None:
        """The CLI's lean transport: the same fallback, the same proof."""
        url = lean.parse(deaf_url(own_redis))
        assert url is not None
        client = LeanRedis(url)
        try:
            store = LeanStore(client, NODE)
            killed = drive(control.kill(store, reason="t", operator="op", timeout=10))
        finally:
            drive(client.aclose())
        assert killed.code == control.EXIT_OK, killed.report
        assert killed.report["confirmed"] == ["py-14"]
        assert server_with_sidecar.gate.allow("o1", "AAPL", "BUY", 1) is False
