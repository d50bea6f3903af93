"""The operator commands' lean transport: every URL form the CLI accepts, on real servers.

`kill` and `status` must run without importing redis-py, asyncio, aiohttp, prometheus_client,
rich or structlog (a deterministic guard of the cold-start budget; the timing is in bench/),
and must do exactly what the redis.asyncio path does: the same scripts, keys and replies.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from killswitch.ops import control
from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.store import lean
from killswitch.store.keys import NodeKeys
from killswitch.store.lean import BudgetSpent, LeanURL, ReplyError
from killswitch.store.leanclient import LeanRedis, LeanStore, drive
from killswitch.store.store import Store
from kstest.sentinel import SentinelCluster

HEAVY = ("redis", "asyncio", "aiohttp", "prometheus_client", "rich", "structlog")


def run_cli(*args: str, importtime: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "killswitch", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def imported(stderr: str) -> set[str]:
    """Top-level package names in a `python -X importtime` report."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"\| +([\w.]+)$", stderr, re.M)}


def kill_then_status(url: str, node: str) -> tuple[dict[str, object], dict[str, object]]:
    """`kill` a node whose one roster host never reports, then `status`, both over `url`;
    each must exit as the contract says and import none of the heavy packages."""
    k = run_cli("kill", "--redis", url, "--node", node, "--reason", "lean test",
                "--timeout", "0.2", "--json", importtime=True)  # fmt: skip
    assert k.returncode == control.EXIT_UNCONFIRMED, k.stderr[-2000:]
    assert not imported(k.stderr) & set(HEAVY), sorted(imported(k.stderr) & set(HEAVY))
    s = run_cli("status", "--redis", url, "--node", node, "--json", importtime=True)
    # the roster host never reported: status says so with exit 3 (CONTRACT: status exit codes)
    assert s.returncode == control.EXIT_UNCONFIRMED, s.stderr[-2000:]
    assert not imported(s.stderr) & set(HEAVY), sorted(imported(s.stderr) & set(HEAVY))
    return json.loads(k.stdout), json.loads(s.stdout)


def add_roster(url: str, node: str, **kw: object) -> None:
    with redis.Redis.from_url(url, **kw) as r:  # type: ignore[arg-type]
        r.sadd(NodeKeys(node).roster, "or-01")


class TestParse:
    @pytest.mark.parametrize(
        ("url", "want"),
        [
            ("redis://127.0.0.1:6380/2", LeanURL(port=6380, db=2)),
            (
                "redis://ops:p%40ss@h:1/0",
                LeanURL(host="h", port=1, username="ops", password="p@ss"),
            ),
            ("redis://:pw@h/0", LeanURL(host="h", password="pw")),
            ("unix:///run/r.sock?db=3", LeanURL(path="/run/r.sock", db=3)),
            (
                "rediss://h:7/0?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem",
                LeanURL(host="h", port=7, tls=True, cert_reqs="none", ca_certs="/ca.pem"),
            ),
            (
                "redis+sentinel://u:pw@a:1,b/svc/4",
                LeanURL(
                    db=4,
                    username="u",
                    password="pw",
                    sentinels=(("a", 1), ("b", 26379)),
                    service="svc",
                ),
            ),
        ],
    )
    def test_forms(self, url: str, want: LeanURL) -> None:
        """Each URL form reads as redis-py reads it (host, port, db, TLS options, ACL user)."""
        assert lean.parse(url) == want

    @pytest.mark.parametrize(
        "url",
        ["redis://h/0?max_connections=3", "redis://secret@h/0", "redis+cluster://h:1/",
         "http://h/0", "rediss://h/0?ssl_cert_reqs=sometimes", "no-scheme"],
    )  # fmt: skip
    def test_left_to_redis_py(self, url: str) -> None:
        """A form or option the lean transport does not know is left to redis-py (None)."""
        assert lean.parse(url) is None

    def test_bad_db(self) -> None:
        """A db that is not a number is refused, as redis-py refuses it."""
        with pytest.raises(ValueError, match="bad db"):
            lean.parse("redis://h/zero")


class TestSameAsRedisPy:
    async def test_snapshot_and_audit_match(self, redis_url: str, node: str) -> None:
        """Over one killed node, Store over LeanRedis reads what Store over redis.asyncio reads."""
        add_roster(redis_url, node)
        client = LeanRedis(lean.parse(redis_url) or LeanURL())
        rich = Redis.from_url(redis_url, decode_responses=True)
        try:
            out = drive(control.kill(LeanStore(client, node), reason="r", operator="o",
                                     timeout=0.1))  # fmt: skip
            assert out.code == control.EXIT_UNCONFIRMED
            assert out.report["state"] == "KILLED"
            base = Store(rich, node)
            assert drive(LeanStore(client, node).snapshot()).state == (await base.snapshot()).state
            assert drive(LeanStore(client, node).audit()) == await base.audit()
            assert drive(LeanStore(client, node).audit(1)) == await base.audit(1)
            assert (await control.status(base)).report["state"] == "KILLED"
        finally:
            drive(client.aclose())
            await rich.aclose()

    def test_script_loaded_after_flush(self, redis_url: str, node: str) -> None:
        """After SCRIPT FLUSH, a script call falls back to EVAL and succeeds."""
        client = LeanRedis(lean.parse(redis_url) or LeanURL())
        try:
            store = LeanStore(client, node)
            drive(client.execute_command("SCRIPT", "FLUSH"))
            res = drive(store.kill(actor="a", reason="r", cause="operator", floor=0))
            assert res.changed and res.epoch >= 1
        finally:
            drive(client.aclose())

    def test_reply_error_raised(self, redis_url: str) -> None:
        """A Redis error reply becomes ReplyError, and the client still works afterwards."""
        client = LeanRedis(lean.parse(redis_url) or LeanURL())
        try:
            with pytest.raises(ReplyError, match="unknown command"):
                drive(client.execute_command("NO-SUCH-COMMAND"))
            assert drive(client.execute_command("PING")) is True
        finally:
            drive(client.aclose())

    def test_generic_commands_and_transactions(self, redis_url: str, node: str) -> None:
        """Commands by redis-py's method names, MULTI pipelines and raise_on_error=False work."""
        client = LeanRedis(lean.parse(redis_url) or LeanURL(), client_name="ks-lean-test")
        key = f"ks:lean:{node}"
        try:
            drive(client.sadd(key, "a", "b"))
            assert drive(client.smembers(key)) == {"a", "b"}
            assert drive(client.sscan(key, 0, count=10))[1] in (["a", "b"], ["b", "a"])
            assert drive(client.client_getname()) == "ks-lean-test"
            pipe = client.pipeline(transaction=True)
            pipe.hset(f"{key}:h", "f", "v").hgetall(f"{key}:h").pttl(f"{key}:h")
            assert drive(pipe.execute()) == [1, {"f": "v"}, -1]
            pipe = client.pipeline()
            pipe.get(key).exists(key)
            replies = drive(pipe.execute(raise_on_error=False))
            assert isinstance(replies[0], ReplyError) and replies[1] == 1
        finally:
            drive(client.aclose())

    def test_budget_spent(self, redis_url: str) -> None:
        """Past its deadline the client raises BudgetSpent instead of waiting on Redis."""
        client = LeanRedis(lean.parse(redis_url) or LeanURL(), deadline=0.0)
        with pytest.raises(BudgetSpent):
            drive(client.execute_command("PING"))

    def test_drive_refuses_a_suspending_coroutine(self) -> None:
        """drive() says so when an action awaits an event loop instead of the lean client."""

        class Suspend:
            def __await__(self) -> Iterator[None]:
                yield None

        async def waits() -> int:
            await Suspend()
            return 1

        with pytest.raises(RuntimeError, match="event loop"):
            drive(waits())


class TestEveryUrlForm:
    def test_redis(self, redis_url: str, node: str) -> None:
        """redis://: the kill is recorded (KILLED) and status reads it, with no heavy import."""
        add_roster(redis_url, node)
        killed, status = kill_then_status(redis_url, node)
        assert killed["state"] == status["state"] == "KILLED"
        assert status["missing"] == ["or-01"]

    def test_unix(self, tmp_path: Path, node: str) -> None:
        """unix:// with a db: the same kill and status over a unix socket."""
        sock = tmp_path / "r.sock"
        with EmbeddedRedis(extra_args=["--unixsocket", str(sock), "--unixsocketperm", "700"]):
            url = f"unix://{sock}?db=2"
            add_roster(url, node)
            killed, status = kill_then_status(url, node)
            assert killed["state"] == status["state"] == "KILLED"

    def test_acl_user(self, own_redis: EmbeddedRedis, node: str) -> None:
        """user:password@ authenticates an ACL user; a wrong password exits 1, never shown."""
        with redis.Redis(port=own_redis.port) as r:
            r.acl_setuser("ops", enabled=True, passwords=["+s3cret"], keys=["*"], channels=["*"],
                          commands=["+@all"])  # fmt: skip
        url = f"redis://ops:s3cret@127.0.0.1:{own_redis.port}/0"
        add_roster(url, node)
        killed, status = kill_then_status(url, node)
        assert killed["state"] == status["state"] == "KILLED"
        bad = run_cli("status", "--redis", url.replace("s3cret", "wrong"), "--node", node)
        assert bad.returncode == control.EXIT_FAILED
        assert "WRONGPASS" in bad.stderr and "wrong" not in bad.stderr.replace("WRONGPASS", "")

    def test_tls(self, tmp_path: Path, node: str) -> None:
        """rediss:// verifies the server against ssl_ca_certs; an unknown CA exits 1."""
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )  # fmt: skip
        tls_port = free_port()
        with EmbeddedRedis(extra_args=[
            "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        ]) as server:  # fmt: skip
            add_roster(server.url, node)
            url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={cert}"
            killed, status = kill_then_status(url, node)
            assert killed["state"] == status["state"] == "KILLED"
            untrusted = run_cli("status", "--redis", f"rediss://127.0.0.1:{tls_port}/0",
                                "--node", node)  # fmt: skip
            assert untrusted.returncode == control.EXIT_FAILED
            assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr

    @pytest.mark.slow
    def test_sentinel(self, node: str) -> None:
        """redis+sentinel://: the Sentinels name the primary, and the kill lands there."""
        with SentinelCluster("ks-lean") as cluster:
            add_roster(cluster.primary_url, node)
            killed, status = kill_then_status(cluster.url, node)
            assert killed["state"] == status["state"] == "KILLED"
            with redis.Redis(port=cluster.primary_port, decode_responses=True) as r:
                assert r.hget(NodeKeys(node).state, "state") == "KILLED"
            missing = cluster.url.replace("/ks-lean/", "/no-such-service/")
            res = run_cli("status", "--redis", missing, "--node", node)
            assert res.returncode == control.EXIT_FAILED
            assert "no Sentinel gave a usable primary" in res.stderr


class TestImportBudget:
    @pytest.mark.parametrize("verb", ["kill", "status"])
    def test_help_imports_nothing_heavy(self, verb: str) -> None:
        """`killswitch VERB --help` works and imports none of the heavy packages."""
        res = run_cli(verb, "--help", importtime=True)
        assert res.returncode == 0 and "usage: killswitch" in res.stdout
        assert not imported(res.stderr) & set(HEAVY)

    def test_status_table_piped_loads_no_rich(self, redis_url: str) -> None:
        """`status` printing its host table (ASCII) to a pipe imports none of rich: rich
        draws only tables folded to a terminal, and measures only text that is not ASCII."""
        node = f"leantable{os.getpid()}"
        add_roster(redis_url, node)
        res = run_cli("status", "--redis", redis_url, "--node", node, importtime=True)
        assert res.returncode == control.EXIT_UNCONFIRMED, res.stderr[-2000:]
        assert re.search(r"^  host +alive +age", res.stdout, re.M), res.stdout
        assert "rich" not in imported(res.stderr), sorted(imported(res.stderr))

    def test_other_verbs_still_load_their_parts(self) -> None:
        """`aggregator --help` still lists the trip-rule flags the fast verbs leave off."""
        res = run_cli("aggregator", "--help")
        assert res.returncode == 0 and "--max-host-share" in res.stdout
