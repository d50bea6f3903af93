"""The lean client's failure paths on a real redis-server: a transaction Redis refuses, a
script that errors, a subscription an ACL denies or Redis cuts, and attributes it lacks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store import lean
from killswitch.store.lean import LeanURL, ReplyError
from killswitch.store.leanclient import LeanRedis, LeanStore, LeanWake, drive


@pytest.fixture
def client(redis_url: str) -> Iterator[LeanRedis]:
    c = LeanRedis(lean.parse(redis_url) or LeanURL(), client_name="ks-lean-edges")
    try:
        yield c
    finally:
        drive(c.aclose())


class TestConnection:
    """The one command connection, when Redis closes it."""

    def test_closed_connection_raises_once_then_reconnects(
        self, client: LeanRedis, redis_server: EmbeddedRedis
    ) -> None:
        """A command on a connection Redis has closed raises ConnectionError (no hang, no
        wrong reply), and the next command opens a new connection."""
        first = drive(client.execute_command("CLIENT", "ID"))
        with redis.Redis(port=redis_server.port) as admin:
            assert admin.client_kill_filter(_id=first) == 1
        with pytest.raises(ConnectionError, match="closed the connection"):
            drive(client.execute_command("PING"))
        assert drive(client.execute_command("CLIENT", "ID")) != first


class TestPipelines:
    """MULTI transactions and plain pipelines that Redis answers with an error."""

    def test_transaction_refused_at_queue_time_names_the_bad_command(
        self, client: LeanRedis, node: str
    ) -> None:
        """A command Redis refuses while queueing aborts the whole MULTI (nothing runs) and
        the error raised is that command's, not the bare EXECABORT."""
        key = f"ks:lean:{node}"
        pipe = client.pipeline(transaction=True)
        pipe.execute_command("SET", key, "written")
        pipe.execute_command("SET", key)  # wrong number of arguments: refused when queued
        with pytest.raises(ReplyError, match=r"^ERR wrong number of arguments for 'set'"):
            drive(pipe.execute())
        assert drive(client.execute_command("EXISTS", key)) == 0
        assert drive(client.execute_command("PING")) is True

    def test_pipeline_error_is_raised_unless_asked_for_in_place(
        self, client: LeanRedis, node: str
    ) -> None:
        """A command failing at run time raises from execute(); with raise_on_error=False
        it comes back in its place and the others' replies are intact."""
        key = f"ks:lean:{node}"
        drive(client.execute_command("SET", key, "text"))
        for raise_on_error in (True, False):
            pipe = client.pipeline()
            pipe.execute_command("INCR", key).execute_command("GET", key)
            if raise_on_error:
                with pytest.raises(ReplyError, match="not an integer"):
                    drive(pipe.execute())
            else:
                failed, value = drive(pipe.execute(raise_on_error=False))
                assert isinstance(failed, ReplyError) and value == "text"


class TestScripts:
    """EVALSHA falls back to EVAL only for NOSCRIPT."""

    def test_script_error_is_raised_first_via_eval_then_via_evalsha(
        self, client: LeanRedis, node: str
    ) -> None:
        """A script that fails reports its own error whether the server had it cached or not,
        and is not re-sent by EVAL once cached."""
        script = client.register_script(f"-- {node}\nreturn redis.error_reply('ERR refused here')")
        for _ in range(2):  # the first call loads it through EVAL, the second hits EVALSHA
            with pytest.raises(ReplyError, match=r"^ERR refused here"):
                drive(script())
        assert drive(client.execute_command("SCRIPT", "EXISTS", script.sha)) == [1]


class TestSubscriptions:
    """The second connection a kill uses to hear confirmations."""

    def test_acl_without_channels_falls_back_to_polling(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """A user Redis denies SUBSCRIBE still gets a Wake: one that only waits out its
        timeout, so a kill polls for confirmations instead of failing."""
        with redis.Redis(port=own_redis.port) as admin:
            admin.acl_setuser("nochan", enabled=True, passwords=["+pw"], keys=["*"],
                              channels=[], commands=["+@all"])  # fmt: skip
        url = lean.parse(f"redis://nochan:pw@127.0.0.1:{own_redis.port}/0")
        assert url is not None
        c = LeanRedis(url)
        try:
            with pytest.raises(ReplyError, match="NOPERM"):
                c.subscriber("ks:any")

            async def enter() -> object:
                async with LeanStore(c, node).confirmations() as wake:
                    await wake.wait(0.0)
                    wake.clear()
                    return wake

            wake = drive(enter())
            assert isinstance(wake, LeanWake) and wake.conn is None
        finally:
            drive(c.aclose())

    def test_wake_returns_on_a_message_and_reports_a_cut_subscription(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """wait() returns when a confirmation is published, and raises ConnectionError
        when Redis closes the subscribed connection rather than waiting out the timeout."""
        url = lean.parse(own_redis.url)
        assert url is not None
        c = LeanRedis(url, socket_timeout=10.0)
        channel = f"ks:confirms:{node}"
        try:
            wake = c.subscriber(channel)
            with redis.Redis(port=own_redis.port) as admin:
                assert admin.publish(channel, "h1") == 1
                drive(wake.wait(30.0))
                drive(wake.wait(30.0))  # the message read but not yet cleared: at once
                wake.clear()
                assert admin.client_kill_filter(_type="pubsub") == 1
            with pytest.raises(ConnectionError, match="closed the subscription"):
                drive(wake.wait(30.0))
        finally:
            drive(c.aclose())


class TestAttributes:
    """Only lower-case public names become Redis commands."""

    @pytest.mark.parametrize("name", ["_private", "__aenter__", "GET", "Hgetall"])
    def test_other_names_are_missing_attributes(self, client: LeanRedis, name: str) -> None:
        """Private, dunder and upper-case names raise AttributeError instead of being sent."""
        assert not hasattr(client, name)
        assert not hasattr(client.pipeline(), name)
