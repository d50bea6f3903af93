"""The Sentinel harness: a real primary, replica and three Sentinels that really fail over."""

from __future__ import annotations

import asyncio
import socket

import pytest
import redis.asyncio
from redis.asyncio.sentinel import Sentinel

from killswitch.store.redisconn import parse_sentinel_url
from kstest.sentinel import SentinelCluster

pytestmark = pytest.mark.slow


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


class TestSentinelCluster:
    async def test_failover_promotes_replica_and_client_follows(self) -> None:
        """After SIGKILL of the primary the replica is promoted and master_for reads the key."""
        with SentinelCluster("ks-harness") as cluster:
            parsed = parse_sentinel_url(cluster.url)
            assert parsed.sentinels == tuple(cluster.sentinel_addresses)
            assert parsed.service_name == "ks-harness"
            assert len(cluster.sentinel_urls) == 3

            old_primary = cluster.primary_port
            (replica,) = cluster.replica_ports
            direct = redis.asyncio.Redis(port=old_primary, decode_responses=True)
            try:
                await direct.set("ks:harness:key", "survives")
                # Replication is asynchronous: make sure the replica has it before the crash.
                assert await direct.wait(1, 2000) == 1
            finally:
                await direct.aclose()

            assert cluster.kill_primary() == old_primary
            new_primary = await asyncio.to_thread(cluster.wait_for_failover, 15.0)
            assert new_primary == replica == cluster.primary_port

            sentinel = Sentinel(cluster.sentinel_addresses, socket_timeout=0.5)
            master = sentinel.master_for("ks-harness", socket_timeout=0.5, decode_responses=True)
            try:
                assert await sentinel.discover_master("ks-harness") == ("127.0.0.1", new_primary)
                assert await master.get("ks:harness:key") == "survives"
            finally:
                await master.aclose()
                await sentinel.aclose()
            ports = [*cluster.sentinel_ports, new_primary]

        assert cluster.base_dir is None
        assert all(refuses(p) for p in ports)
        cluster.stop()  # idempotent
