"""How an operator verb reaches Redis when Redis does not answer as it should: a server that
never replies (both transports give up within the budget), a closed port, a read-only replica
that refuses the kill, and URLs only one transport reads; each one message, never a password.

Real sockets and real redis-servers; the verbs run in process through the CLI's `main` or the
transport functions it calls.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Iterator
from typing import Any

import pytest
import redis as redis_sync

from killswitch.cli.main import main
from killswitch.cli.transport import lean_url, with_lean_store, with_store
from killswitch.ops import control
from killswitch.ops.control import EXIT_FAILED, Outcome
from killswitch.sim.embedded import EmbeddedRedis, free_port

SECRET = "s3cret-pw"


@pytest.fixture
def silent() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def status(s: Any) -> Awaitable[Outcome]:
    return control.status(s)


class TestSilentRedis:
    """A Redis that never replies: the verb gives up at its budget and says what to do."""

    def test_lean_transport_gives_up_at_the_budget(self, silent: int) -> None:
        """kill/status's lean path: exit 1, 'gave up after', the URL shown without password."""
        url = f"redis://ops:{SECRET}@127.0.0.1:{silent}/0"
        lean = lean_url(url)
        assert lean is not None
        out = with_lean_store(lean, url, "n1", status, budget=0.3)
        assert out.code == EXIT_FAILED and out.report == {}
        assert out.message.startswith(
            f"killswitch: gave up after 0.3s talking to Redis at redis://ops:***@127.0.0.1:{silent}/0."
        )
        assert "run `killswitch status` to see" in out.message and SECRET not in out.message

    async def test_redis_py_transport_gives_up_at_the_budget(self, silent: int) -> None:
        """Every other verb's redis-py path: the same message at its budget."""
        url = f"redis://ops:{SECRET}@127.0.0.1:{silent}/0"
        out = await with_store(url, "n1", status, budget=0.3)
        assert out.code == EXIT_FAILED
        assert out.message.startswith("killswitch: gave up after 0.3s talking to Redis at ")
        assert SECRET not in out.message


class TestUnusableRedis:
    """Redis refuses, or cannot be reached: exit 1 and one message saying which."""

    def test_closed_port_for_a_redis_py_verb(
        self, node: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`audit` against a closed port: exit 1, 'unreachable', and what to do instead."""
        port = free_port()
        code = main(["audit", "--node", node, "--redis", f"redis://u:{SECRET}@127.0.0.1:{port}/0"])
        err = capsys.readouterr().err
        assert code == EXIT_FAILED
        assert err.startswith(f"killswitch: cannot reach Redis at redis://u:***@127.0.0.1:{port}/0")
        assert "(unreachable)" in err and "What to do instead:" in err
        assert SECRET not in err and "Traceback" not in err

    def test_kill_on_a_read_only_replica_is_a_refused_request(
        self, own_redis: EmbeddedRedis, node: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A kill sent to a replica: exit 1, 'refused the request (... READONLY ...)', and
        the replica is left unchanged."""
        r = redis_sync.Redis.from_url(own_redis.url, decode_responses=True)
        try:
            r.replicaof("127.0.0.1", str(free_port()))  # a primary that is not there
            code = main(["kill", "--node", node, "--reason", "drill", "--timeout", "0.2",
                         "--redis", own_redis.url])  # fmt: skip
            err = capsys.readouterr().err
            assert code == EXIT_FAILED
            assert err.startswith(f"killswitch: Redis at {own_redis.url} refused the request (")
            assert "READONLY" in err and err.rstrip().endswith("nothing was changed by it")
            assert r.dbsize() == 0
        finally:
            r.replicaof("NO", "ONE")
            r.close()

    async def test_url_the_client_refuses(self) -> None:
        """A URL the redis-py client cannot use: exit 1, 'bad Redis URL', nothing connected."""
        out = await with_store("http://127.0.0.1:1/", "n1", status, budget=1.0)
        assert out.code == EXIT_FAILED and out.message.startswith("killswitch: bad Redis URL: ")


class TestLeanUrl:
    """Which URLs the lean transport reads; the rest are left to redis-py, which reports them."""

    @pytest.mark.parametrize(
        ("url", "lean"),
        [
            ("redis://127.0.0.1:6379/0", True),
            ("rediss://127.0.0.1:6380/2", True),
            ("redis://127.0.0.1:6379/zero", False),  # bad db: redis-py's message, not ours
            ("redis+cluster://127.0.0.1:7000/", False),
            ("redis://secret@127.0.0.1:6379/0", False),
            ("redis://127.0.0.1:6379/0?health_check_interval=2", False),
        ],
    )
    def test_table(self, url: str, lean: bool) -> None:
        """Each URL is read by the lean transport, or left to redis-py, as the table says."""
        assert (lean_url(url) is not None) is lean
