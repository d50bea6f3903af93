"""Fresh proofs on real processes: sidecar and aggregator processes, the `killswitch` CLI, a
real redis-server and real ssh-keygen keys.

A host that lost its disk, with Redis written back from an older ARMED snapshot, blocks
`unproven` until `arm --host` admits it; eight hosts starting together open on one arm; one
person is one operator whatever keys they hold; a key outside the operators file is refused
in every state; scoped kills survive a Redis writer and a restart.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync

from killswitch.core.proof.armproof import Proof
from killswitch.sim.operators import OperatorKeys, make_key, make_operators, signer_line
from killswitch.store.keys import NodeKeys
from killswitch.store.localstate import LocalState
from kstest import Fleet, wait_until

HOSTS = ["or-01", "or-02"]


@pytest.fixture
def r(redis_url: str) -> Iterator[redis_sync.Redis]:
    client = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def started(f: Fleet) -> Fleet:
    f.start()
    f.start_aggregator("--tick", "0.05")
    f.wait_ready(30)
    return f


@pytest.fixture
def two(redis_url: str, node: str) -> Iterator[Fleet]:
    f = Fleet(redis_url, node, HOSTS)
    try:
        yield started(f)
    finally:
        f.stop()


def status(f: Fleet) -> dict[str, Any]:
    return f.cli_json("status")[1]


def arm_as(f: Fleet, key: str, *args: str) -> tuple[int, dict[str, Any]]:
    res = f.cli("arm", "--key", key, "--json", *args)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout)


def restart(f: Fleet, host: str) -> None:
    f.sidecars[host].stop()
    f.start_sidecar(host)


class TestLostMemory:
    """A host whose disk is gone never opens on a proof signed before."""

    def test_lost_disk_and_an_old_armed_snapshot_block_unproven_until_admitted(
        self, two: Fleet, r: redis_sync.Redis, node: str
    ) -> None:
        """Arm (epoch 1), copy the state hash, kill; or-02 loses its state file and Redis gets
        the old ARMED hash back: or-02 answers `BLOCK <id> 1 unproven` under a new boot id;
        a two-person `arm --host or-02` admits it and it allows orders again."""
        two.arm()
        two.wait_all("PONG ARMED")
        old_boot = status(two)["hosts"]["or-02"]["boot"]
        key = NodeKeys(node).state
        snapshot = r.hgetall(key)
        two.cli("kill", "--reason", "drill", "--timeout", "10")
        two.wait_all("PONG KILLED")
        two.sidecars["or-02"].stop()
        LocalState(two.workdir / "state", node, "or-02").path.unlink()
        r.delete(key)
        r.hset(key, mapping=snapshot)
        two.start_sidecar("or-02")
        wait_until(lambda: two.order("or-02", "p") == "BLOCK p 1 unproven", 20, 0.05)
        host = status(two)["hosts"]["or-02"]
        assert host["boot"] != old_boot and host["boot"]
        wait_until(lambda: status(two)["hosts"]["or-02"]["proof"] == "unproven", 10, 0.05)
        two.arm("--host", "or-02", reason="reimaged or-02")
        wait_until(lambda: two.order("or-02", "q") == "ALLOW q 1", 10, 0.05)

    def test_memoryless_sidecar_warns_and_needs_an_admission_after_a_restart(
        self, redis_url: str, node: str
    ) -> None:
        """`sidecar --state-dir ''` says at start what it means; after a restart the host is a
        new boot that the morning's arm does not open."""
        f = Fleet(redis_url, node, ["or-01"], extra_sidecar_args=("--state-dir", ""))
        try:
            started(f)
            log = f.sidecars["or-01"].log_path
            assert "WARNING: --state-dir ''" in log.read_text()
            f.arm()
            f.wait_all("PONG ARMED")
            restart(f, "or-01")
            wait_until(lambda: f.order("or-01", "p").endswith(" unproven"), 20, 0.05)
            f.arm("--host", "or-01")
            wait_until(lambda: f.order("or-01", "q").startswith("ALLOW q"), 10, 0.05)
        finally:
            f.stop()


class TestLateConsent:
    """A colleague's request, completed after it expired."""

    def test_bob_co_signing_alices_expired_request_offline_opens_nothing(
        self, two: Fleet, r: redis_sync.Redis, node: str
    ) -> None:
        """Alice's pending request (`--expires 1`) expires; bob's `arm` then only starts a new
        request (exit 5); bob signing her message offline and writing the proof into the
        state hash opens no gate: each host finds it expired by its own clock."""
        assert arm_as(two, two.ops.key("alice"), "--expires", "1", "--reason", "open")[0] == 5
        pending = r.hgetall(NodeKeys(node).pending_arm)
        msg = pending["msg"].encode()
        expires_ms = json.loads(msg)["expires_ms"]
        wait_until(lambda: time.time() * 1000 > expires_ms + 200, 10, 0.05, "the request expired")
        assert arm_as(two, two.ops.key("bob"))[0] == 5  # a late co-signature: a new request
        bob = subprocess.run(
            ["ssh-keygen", "-q", "-Y", "sign", "-n", "killswitch", "-f", two.ops.key("bob")],
            input=msg, capture_output=True, check=True,
        ).stdout.decode()  # fmt: skip
        proof = Proof(msg, (pending["sig"], bob)).to_text()
        req = json.loads(msg)
        r.hset(
            NodeKeys(node).state,
            mapping={"state": "ARMED", "epoch": req["epoch"], "ver": 1, "proof": proof},
        )
        seen: list[object] = []

        def refused() -> bool:
            seen[:] = [{h: s["proof"] for h, s in status(two)["hosts"].items()}]
            return seen[0] == dict.fromkeys(HOSTS, "expired")

        try:
            wait_until(refused, 10, 0.05, "every host refuses the late proof as expired")
        except TimeoutError:
            raise AssertionError(seen) from None
        for h in HOSTS:
            assert two.order(h, "p") == f"BLOCK p {req['epoch']} unproven"


class TestMorningOpen:
    """Eight hosts started together: one two-person arm opens them all."""

    def test_eight_fresh_hosts_open_on_one_arm(self, redis_url: str, node: str) -> None:
        """Eight sidecars with no state files, one arm: every gate allows, and the proof names
        the eight boot ids the hosts report."""
        hosts = [f"or-{i:02d}" for i in range(1, 9)]
        f = Fleet(redis_url, node, hosts)
        try:
            started(f)
            boots = {h: s["boot"] for h, s in status(f)["hosts"].items()}
            assert len(set(boots.values())) == 8
            f.arm()
            for h in hosts:
                wait_until(lambda h=h: f.order(h, "o").startswith("ALLOW o"), 20, 0.05)
            proof = json.loads(redis_sync.Redis.from_url(redis_url, decode_responses=True).hget(
                NodeKeys(node).state, "proof") or "{}")  # fmt: skip
            assert json.loads(proof["msg"])["boots"] == boots
        finally:
            f.stop()


def two_key_operators(d: Path) -> OperatorKeys:
    """alice with two keys (`alice`, `alice2`, both under principal alice), and bob."""
    ops = make_operators(d)
    second = make_key(d / "alice2.key", "alice2")
    with ops.file.open("a") as fh:
        fh.write(signer_line("alice", second))
    return OperatorKeys(ops.file, {**ops.keys, "alice2": second})


class TestOnePersonOneOperator:
    """Two keys of one person, a key outside the file, a file others may edit."""

    def test_one_principal_with_two_keys_cannot_arm_alone(
        self, redis_url: str, node: str, tmp_path: Path
    ) -> None:
        """alice signs with her first key (5), then with her second (still 5); no gate opens
        until bob signs (0)."""
        f = Fleet(redis_url, node, HOSTS, operators=two_key_operators(tmp_path / "ops"))
        try:
            started(f)
            assert arm_as(f, f.ops.key("alice"), "--reason", "open")[0] == 5
            code, rep = arm_as(f, f.ops.key("alice2"))
            assert code == 5, rep
            assert all(f.order(h, "p").startswith("BLOCK p ") for h in HOSTS)
            assert arm_as(f, f.ops.key("bob"))[0] == 0
            f.wait_all("PONG ARMED")
        finally:
            f.stop()

    def test_key_outside_the_file_is_refused_on_an_armed_node(
        self, two: Fleet, tmp_path: Path
    ) -> None:
        """`arm` with a key that is not in the operators file exits 4 on an ARMED node too."""
        two.arm()
        outsider = make_key(tmp_path / "mallory", "mallory")
        code, rep = arm_as(two, str(outsider))
        assert code == 4, rep

    def test_operators_file_others_may_write_is_refused(self, two: Fleet, tmp_path: Path) -> None:
        """An operators file writable by group or others stops `arm` and a sidecar: exit 2,
        one line naming the file."""
        loose = tmp_path / "operators"
        loose.write_text(two.ops.file.read_text())
        loose.chmod(0o666)
        for args in (
            ("arm", "--key", two.ops.key("alice")),
            ("sidecar", "--host", "or-09", "--listen", f"unix:{tmp_path / 'g.sock'}"),
        ):
            res = two.cli(*args, "--operators", str(loose), timeout=30)
            assert res.returncode == 2, (args, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and "writable by group or others" in lines[0], res.stderr


class TestScopedKillsRemembered:
    """A scoped kill is lifted only by a verified signed lift, whatever Redis says."""

    def test_scopes_deleted_from_redis_survive_a_restart(
        self, two: Fleet, r: redis_sync.Redis, node: str
    ) -> None:
        """`kill --host or-02` and `kill --symbol AAPL`, HDEL of both, both sidecars restarted:
        or-02 still blocks and AAPL is still blocked on or-01; a kill and a signed lift of the
        host scope reopen or-02."""
        two.arm()
        two.wait_all("PONG ARMED")
        assert two.cli("kill", "--host", "or-02", "--reason", "haunted").returncode == 0
        assert two.cli("kill", "--symbol", "AAPL", "--reason", "bad feed").returncode == 0
        r.hdel(NodeKeys(node).scopes, "host:or-02", "symbol:AAPL")
        for h in HOSTS:
            restart(two, h)
        for h, pong in (("or-01", "PONG ARMED"), ("or-02", "PONG KILLED")):  # or-02: its scope
            wait_until(lambda h=h, p=pong: two.ping(h).startswith(p), 20, 0.05)
        assert order(two, "or-02", "MSFT").endswith(" killed")
        assert order(two, "or-01", "AAPL").endswith(" killed")
        assert order(two, "or-01", "MSFT").startswith("ALLOW")
        assert two.cli("kill", "--host", "or-02", "--reason", "again").returncode == 0
        two.arm("--host", "or-02")
        wait_until(lambda: order(two, "or-02", "MSFT").startswith("ALLOW"), 10, 0.05)
        assert order(two, "or-02", "AAPL").endswith(" killed")  # its lift was never signed


def order(f: Fleet, host: str, symbol: str) -> str:
    with f.client(host) as c:
        return c.order("o", symbol)
