"""Redis ACL roles on a real redis-server loaded with the generated ACL file: each sidecar's
credential gets NOPERM on everything but its own keys and its pre-loaded functions (no Lua of
its own), and the fleet arms, trades, kills and proves containment with those credentials."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_sync
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from killswitch.sim.embedded import EmbeddedRedis, find_redis_server
from killswitch.store import acl
from killswitch.store.keys import NODES_KEY, NodeKeys
from killswitch.store.scripts import sidecar_library
from kstest import Fleet
from kstest.cluster import find_redis_cli

HOSTS = ["or-01", "or-02"]
SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "redis" / "users.acl"


def url(server: EmbeddedRedis, user: str) -> str:
    return f"redis://{user}:pw-{user}@127.0.0.1:{server.port}/0"


@pytest.fixture
def acl_server(node: str, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of its own, started with the node's ACL file (no default user)."""
    path = tmp_path / "users.acl"
    names = acl.users(node, HOSTS)
    path.write_text("\n".join(acl.acl_lines(node, HOSTS, {u: f"pw-{u}" for u in names})) + "\n")
    server = EmbeddedRedis(extra_args=["--aclfile", str(path)], functions=False)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@dataclass
class AclFleet(Fleet):
    """A fleet whose every sidecar connects with its own ACL user."""

    server: EmbeddedRedis | None = None

    def sidecar_args(self, host: str) -> list[str]:
        assert self.server is not None
        return [*super().sidecar_args(host), "--redis",
                url(self.server, acl.sidecar_user(self.node, host))]  # fmt: skip


def load_functions(server: EmbeddedRedis, node: str) -> None:
    """The sidecars' library, loaded with the aggregator's credential (as it does at start)."""
    with _client(server, acl.aggregator_user(node)) as c:
        c.function_load(sidecar_library().code, replace=True)


def _client_as(server: EmbeddedRedis, user: str, password: str) -> redis_sync.Redis:
    return redis_sync.Redis(
        port=server.port, username=user, password=password, decode_responses=True
    )


def _client(server: EmbeddedRedis, user: str) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(url(server, user), decode_responses=True)


class TestSidecarCredential:
    """What a sidecar's credential (the one a trading host holds) cannot do."""

    def test_nopermission_outside_own_keys(self, acl_server: EmbeddedRedis, node: str) -> None:
        """Node state, roster, audit, lease, another host's keys: NOPERM, directly or by script."""
        k = NodeKeys(node)
        c = _client(acl_server, acl.sidecar_user(node, "or-01"))
        lib = sidecar_library()
        load_functions(acl_server, node)
        try:
            attempts = {
                "state": lambda: c.hset(k.state, mapping={"state": "ARMED", "epoch": "100"}),
                "roster": lambda: c.sadd(k.roster, "or-01"),
                "audit": lambda: c.xadd(k.audit, {"action": "arm"}),
                "audit head": lambda: c.hset(k.audit_head, "seq", "1"),
                "lease": lambda: c.set(k.leader, "me"),
                "other host": lambda: c.hset(k.host("or-02").report, "gate", "closed"),
                "other confirm": lambda: c.hset(k.host("or-02").confirm, "epoch", "9"),
                "delete state": lambda: c.delete(k.state),
                "script declared": lambda: c.eval(
                    "return redis.call('HSET', KEYS[1], 'state', 'ARMED')", 1, k.state),
                "flushall": c.flushall,
                # its own Lua, any way: EVAL, EVALSHA, SCRIPT LOAD, a library of its own
                "eval": lambda: c.eval("return 1", 0),
                "evalsha": lambda: c.evalsha("e0e1f9fabfc9d4800c877a703b823ac0578ff8db", 0),
                "script load": lambda: c.script_load("return 1"),
                "function load": lambda: c.function_load(
                    "#!lua name=mine\nredis.register_function('mine', function() end)"),
                "function delete": lambda: c.function_delete(lib.name),
                "function flush": c.function_flush,
                "function restore": lambda: c.function_restore(b"junk", "REPLACE"),
                "function dump": c.function_dump,
                "function kill": c.function_kill,
                "function stats": c.function_stats,
                # the library's round trip with the node state declared as its own key
                "fcall state": lambda: c.fcall(lib.function("flush"), 1, k.state),
            }  # fmt: skip
            for what, attempt in attempts.items():
                with pytest.raises(NoPermissionError):
                    attempt()
                    pytest.fail(what)
            op = _client(acl_server, acl.OPERATOR_USER)
            assert op.hgetall(k.state) == {} and op.exists(k.roster, k.audit, k.leader) == 0
            op.close()
            # its own keys and a read of the node state are what it may do
            assert c.hset(k.host("or-01").report, "gate", "closed") == 1
            assert c.hmget(k.state, "state") == [None]
            assert c.fcall_ro(lib.function("ping"), 1, k.state) == lib.name
            # and reading the code loaded under its library's name (its integrity check)
            listed = c.function_list(library=lib.name, withcode=True)
            assert lib.code in listed[0]
        finally:
            c.close()

    def test_a_busy_eval_is_refused(self, acl_server: EmbeddedRedis, node: str) -> None:
        """`EVAL "while true do end" 0` with a sidecar's credential is NOPERM: a trading host
        cannot hold the shared Redis in a busy script (every node's gates would close)."""
        c = redis_sync.Redis.from_url(
            url(acl_server, acl.sidecar_user(node, "or-01")), socket_timeout=3
        )
        op = _client(acl_server, acl.OPERATOR_USER)
        try:
            with pytest.raises(NoPermissionError):
                c.eval("while true do end", 0)
            assert op.ping() is True
        finally:
            with contextlib.suppress(ResponseError):
                op.script_kill()  # only if the busy script ran after all
            c.close()
            op.close()

    def test_no_default_user(self, acl_server: EmbeddedRedis, node: str) -> None:
        """A connection without credentials can do nothing; a wrong password is refused."""
        anon = redis_sync.Redis(port=acl_server.port, decode_responses=True)
        try:
            with pytest.raises((AuthenticationError, ResponseError)):
                anon.get("x")
        finally:
            anon.close()
        wrong = redis_sync.Redis.from_url(
            f"redis://{acl.OPERATOR_USER}:nope@127.0.0.1:{acl_server.port}/0"
        )
        try:
            with pytest.raises(AuthenticationError):
                wrong.ping()
        finally:
            wrong.close()


class TestRegistryAndNotices:
    """What a node's credentials cannot do to the fleet registry and the kill notices."""

    def test_aggregator_cannot_remove_a_node_from_the_registry(
        self, acl_server: EmbeddedRedis, node: str
    ) -> None:
        """One node's aggregator adds and lists its own node; SREM/DEL of another: NOPERM."""
        c = _client(acl_server, acl.aggregator_user(node))
        op = _client(acl_server, acl.OPERATOR_USER)
        try:
            op.sadd(NODES_KEY, "othernode")
            assert c.sadd(NODES_KEY, node) == 1
            assert set(c.smembers(NODES_KEY)) == {node, "othernode"}
            for what, attempt in {
                "srem": lambda: c.srem(NODES_KEY, "othernode"),
                "del": lambda: c.delete(NODES_KEY),
                "spop": lambda: c.spop(NODES_KEY),
                "smove": lambda: c.smove(NODES_KEY, NodeKeys(node).roster, "othernode"),
                "script": lambda: c.eval("return redis.call('SREM', KEYS[1], ARGV[1])", 1,
                                         NODES_KEY, "othernode"),
            }.items():  # fmt: skip
                with pytest.raises(NoPermissionError):
                    attempt()
                    pytest.fail(what)
            assert set(op.smembers(NODES_KEY)) == {node, "othernode"}
        finally:
            c.close()
            op.close()

    def test_aggregator_cannot_delete_the_library(
        self, acl_server: EmbeddedRedis, node: str
    ) -> None:
        """An aggregator loads the sidecars' library; deleting, flushing or restoring
        functions (every node's gates would close) is NOPERM, and the library stays."""
        lib = sidecar_library()
        c = _client(acl_server, acl.aggregator_user(node))
        try:
            assert c.function_load(lib.code, replace=True) == lib.name
            dump = c.function_dump()
            for what, attempt in {
                "delete": lambda: c.function_delete(lib.name),
                "flush": c.function_flush,
                "restore": lambda: c.function_restore(dump, "FLUSH"),
                "script flush": c.script_flush,
            }.items():  # fmt: skip
                with pytest.raises(NoPermissionError):
                    attempt()
                    pytest.fail(what)
            assert c.fcall_ro(lib.function("ping"), 1, NodeKeys(node).state) == lib.name
        finally:
            c.close()

    def test_sidecar_cannot_publish_a_kill_notice(
        self, acl_server: EmbeddedRedis, node: str
    ) -> None:
        """A sidecar hears the events channel but PUBLISH on it is NOPERM (its confirms pass)."""
        k = NodeKeys(node)
        c = _client(acl_server, acl.sidecar_user(node, "or-01"))
        try:
            with pytest.raises(NoPermissionError):
                c.publish(k.events, "KILLED 3 1")
            with pytest.raises(ResponseError):
                c.eval("return redis.call('PUBLISH', ARGV[1], 'KILLED 3 1')", 0, k.events)
            assert c.publish(k.confirms, "or-01 1 1") == 0
            sub = c.pubsub()
            sub.subscribe(k.events, k.confirms)
            assert sub.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
            sub.close()
        finally:
            c.close()


class TestFleetWithAcl:
    """The whole loop runs with least-privilege credentials."""

    def test_arm_trade_kill_confirm(self, acl_server: EmbeddedRedis, node: str) -> None:
        """Sidecars as their own users, aggregator and operator as theirs: arm exits 0, orders
        flow, kill exits 0 with both hosts confirmed, every order after it blocks."""
        f = AclFleet(url(acl_server, acl.OPERATOR_USER), node, HOSTS, server=acl_server)
        try:
            f.start()
            f.start_aggregator(
                "--tick", "0.05", "--redis", url(acl_server, acl.aggregator_user(node))
            )
            f.wait_ready(30)
            armed = f.arm()
            assert armed["confirmed"] == HOSTS
            for h in HOSTS:
                assert f.order(h, "a1") == f"ALLOW a1 {armed['epoch']}"
            code, rep = f.cli_json("kill", "--reason", "acl kill")
            assert code == 0, rep
            assert rep["confirmed"] == HOSTS
            for h in HOSTS:
                assert f.order(h, "k1").startswith("BLOCK k1")
            assert "NOPERM" not in (f.workdir / "or-01.log").read_text()
            assert f.aggregator is not None and f.aggregator.events("FUNCTIONS_LOADED")
            sidecar = acl.sidecar_user(node, "or-01")
            denied = f.cli("kill", "--reason", "x", "--redis", url(acl_server, sidecar))
            assert denied.returncode == 1 and "Traceback" not in denied.stderr
            assert f"pw-{sidecar}" not in denied.stderr + denied.stdout
        finally:
            f.stop()


@pytest.fixture
def hardened_server(node: str, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """The generated ACL with `-function|load` for the aggregator (nodes of different trust
    sharing one Redis: only the operator credential loads the sidecars' library)."""
    path = tmp_path / "users.acl"
    names = acl.users(node, HOSTS)
    lines = acl.acl_lines(node, HOSTS, {u: f"pw-{u}" for u in names})
    agg = f"user {acl.aggregator_user(node)} "
    lines = [line + " -function|load" if line.startswith(agg) else line for line in lines]
    path.write_text("\n".join(lines) + "\n")
    server = EmbeddedRedis(extra_args=["--aclfile", str(path)], functions=False)
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def admin_step(server: EmbeddedRedis) -> str:
    """`python -m killswitch.store.scripts | redis-cli ... -x FUNCTION LOAD REPLACE` with the
    operator's credential, as docs/DEPLOY.md says; the library name Redis answers."""
    import subprocess

    printed = subprocess.run(
        [sys.executable, "-m", "killswitch.store.scripts"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert printed == sidecar_library().code
    loaded = subprocess.run(
        [find_redis_cli(find_redis_server()), "-p", str(server.port), "--user",
         acl.OPERATOR_USER, "--pass", f"pw-{acl.OPERATOR_USER}", "--no-auth-warning",
         "-x", "FUNCTION", "LOAD", "REPLACE"],
        input=printed, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return loaded.stdout.strip()


class TestAdminStep:
    """The library loaded by hand, for aggregators whose credential may not load it."""

    def test_hardened_aggregator_and_the_admin_step(
        self, hardened_server: EmbeddedRedis, node: str
    ) -> None:
        """The aggregator may not load (FUNCTIONS_NOT_LOADED, and it keeps running); sidecars
        block naming the library; the operator's admin step loads it: arm, trade, kill."""
        lib = sidecar_library()
        f = AclFleet(url(hardened_server, acl.OPERATOR_USER), node, HOSTS, server=hardened_server)
        try:
            f.start()
            agg = f.start_aggregator(
                "--tick", "0.05", "--redis", url(hardened_server, acl.aggregator_user(node))
            )
            refused = agg.logged("FUNCTIONS_NOT_LOADED")
            assert refused and "NoPermissionError" in refused[0]["reason"], refused
            for h in HOSTS:
                assert f.sidecars[h].logged("FUNCTIONS_MISSING")[0]["library"] == lib.name
                assert f.order(h, "m1").startswith("BLOCK m1")
            assert admin_step(hardened_server) == lib.name
            f.wait_ready(30)
            armed = f.arm()
            assert f.order("or-01", "a1") == f"ALLOW a1 {armed['epoch']}"
            code, rep = f.cli_json("kill", "--reason", "hardened")
            assert code == 0 and rep["confirmed"] == HOSTS, rep
            assert not agg.events("FUNCTIONS_LOADED")
        finally:
            f.stop()


class TestShippedFile:
    """deploy/redis/users.acl is what the generator makes for the compose demo."""

    def test_matches_generator(self) -> None:
        """Same users and rules as `acl_lines` for node smars, hosts or-01..or-08."""
        hosts = [f"or-{i:02d}" for i in range(1, 9)]
        demo = {u: f"demo-{u}" for u in acl.users("smars", hosts)}
        assert SHIPPED.read_text().splitlines() == acl.acl_lines("smars", hosts, demo)

    def test_a_real_redis_starts_on_it(self) -> None:
        """redis-server --aclfile loads the shipped file as is (Redis refuses a file with a
        comment in it), and the operator's demo credentials then work."""
        server = EmbeddedRedis(extra_args=["--aclfile", str(SHIPPED)], functions=False)
        server.start()
        try:
            with _client_as(server, "ks-operator", "demo-ks-operator") as c:
                assert c.ping() is True
        finally:
            server.cleanup()

    def test_generator_cli(self) -> None:
        """`python -m killswitch.store.acl` prints a file with every user and hashed secrets."""
        import subprocess

        res = subprocess.run(
            [sys.executable, "-m", "killswitch.store.acl", "smars", "or-01"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert res.returncode == 0
        assert res.stdout.startswith("user default off")
        secret = res.stderr.split()[1]
        assert secret not in res.stdout
