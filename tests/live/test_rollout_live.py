"""Signed, staged rollouts on real processes: a canary lets exactly its hosts run the new
release while armed; anything else is still a split; promote, abort and completion are
audited; a record written into Redis by hand exempts nothing.

Real sidecar and aggregator processes, a real redis-server and real ssh-keygen keys; each
sidecar attests `bin` and `flags/*.toml` in its own directory (see test_attest_live).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from killswitch.core.node.release import release_digest
from killswitch.core.proof.armproof import Proof
from killswitch.core.proof.rollout import RolloutRequest
from killswitch.ops.signing import ssh_sign
from killswitch.sim.embedded import free_port
from killswitch.sim.operators import make_key
from killswitch.store.keys import NodeKeys
from kstest import Fleet, wait_until

HOSTS = ["or-01", "or-02", "or-03"]
ATTEST = ("bin", "flags/*.toml")
FLAGS = "rlp = true\n"
OLD, NEW, ODD = b"smars v2", b"smars v3", b"smars v1 (power peg)"


def digest(code: bytes) -> str:
    """The release a host attesting `bin` = code and the usual flag file reports."""
    return release_digest(
        {
            "bin": hashlib.sha256(code).hexdigest(),
            "flags/smars.toml": hashlib.sha256(FLAGS.encode()).hexdigest(),
        }
    )


def install(f: Fleet, host: str, code: bytes) -> None:
    d = f.release_dir(host)
    (d / "flags").mkdir(exist_ok=True)
    (d / "bin").write_bytes(code)
    (d / "flags" / "smars.toml").write_text(FLAGS)


def deploy(f: Fleet, host: str, code: bytes) -> None:
    """Install `code` on `host` and make its sidecar re-hash now; wait until it reports it."""
    install(f, host, code)
    f.sidecars[host].send(signal.SIGHUP)
    wait_until(
        lambda: status(f)["hosts"][host]["release"] == digest(code), 20, 0.05, f"{host} re-hashed"
    )


def status(f: Fleet) -> dict[str, Any]:
    code, rep = f.cli_json("status")
    assert code in (0, 3), rep  # 3: read, but some host does not prove the state
    return rep


def rollout(f: Fleet, who: str, *args: str) -> tuple[int, dict[str, Any], str]:
    key = f.ops.key(who) if who in f.ops.keys else who
    res = f.cli("rollout", "--key", key, "--json", *args)
    assert "Traceback" not in res.stderr, res.stderr
    return res.returncode, json.loads(res.stdout), res.stderr


def two_sign(f: Fleet, *args: str) -> dict[str, Any]:
    """alice signs the step (pending, 5); bob co-signs it with his key alone (done, 0)."""
    code, rep, err = rollout(f, "alice", *args)
    assert code == 5, (code, rep, err)
    assert "killswitch rollout --node" in err
    code, rep, err = rollout(f, "bob")
    assert code == 0, (code, rep, err)
    assert rep["approvers"] == ["alice", "bob"]
    return rep


def settled(f: Fleet) -> dict[str, Any]:
    """A status taken after the aggregator evaluated every host's current release: it waits
    for two aggregator ticks past the moment every release shown was already reported."""
    first = status(f)

    def later() -> dict[str, Any] | bool:
        s = status(f)
        ticks = int(s.get("aggregator", {}).get("tick_ms", 0))
        return s if ticks > int(first["aggregator"]["tick_ms"]) + 100 else False

    return wait_until(later, 20, 0.05, "two aggregator ticks")  # type: ignore[no-any-return]


def arm_refused(f: Fleet) -> str:
    """alice's arm, refused (4) for the release: its stderr. A live host that missed its
    liveness window on a starved machine is refused for that instead: asked again."""

    def attempt() -> str | bool:
        res = f.cli("arm", "--key", f.ops.key("alice"), "--json")
        assert res.returncode == 4, (res.returncode, res.stdout, res.stderr)
        return res.stderr if "version_split" in res.stderr else False

    return wait_until(attempt, 30, 0.2, "arm refused for the release")  # type: ignore[no-any-return]


def audit_actions(f: Fleet) -> list[str]:
    return [e["action"] for e in f.cli_json("audit")[1]["entries"]]


def gauge(port: int, name: str, node: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            if sample.name == name and sample.labels == {"node": node}:
                return float(sample.value)
    return None


@pytest.fixture
def agg_port() -> int:
    return free_port()


@pytest.fixture
def three(redis_url: str, node: str, agg_port: int) -> Iterator[Fleet]:
    f = Fleet(redis_url, node, HOSTS, attest=ATTEST)
    try:
        for h in HOSTS:
            install(f, h, OLD)
        f.start()
        f.start_aggregator("--tick", "0.05", "--metrics-port", str(agg_port))
        f.wait_ready(60)
        wait_until(lambda: list(status(f)["releases"]) == [digest(OLD)], 20, 0.05, "attested")
        f.arm(reason="open")
        f.wait_all("PONG ARMED")
        yield f
    finally:
        f.stop()


class TestCanary:
    """Issue 11, must show 2: a signed canary, then promotion and completion."""

    def test_canary_promote_complete(self, three: Fleet, agg_port: int) -> None:
        """The arm approves the roster's release; a two-person canary lets or-01 run the new
        release while armed; or-02 changing is still a split (killed, version_split); after a
        signed promotion the node re-arms, and once all run it the rollout completes. Every
        step is audited."""
        f = three
        rep = status(f)
        assert rep["rollout"]["phase"] == "none" and rep["rollout"]["approved"] == digest(OLD)

        outsider = str(make_key(f.workdir / "mallory", "mallory"))
        code, _, err = rollout(f, outsider, "--release", digest(NEW), "--hosts", "or-01")
        assert code == 4 and "operators file" in err
        code, rep, err = rollout(f, "alice", "--release", digest(NEW), "--hosts", "or-01")
        assert code == 5 and rep["rollout"]["pending"]["by"] == "alice"
        code, _, err = rollout(f, "alice")
        assert code == 5 and "already signed" in err
        code, rep, _ = rollout(f, "bob")
        assert code == 0, rep
        ro = rep["rollout"]
        assert (ro["phase"], ro["from"], ro["to"], ro["hosts"]) == (
            "canary", digest(OLD), digest(NEW), ["or-01"],
        )  # fmt: skip
        assert ro["signed_by"] == {"begin": ["alice", "bob"]}

        deploy(f, "or-01", NEW)
        rep = settled(f)
        assert rep["state"] == "ARMED" and rep["release_split"] is None
        assert rep["releases"] == {digest(NEW): ["or-01"], digest(OLD): ["or-02", "or-03"]}
        assert rep["rollout"]["verified"] is True
        assert f.order("or-01").startswith("ALLOW")
        assert gauge(agg_port, "killswitch_rollout_hosts", f.node) == 1.0
        human = f.cli("status").stdout
        assert "ROLLOUT 1 CANARY" in human and "SPLIT" not in human

        install(f, "or-02", NEW)  # a host the canary does not name
        f.sidecars["or-02"].send(signal.SIGHUP)
        rep = wait_until(lambda: (s := status(f))["state"] == "KILLED" and s, 20, 0.05, "killed")
        assert rep["cause"] == "version_split" and "or-02" in rep["reason"]
        assert "or-01" not in rep["release_split"]["odd"]

        rep = two_sign(f, "--promote", "--reason", "canary is fine")
        assert rep["rollout"]["phase"] == "promoted"
        assert rep["rollout"]["signed_by"]["promote"] == ["alice", "bob"]
        f.arm(reason="promoted")  # or-01, or-02 on the new release, or-03 on the old: allowed
        wait_until(
            lambda: gauge(agg_port, "killswitch_rollout_hosts", f.node) == 3.0,
            10, 0.05, "every host may run the new release",
        )  # fmt: skip
        f.wait_all("PONG ARMED")

        deploy(f, "or-03", NEW)
        wait_until(lambda: status(f)["rollout"]["phase"] == "complete", 20, 0.05, "complete")
        rep = settled(f)
        assert rep["state"] == "ARMED" and rep["rollout"]["approved"] == digest(NEW)
        actions = audit_actions(f)
        for step in ("rollout_request", "rollout_begin", "rollout_promote", "rollout_complete"):
            assert step in actions, (step, actions)
        assert actions.count("refused") >= 1  # mallory's key, audited
        assert actions.index("rollout_begin") < actions.index("rollout_complete")


class TestAbortAndForgery:
    """Aborting ends the exemption; nothing written by hand, nor an unnamed release, exempts."""

    def test_abort_forged_record_and_rollback(
        self, three: Fleet, redis_url: str, agg_port: int
    ) -> None:
        """After a signed abort, or-01 still on the canary release is a split (killed). A
        record forged into Redis (one operator's signature, or an aborted one written back)
        lets no arm through. A unanimous move to a release nobody approved is a split too."""
        f = three
        code, _, _ = rollout(f, "alice", "--release", digest(NEW), "--hosts", "or-01",
                             "--expires", "1")  # fmt: skip
        assert code == 5
        pending = NodeKeys(f.node).pending_rollout
        with redis_sync.Redis.from_url(redis_url, decode_responses=True) as r:
            wait_until(lambda: not r.exists(pending), 10, 0.05, "the pending step expired")
        res = f.cli("rollout", "--key", f.ops.key("bob"), "--json")
        assert res.returncode == 2 and "nothing to sign" in res.stderr, res.stderr
        two_sign(f, "--release", digest(NEW), "--hosts", "or-01")
        deploy(f, "or-01", NEW)
        assert settled(f)["state"] == "ARMED"

        rep = two_sign(f, "--abort", "--reason", "bad canary")
        assert rep["rollout"]["phase"] == "aborted"
        rep = wait_until(lambda: (s := status(f))["state"] == "KILLED" and s, 20, 0.05, "killed")
        assert rep["cause"] == "version_split" and "or-01" in rep["reason"]
        assert "rollout_abort" in audit_actions(f)

        keys = NodeKeys(f.node)
        with redis_sync.Redis.from_url(redis_url, decode_responses=True) as r:
            # an aborted rollout written back as live: the aggregator remembers it finished
            r.hset(keys.rollout, "phase", "canary")
            wait_until(
                lambda: status(f)["rollout"]["refusal"] == "replayed", 10, 0.05, "replay seen"
            )
            assert "or-01" in arm_refused(f)  # arm follows the aggregator
            # a new aggregator instance learns from the audit trail that rollout 1 ended
            agg = f.aggregator
            assert agg is not None
            before = len(agg.events("ROLLOUT_NOT_PROVEN"))
            agg.stop()
            agg = f.start_aggregator("--tick", "0.05", "--metrics-port", str(agg_port))
            wait_until(
                lambda: len(agg.events("ROLLOUT_NOT_PROVEN")) > before,
                30, 0.05, "the new aggregator refuses the replay",
            )  # fmt: skip
            assert agg.events("ROLLOUT_NOT_PROVEN")[-1]["reason"] == "replayed"
            # a new rollout whose begin carries alice's signature twice (one operator)
            req = RolloutRequest(f.node, "begin", 2, digest(OLD), digest(NEW), ("or-01",), "",
                                 2**40)  # fmt: skip
            sig = asyncio.run(ssh_sign(f.ops.key("alice"), req.encode()))
            forged = Proof(req.encode(), (sig, sig)).to_text()
            r.hset(keys.rollout, mapping={"seq": "2", "phase": "canary", "begin": forged,
                                          "from": digest(OLD), "to": digest(NEW),
                                          "hosts": "or-01", "begin_by": "alice,bob"})  # fmt: skip
        rep = wait_until(
            lambda: (s := status(f))["rollout"]["verified"] is False and s, 10, 0.05, "refused"
        )
        assert rep["rollout"]["refusal"] == "one_operator"
        assert gauge(agg_port, "killswitch_rollout_unproven", f.node) == 1.0
        assert gauge(agg_port, "killswitch_rollout_hosts", f.node) == 0.0
        assert rep["release_split"]["odd"] == {"or-01": digest(NEW)}
        assert "or-01" in arm_refused(f)

        code, _, err = rollout(f, "alice", "--release", digest(ODD), "--hosts", "or-02")
        assert code == 4 and "does not verify" in err
        assert two_sign(f, "--abort")["rollout"]["phase"] == "aborted"  # clears the forgery

        # a unanimous "rollback" to a release no rollout named: still a split
        for h in HOSTS:
            deploy(f, h, ODD)
        rep = status(f)
        assert set(rep["release_split"]["odd"]) == set(HOSTS)
        assert "approved release is" in rep["release_split"]["reason"]
        assert all(h in arm_refused(f) for h in HOSTS)
        assert "refused" in audit_actions(f)
