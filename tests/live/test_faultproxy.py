"""The fault proxy against a real redis-server: what each fault looks like to redis-py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from killswitch.sim.embedded import EmbeddedRedis
from kstest.faultproxy import FaultProxy, Mode
from kstest.faultthread import ThreadedFaultProxy


@pytest.fixture
async def proxy(redis_server: EmbeddedRedis) -> AsyncIterator[FaultProxy]:
    p = await FaultProxy("127.0.0.1", redis_server.port).start()
    try:
        yield p
    finally:
        await p.stop()


def client_for(port: int, socket_timeout: float = 5.0) -> redis.asyncio.Redis:
    """A client with retries off, so each fault surfaces on the first attempt."""
    return redis.asyncio.Redis(
        port=port, socket_timeout=socket_timeout, socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0), decode_responses=True,
    )  # fmt: skip


async def next_message(pubsub: PubSub, within: float) -> str | None:
    """The next published payload, or None at the deadline.

    get_message() returns None for an ignored subscribe confirmation too, so one None does
    not mean "nothing arrived": keep reading until the deadline.
    """
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        msg = await pubsub.get_message(timeout=left)
        if msg is not None:
            return str(msg["data"])
    return None


class TestPass:
    async def test_ping_through_proxy(self, proxy: FaultProxy) -> None:
        """A PING through a healed proxy works and its bytes are counted both ways."""
        client = client_for(proxy.port)
        try:
            assert await client.ping() is True
        finally:
            await client.aclose()
        stats = proxy.stats()
        assert stats.mode is Mode.PASS
        assert stats.connections_accepted == 1
        assert stats.bytes_to_upstream > 0
        assert stats.bytes_to_client > 0
        assert stats.bytes_dropped == 0

    async def test_stop_is_idempotent(self, redis_server: EmbeddedRedis) -> None:
        """Stopping twice is harmless and a stopped proxy refuses connections."""
        p = await FaultProxy("127.0.0.1", redis_server.port).start()
        port = p.port
        await p.stop()
        await p.stop()
        with pytest.raises(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            await w.wait_closed()


class TestBlackhole:
    async def test_blackhole_times_out_without_connection_error(self, proxy: FaultProxy) -> None:
        """On a blackholed live connection a call times out after socket_timeout, no reset."""
        client = client_for(proxy.port, socket_timeout=0.3)
        try:
            assert await client.ping() is True
            proxy.blackhole()
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.ping()
            assert time.monotonic() - started >= 0.3
            assert proxy.stats().bytes_dropped > 0
        finally:
            await client.aclose()

    async def test_blackhole_new_connection_times_out(self, proxy: FaultProxy) -> None:
        """A fresh connection is accepted but its handshake never answers: a timeout."""
        proxy.blackhole()
        client = client_for(proxy.port, socket_timeout=0.3)
        try:
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.ping()
        finally:
            await client.aclose()
        assert proxy.stats().connections_accepted == 1

    async def test_deaf_subscriber(self, proxy: FaultProxy, redis_server: EmbeddedRedis) -> None:
        """A subscriber behind a blackhole hears nothing, get_message never raises, and the
        messages it missed are silently lost."""
        sub_client = client_for(proxy.port)
        direct = client_for(redis_server.port)
        pubsub: PubSub = sub_client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe("deaf")
            assert await direct.publish("deaf", "before") == 1
            assert await next_message(pubsub, 2.0) == "before"

            proxy.blackhole()
            # Redis still counts the subscriber: from its side the socket is healthy.
            assert await direct.publish("deaf", "during") == 1
            # get_message() keeps returning None, never raising, for as long as we ask.
            assert await next_message(pubsub, 1.0) is None
            assert proxy.stats().bytes_dropped > 0

            # After the partition heals the same subscription hears new messages again; what
            # was published meanwhile is gone, and nothing ever said so.
            proxy.heal()
            assert await direct.publish("deaf", "after") == 1
            assert await next_message(pubsub, 2.0) == "after"
        finally:
            await pubsub.aclose()
            await sub_client.aclose()
            await direct.aclose()


class TestReset:
    async def test_reset_raises_connection_error(self, proxy: FaultProxy) -> None:
        """A reset tears live connections with an RST: a ConnectionError, not a timeout."""
        client = client_for(proxy.port, socket_timeout=5.0)
        try:
            assert await client.ping() is True
            proxy.reset()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            # New connections are reset too, until healed.
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            assert proxy.stats().connections_reset >= 2
            proxy.heal()
            assert await client.ping() is True
        finally:
            await client.aclose()

    async def test_refuse_then_heal_on_same_port(self, proxy: FaultProxy) -> None:
        """Refuse closes the port (ECONNREFUSED) and heal listens again on the same one."""
        port = proxy.port
        client = client_for(port)
        try:
            assert await client.ping() is True
            proxy.refuse()
            with pytest.raises(redis.exceptions.ConnectionError):
                await client.ping()
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
            proxy.heal()
            assert proxy.port == port
            assert await client.ping() is True
        finally:
            await client.aclose()


class TestDelayAndStall:
    async def test_delay_adds_latency_both_ways(self, proxy: FaultProxy) -> None:
        """With delay(0.2) a PING round trip takes at least 0.4 s (0.2 s each way)."""
        client = client_for(proxy.port)
        try:
            assert await client.ping() is True
            proxy.delay(0.2)
            started = time.monotonic()
            assert await client.ping() is True
            assert time.monotonic() - started >= 0.39
        finally:
            await client.aclose()

    async def test_delay_preserves_order(self, proxy: FaultProxy) -> None:
        """Pipelined commands under delay come back complete and in order."""
        client = client_for(proxy.port)
        try:
            await client.delete("ks:fp:order")
            proxy.delay(0.05)
            pipe = client.pipeline(transaction=False)
            for _ in range(200):
                pipe.incr("ks:fp:order")
            assert await pipe.execute() == list(range(1, 201))
        finally:
            await client.aclose()

    async def test_stall_holds_bytes_until_heal(self, proxy: FaultProxy) -> None:
        """Under stall a command gets no reply; after heal the held reply arrives."""
        client = client_for(proxy.port, socket_timeout=5.0)
        try:
            assert await client.ping() is True
            proxy.stall()
            task = asyncio.create_task(client.ping())
            done, _ = await asyncio.wait({task}, timeout=0.3)
            assert not done
            proxy.heal()
            assert await asyncio.wait_for(task, 5.0) is True
        finally:
            await client.aclose()


class TestThreaded:
    def test_threaded_proxy_from_blocking_code(self, redis_server: EmbeddedRedis) -> None:
        """The threaded proxy keeps serving while sync code blocks, and obeys mode calls."""
        with ThreadedFaultProxy("127.0.0.1", redis_server.port) as p:
            client = redis.Redis(port=p.port, socket_timeout=0.3, retry=None)
            try:
                assert client.ping() is True
                p.blackhole()
                with pytest.raises(redis.exceptions.TimeoutError):
                    client.ping()
                p.reset()
                with pytest.raises(redis.exceptions.ConnectionError):
                    client.ping()
                p.heal()
                assert client.ping() is True
                stats = p.stats()
                assert stats.connections_reset >= 1
                assert stats.bytes_dropped > 0
            finally:
                client.close()
            p.stop()
        p.stop()
