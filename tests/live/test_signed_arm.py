"""Opening a gate needs two operators' signatures; nothing written into Redis without them opens one.

Real sidecar and aggregator processes, a real redis-server, real ssh-keygen keys: each test is
one of the attempts of issue 9 (a raw HSET, a replayed or restored arm, a narrower aggregator,
an off-roster host) or one step of the two-person arm, and checks that no order is allowed.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync

from killswitch.sim.operators import make_key
from killswitch.store.keys import NodeKeys
from kstest import Fleet, Proc, wait_until

HOSTS = ["or-01", "or-02"]


@pytest.fixture
def two(redis_url: str, node: str) -> Iterator[Fleet]:
    """Two sidecars and an aggregator, every process loading alice's and bob's keys."""
    f = Fleet(redis_url, node, HOSTS)
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(20)
        yield f
    finally:
        f.stop()


@pytest.fixture
def r(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def arm_as(f: Fleet, who: str, *args: str) -> tuple[int, dict[str, Any], str]:
    res = f.cli("arm", "--key", f.ops.key(who) if who in f.ops.keys else who, "--json", *args)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout), res.stderr


def status(f: Fleet) -> dict[str, Any]:
    code, rep = f.cli_json("status")
    assert code in (0, 3), rep  # 3: read, but some host does not prove the state
    return rep


def no_order_allowed(f: Fleet, hosts: list[str], reason: str) -> None:
    for h in hosts:
        reply = f.order(h, "probe")
        assert reply.startswith("BLOCK probe ") and reply.endswith(f" {reason}"), (h, reply)


def hosts_refuse(f: Fleet, why: str) -> None:
    def refused() -> bool:
        return all(s["proof"] == why for s in status(f)["hosts"].values())

    wait_until(refused, 10, 0.05, f"every host reports {why}")


class TestTwoPersonArm:
    """Each operator at their own keyboard, with their own key."""

    def test_one_operator_pends_twice_outsider_refused_second_operator_arms(
        self, two: Fleet
    ) -> None:
        """alice: 5, alice again: 5, a key outside the file: 4, bob: 0 and the gates open."""
        code, rep, err = arm_as(two, "alice", "--reason", "open")
        assert code == 5, (rep, err)
        assert rep["pending_arm"]["by"] == "alice" and rep["state"] == "UNARMED"
        assert "killswitch arm --node" in err and "--key" in err
        no_order_allowed(two, HOSTS, "unarmed")
        assert status(two)["pending_arm"]["roster"] == HOSTS

        code, rep, err = arm_as(two, "alice")
        assert code == 5 and "already signed" in err

        outsider = str(make_key(two.workdir / "mallory", "mallory"))
        code, rep, err = arm_as(two, outsider)
        assert code == 4 and "operators file" in err
        assert status(two)["state"] == "UNARMED"

        code, rep, err = arm_as(two, "bob")
        assert code == 0, (rep, err)
        assert rep["state"] == "ARMED" and rep["confirmed"] == HOSTS
        assert rep["approvers"] == ["alice", "bob"] and rep["signed_roster"] == HOSTS
        for h in HOSTS:
            assert two.order(h, "go") == f"ALLOW go {rep['epoch']}"
        assert all(s["proof"] == "" for s in rep["hosts"].values())

    def test_expired_request_cannot_be_completed(self, two: Fleet, r: redis_sync.Redis) -> None:
        """A request past its expiry is gone: the second operator starts a new one (5)."""
        code, _, _ = arm_as(two, "alice", "--expires", "1")
        assert code == 5
        pending = NodeKeys(two.node).pending_arm
        wait_until(lambda: not r.exists(pending), 10, 0.05, "the request expired")
        code, rep, _ = arm_as(two, "bob")
        assert code == 5 and rep["pending_arm"]["by"] == "bob"
        assert status(two)["state"] == "UNARMED"
        no_order_allowed(two, HOSTS, "unarmed")

    def test_request_overtaken_by_a_new_kill_is_void(self, two: Fleet) -> None:
        """A kill after the request (even of a killed node) voids it: bob's call starts anew."""
        two.arm()
        assert two.cli_json("kill", "--reason", "first")[0] == 0
        code, _, _ = arm_as(two, "alice", "--reason", "reopen")
        assert code == 5
        assert two.cli_json("kill", "--reason", "again")[0] == 0
        code, rep, err = arm_as(two, "bob")
        assert code == 5, (rep, err)
        assert "void" in err and rep["pending_arm"]["by"] == "bob"
        assert status(two)["state"] == "KILLED"
        no_order_allowed(two, HOSTS, "killed")


class TestSignedKill:
    """A kill needs no signature; with --key it is recorded as the key's principal."""

    def test_kill_with_key_records_the_principal_and_never_fails_for_it(self, two: Fleet) -> None:
        """alice's key: actor alice; a key outside the file: a warning, the kill still done (0)."""
        two.arm()
        code, rep = two.cli_json("kill", "--reason", "signed", "--key", two.ops.key("alice"))
        assert code == 0 and rep["signed_by"] == "alice" and rep["actor"] == "alice"
        outsider = str(make_key(two.workdir / "eve", "eve"))
        res = two.cli("kill", "--reason", "x", "--key", outsider, "--operator", "eve", "--json")
        assert res.returncode == 0 and "unsigned" in res.stderr
        assert json.loads(res.stdout)["signed_by"] == ""
        actors = [e["actor"] for e in two.cli_json("audit")[1]["entries"] if e["action"] == "kill"]
        assert actors == ["alice", "eve"]


class TestNothingElseOpens:
    """What anyone with Redis access can write opens no gate."""

    def test_raw_hset_armed_while_killed(self, two: Fleet, r: redis_sync.Redis) -> None:
        """`HSET state ARMED epoch 100` over a kill: every host blocks (unarmed) and says unsigned."""
        two.arm()
        assert two.cli_json("kill", "--reason", "stop")[0] == 0
        key = NodeKeys(two.node).state
        r.hdel(key, "proof")
        r.hset(key, mapping={"state": "ARMED", "epoch": 100})
        hosts_refuse(two, "unsigned")
        no_order_allowed(two, HOSTS, "unarmed")
        for h in HOSTS:
            assert two.ping(h) == "PONG UNARMED 100"
            assert any(e["reason"] == "unsigned" for e in two.sidecars[h].logged("ARM_NOT_PROVEN"))
        rep = status(two)
        assert rep["aggregator"]["arm_refusal"] == "unsigned"
        # The operators still own the node: a signed arm above the forged epoch opens it.
        assert two.arm()["epoch"] > 100

    def test_replay_of_an_earlier_signed_arm_at_a_higher_epoch(
        self, two: Fleet, r: redis_sync.Redis
    ) -> None:
        """The proof of an earlier arm copied onto a later epoch: every host says wrong_epoch."""
        armed = two.arm()["epoch"]
        code, killed = two.cli_json("kill", "--reason", "stop")
        assert code == 0
        r.hset(NodeKeys(two.node).state, mapping={"state": "ARMED", "epoch": killed["epoch"] + 5})
        hosts_refuse(two, "wrong_epoch")
        no_order_allowed(two, HOSTS, "unarmed")
        assert armed < killed["epoch"]

    def test_restored_old_snapshot(self, two: Fleet, r: redis_sync.Redis) -> None:
        """The whole state hash of a valid arm, restored after a kill, opens nothing (stale)."""
        two.arm()
        key = NodeKeys(two.node).state
        snapshot = r.hgetall(key)
        assert two.cli_json("kill", "--reason", "stop")[0] == 0
        r.delete(key)
        r.hset(key, mapping=snapshot)

        def stale() -> bool:
            return all("epoch went back" in s["regression"] for s in status(two)["hosts"].values())

        wait_until(stale, 10, 0.05, "every host refuses the restored epoch")
        no_order_allowed(two, HOSTS, "stale")


class TestSignedRoster:
    """The roster changes only through a signed arm."""

    def test_narrower_aggregator_changes_nothing_and_says_so(self, two: Fleet) -> None:
        """An aggregator with a narrower --hosts: roster kept, mismatch in log and status, kill still proves or-02."""
        two.arm()
        assert two.aggregator is not None
        two.aggregator.stop()
        narrow = Proc(
            "narrow",
            [*two.aggregator.args[:5], "or-01", "--tick", "0.05", "--lease-ttl", "0.5"],
            two.workdir / "narrow.log",
        )
        narrow.start(two.env())
        try:
            wait_until(
                lambda: status(two).get("roster_mismatch") == ["or-01"], 20, 0.05, "mismatch shown"
            )
            assert narrow.logged("ROSTER_MISMATCH")
            assert status(two)["roster"] == HOSTS
            two.sidecars["or-02"].send(signal.SIGSTOP)
            try:
                code, rep = two.cli_json("kill", "--reason", "drill", "--timeout", "1")
            finally:
                two.sidecars["or-02"].send(signal.SIGCONT)
            assert code == 3 and rep["missing"] == ["or-02"]
            text = two.cli("status").stdout
            assert "ROSTER MISMATCH" in text
        finally:
            narrow.stop()

    def test_off_roster_host_is_blocked_unlisted_and_counted(
        self, redis_url: str, node: str, r: redis_sync.Redis
    ) -> None:
        """A sidecar not on the roster gets BLOCK unlisted, shows in status/kill, and its orders count."""
        f = Fleet(redis_url, node, HOSTS)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05", "--max-orders", "400", "--window", "5")
            f.wait_ready(20)
            f.start_sidecar("or-09")
            wait_until(lambda: "or-09" in status(f)["unlisted"], 10, 0.05, "or-09 seen")
            epoch = f.arm()["epoch"]
            wait_until(lambda: f.order("or-09", "u").endswith(" unlisted"), 10, 0.05)
            assert f.order("or-09", "x") == f"BLOCK x {epoch} unlisted"
            assert f.order("or-01", "y") == f"ALLOW y {epoch}"
            assert status(f)["unlisted"]["or-09"]["proof"] == "unlisted"
            # An off-roster sender that does not ask its gate (an old build) is still summed.
            r.xadd(NodeKeys(node).host("or-09").flow, {"a": 500, "b": 0})
            wait_until(lambda: status(f)["state"] == "KILLED", 10, 0.05, "the node trips")
            rep = status(f)
            assert rep["cause"] == "max_orders" and "or-09" in rep["unlisted"]
            code, killed = f.cli_json("kill", "--reason", "again")
            assert "or-09" in killed["unlisted"] and code == 0
        finally:
            f.stop()


class TestFailClosed:
    """A sidecar that cannot verify never opens."""

    def test_sidecar_without_operators_file_never_opens(self, two: Fleet) -> None:
        """No --operators: NO_OPERATORS at start, and after a signed arm it still blocks."""
        extra = "or-03"
        env = two.env()
        env.pop("KILLSWITCH_OPERATORS")
        proc = Proc(extra, two.sidecar_args(extra), two.workdir / f"{extra}.log")
        proc.start(env)
        two.sidecars[extra] = proc
        two.wait_serving(extra)
        assert proc.logged("NO_OPERATORS")
        code, _, _ = arm_as(two, "alice", "--roster", "or-01,or-02,or-03")
        assert code == 5
        res = two.cli("arm", "--key", two.ops.key("bob"), "--json", "--timeout", "2")
        assert res.returncode == 3, res
        rep = json.loads(res.stdout)
        assert rep["missing"] == [extra] and rep["hosts"][extra]["proof"] == "no_operators"
        assert two.order(extra, "n") == f"BLOCK n {rep['epoch']} unarmed"
        assert two.order("or-01", "o") == f"ALLOW o {rep['epoch']}"

    def test_bad_operators_file_is_a_configuration_error(self, two: Fleet) -> None:
        """A sidecar given an operators file it cannot use exits 2 naming the line."""
        bad = two.workdir / "bad-operators"
        bad.write_text("alice cert-authority ssh-ed25519 AAAA\n")
        res = subprocess.run(
            [*two.sidecar_args("or-04"), "--operators", str(bad)],
            capture_output=True, text=True, env=two.env(), timeout=30, check=False,
        )  # fmt: skip
        assert res.returncode == 2
        assert "operators" in res.stderr and "line 1" in res.stderr
        assert "Traceback" not in res.stderr


class TestArmUsage:
    """Arming without what a signature needs is a usage error (2) before Redis is touched."""

    @pytest.mark.parametrize(
        ("argv", "env", "says"),
        [
            (["arm", "--key", "k"], {}, "operators"),
            (["arm"], {"KILLSWITCH_OPERATORS": "ops"}, "key"),
            (["arm", "--key", "k", "--operators", "/nonexistent/ops"], {}, "does not exist"),
            (["arm", "--approver", "alice"], {}, "--key"),
            (["resume", "--key", "k"], {"KILLSWITCH_APPROVER": "a,b"}, "approvals are signatures"),
        ],
    )
    def test_missing_or_old_style_settings_exit_2(
        self,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        argv: list[str],
        env: dict[str, str],
        says: str,
    ) -> None:
        """No key, no operators file, or the removed --approver: exit 2 with a one-line reason."""
        from killswitch.cli.main import main

        for k in ("KILLSWITCH_OPERATORS", "KILLSWITCH_KEY", "KILLSWITCH_APPROVER"):
            monkeypatch.delenv(k, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert main([*argv, "--node", "n1", "--redis", "redis://127.0.0.1:1/0"]) == 2
        assert says in capsys.readouterr().err
