"""redisconn: URL parsing (pure) and real clients for plain, unix-socket and Sentinel URLs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.exceptions

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.redisconn import SentinelURL, connect, parse_sentinel_url
from kstest.faultproxy import FaultProxy
from kstest.sentinel import SentinelCluster


class TestParseSentinelURL:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (
                "redis+sentinel://127.0.0.1:26379/mymaster",
                SentinelURL((("127.0.0.1", 26379),), "mymaster"),
            ),
            (
                "redis+sentinel://a:1,b:2,c:3/svc/4",
                SentinelURL((("a", 1), ("b", 2), ("c", 3)), "svc", 4),
            ),
            (
                "redis+sentinel://s1,s2:5000/svc/",
                SentinelURL((("s1", 26379), ("s2", 5000)), "svc"),
            ),
            (
                "redis+sentinel://[::1]:26380,[fe80::1]/ks.primary-1/0",
                SentinelURL((("::1", 26380), ("fe80::1", 26379)), "ks.primary-1"),
            ),
            (
                "redis+sentinel://:p%40ss@h:1/svc",
                SentinelURL((("h", 1),), "svc", password="p@ss"),
            ),
            (
                "redis+sentinel://user:pw@h:1/svc/2",
                SentinelURL((("h", 1),), "svc", 2, username="user", password="pw"),
            ),
            (
                "redis+sentinel://secret@h:1/svc",
                SentinelURL((("h", 1),), "svc", password="secret"),
            ),
        ],
    )
    def test_valid(self, url: str, expected: SentinelURL) -> None:
        """Each valid URL parses to exactly the expected addresses, service, db and auth."""
        assert parse_sentinel_url(url) == expected

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("redis://h:1/svc", "not a redis\\+sentinel:// URL"),
            ("redis+sentinel:///svc", "no sentinel addresses"),
            ("redis+sentinel://h:1", "no service name"),
            ("redis+sentinel://h:1/", "no service name"),
            ("redis+sentinel://h:1,,h:2/svc", "empty sentinel address"),
            ("redis+sentinel://h:0/svc", "bad sentinel port"),
            ("redis+sentinel://h:70000/svc", "bad sentinel port"),
            ("redis+sentinel://h:x/svc", "bad sentinel port"),
            ("redis+sentinel://:1/svc", "has no host"),
            ("redis+sentinel://::1/svc", "must be in brackets"),
            ("redis+sentinel://[::1/svc", "unterminated IPv6"),
            ("redis+sentinel://[::1]x/svc", "expected ':port'"),
            ("redis+sentinel://h:1/svc/x", "bad db"),
            ("redis+sentinel://h:1/svc/-1", "bad db"),
            ("redis+sentinel://h:1/svc/0/extra", "too many path segments"),
            ("redis+sentinel://h:1/bad name", "bad service name"),
            ("redis+sentinel://h:1/svc?db=1", "query strings"),
        ],
    )
    def test_invalid(self, url: str, message: str) -> None:
        """Each malformed URL is refused with a ValueError that says what is wrong."""
        with pytest.raises(ValueError, match=message):
            parse_sentinel_url(url)


class TestConnectPlain:
    async def test_redis_url(self, redis_server: EmbeddedRedis) -> None:
        """A redis:// URL gives a decoding client that carries its client name."""
        client = connect(redis_server.url, client_name="ks-test-plain")
        try:
            await client.set("ks:conn:plain", "v")
            assert await client.get("ks:conn:plain") == "v"
            assert await client.client_getname() == "ks-test-plain"
        finally:
            await client.aclose()

    async def test_unix_url(self, tmp_path: Path) -> None:
        """A unix:// URL reaches a redis-server listening on a unix socket."""
        sock = tmp_path / "redis.sock"
        with EmbeddedRedis(extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"]):
            client = connect(f"unix://{sock}?db=1")
            try:
                assert await client.ping() is True
                assert (await client.client_info())["db"] == 1
            finally:
                await client.aclose()

    @pytest.mark.parametrize(
        "url", ["http://h:1/0", "127.0.0.1:6379", "sentinel://h:1/svc", "rediss+sentinel://h/s"]
    )
    def test_unsupported_url(self, url: str) -> None:
        """Anything but redis, rediss, unix and redis+sentinel URLs is refused up front."""
        with pytest.raises(ValueError, match="scheme"):
            connect(url)

    async def test_no_hidden_retries(self, redis_server: EmbeddedRedis) -> None:
        """Behind a blackhole a call times out on its first attempt: one connection, no retry."""
        proxy = await FaultProxy("127.0.0.1", redis_server.port).start()
        client = connect(proxy.url, socket_timeout=0.3)
        try:
            proxy.blackhole()
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.ping()
            assert proxy.stats().connections_accepted == 1
        finally:
            await client.aclose()
            await proxy.stop()


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster("ks-conn") as c:
        yield c


class TestConnectSentinel:
    @pytest.mark.slow
    async def test_same_client_follows_failover(self, cluster: SentinelCluster) -> None:
        """One client from a redis+sentinel:// URL keeps working across a primary failover."""
        client = connect(cluster.url, socket_timeout=0.5, client_name="ks-test-sentinel")
        try:
            await client.set("ks:conn:failover", "kept")
            assert await client.wait(1, 2000) == 1
            assert (await client.info("server"))["tcp_port"] == cluster.primary_port
            old = cluster.kill_primary()

            started = time.monotonic()
            deadline = started + 15.0
            while True:
                try:
                    value = await client.get("ks:conn:failover")
                    break
                except redis.exceptions.ConnectionError:
                    # Includes MasterNotFoundError while the Sentinels mark the primary down.
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
            assert value == "kept"
            port = (await client.info("server"))["tcp_port"]
            assert port != old
            assert port == await asyncio.to_thread(cluster.wait_for_failover, 10.0)
            assert await client.client_getname() == "ks-test-sentinel"
        finally:
            await client.aclose()
