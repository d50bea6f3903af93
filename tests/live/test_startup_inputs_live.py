"""What the aggregator reads at start, junk in each, on real processes (issue 27): a leftover
local audit copy (another deployment's chain with a break marker, or anything at all), the
stored baseline, the rollout record, the roster, the operators file. None of it crashes the
service, and every trip still fires: the static cap (`max_orders`) and the version vector
(`version_split`).

Four real sidecar processes attest `bin` and `flags/*.toml` in their own directories (one
fleet for the module); each test starts its own aggregator process on them.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families

from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.sim.fleet import Proc
from killswitch.store.keys import NodeKeys
from kstest import Fleet, wait_until
from kstest.auditcopies import copies, leftover_copy, orphans_of

HOSTS = ["or-01", "or-02", "or-03", "or-04"]
ATTEST = ("bin", "flags/*.toml")
CAP = 40  # orders across the node within the window (2 s) that trip max_orders
_runs = itertools.count(1)


def install(f: Fleet, host: str, code: bytes = b"smars v2") -> None:
    d = f.release_dir(host)
    (d / "flags").mkdir(exist_ok=True)
    (d / "bin").write_bytes(code)
    (d / "flags" / "smars.toml").write_text("rlp = true\n")


def status(f: Fleet) -> dict[str, Any]:
    code, rep = f.cli_json("status")
    assert code in (0, 3), rep
    return rep


def metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


@pytest.fixture(scope="module")
def fleet(redis_server: EmbeddedRedis) -> Iterator[Fleet]:
    f = Fleet(redis_server.url, f"startin{os.getpid()}", HOSTS, attest=ATTEST,
              extra_sidecar_args=("--attest-interval", "0.3"))  # fmt: skip
    for h in HOSTS:
        install(f, h)
    try:
        f.start()
        yield f
    finally:
        f.stop()


def aggregator(f: Fleet, *args: str) -> Proc:
    """A fresh aggregator process (its own log file) on the module's fleet, once it runs."""
    log = f.workdir / "aggregator.log"
    if log.exists():
        log.rename(f.workdir / f"aggregator-{next(_runs)}.log")
    proc = f.start_aggregator(
        "--tick", "0.05", "--max-orders", str(CAP), "--window", "2", *args
    )  # fmt: skip
    wait_until(lambda: proc.events("AGGREGATOR_STARTED"), 60, 0.05, "aggregator started")
    f.wait_ready(60)
    wait_until(lambda: len(status(f)["releases"]) == 1, 30, 0.05, "one release")
    return proc


def killed_by(f: Fleet, epoch: int) -> dict[str, Any]:
    """The status once the node is killed above `epoch`."""
    return wait_until(  # type: ignore[no-any-return]
        lambda: (s := status(f))["state"] == "KILLED" and s["epoch"] > epoch and s,
        30, 0.05, "node killed",
    )  # fmt: skip


def every_trip_fires(f: Fleet, proc: Proc) -> None:
    """Armed, a flood over the cap kills the node (max_orders); armed again, one host's
    rewritten binary and SIGHUP kill it (version_split); the release converges after."""
    rep = f.arm(reason="cap check")
    f.wait_all("PONG ARMED")
    with f.client("or-01") as c:
        c.send(*(f"ORDER f{i} AAPL BUY 1" for i in range(CAP + 10)))
        [c.reply() for _ in range(CAP + 10)]
    assert killed_by(f, rep["epoch"])["cause"] == "max_orders"
    rep = f.arm(reason="split check")
    f.wait_all("PONG ARMED")
    install(f, "or-04", code=b"smars v1 (power peg)")
    f.sidecars["or-04"].send(signal.SIGHUP)
    try:
        killed = killed_by(f, rep["epoch"])
    finally:
        install(f, "or-04")
        f.sidecars["or-04"].send(signal.SIGHUP)
    assert killed["cause"] == "version_split" and "or-04" in killed["reason"]
    wait_until(lambda: len(status(f)["releases"]) == 1, 30, 0.05, "converged")
    view = status(f)["aggregator"]
    assert view["rule_faults"] == {}
    assert all(ms > 0 for ms in view["rules_last_evaluated"].values())
    assert {"max_orders", "version_split"} <= set(view["rules_last_evaluated"])
    assert not proc.events("RULE_FAULT") and not proc.events("TICK_FAILED")


class TestLeftoverAuditCopy:
    """Issue 27, must show 1 and 2: an old local copy never switches off a trip."""

    def test_old_copy_with_a_break_marker_still_kills_the_split_node(self, fleet: Fleet) -> None:
        """Four hosts ARMED over a leftover copy (an earlier chain, its break marker): one
        host's attested binary rewritten and SIGHUP kill the node with cause version_split;
        the copy was rotated aside unchanged, loudly, counted, and a fresh one verifies."""
        copy = fleet.workdir / "audit-leftover.jsonl"
        copy.write_text(leftover_copy())
        port = free_port()
        proc = aggregator(fleet, "--audit-log", str(copy), "--metrics-port", str(port))
        try:
            rep = fleet.arm(reason="four hosts")
            fleet.wait_all("PONG ARMED")
            install(fleet, "or-04", code=b"smars v1 (power peg)")
            fleet.sidecars["or-04"].send(signal.SIGHUP)
            try:
                killed = killed_by(fleet, rep["epoch"])
            finally:
                install(fleet, "or-04")
                fleet.sidecars["or-04"].send(signal.SIGHUP)
            assert killed["cause"] == "version_split" and "or-04" in killed["reason"]
            [rotated] = proc.logged("AUDIT_COPY_ROTATED")
            [orphan] = orphans_of(copy)
            assert rotated["moved_to"] == str(orphan) and rotated["level"] == "error"
            assert orphan.read_text() == leftover_copy()
            metric_name = "killswitch_audit_copy_rotations_total"
            assert metric(port, metric_name, node=fleet.node) == 1.0
            assert metric(port, "killswitch_trips_total", node=fleet.node,
                          cause="rule_fault") == 0.0  # fmt: skip
            rules = killed["aggregator"]["rules_last_evaluated"]
            assert rules["version_split"] > 0 and killed["aggregator"]["rule_faults"] == {}
            last = metric(port, "killswitch_rule_last_evaluated_seconds", node=fleet.node,
                          rule="version_split")  # fmt: skip
            assert last is not None and last > 0
            wait_until(lambda: "trip" in copy.read_text(), 20, 0.05, "the trip copied")
            res = fleet.cli("audit", "--verify", "--file", str(copy))
            assert res.returncode == 0, res.stdout + res.stderr
            human = fleet.cli("status").stdout
            assert "rules last evaluated" in human and "version_split" in human
            assert not proc.events("RULE_FAULT") and not proc.events("TICK_FAILED")
            wait_until(lambda: len(status(fleet)["releases"]) == 1, 30, 0.05, "converged")
        finally:
            proc.stop()

    @settings(
        max_examples=4,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(raw=copies())
    def test_any_leftover_copy_leaves_every_trip_firing(self, fleet: Fleet, raw: bytes) -> None:
        """Whatever junk the local copy holds at start, the cap and the version vector both
        still kill the node, and no rule is at fault."""
        copy = fleet.workdir / f"audit-junk-{next(_runs)}.jsonl"
        copy.write_bytes(raw)
        proc = aggregator(fleet, "--audit-log", str(copy))
        try:
            every_trip_fires(fleet, proc)
        finally:
            proc.stop()


def _redis(f: Fleet) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(f.redis_url, decode_responses=True)


JUNK_IN_REDIS = {
    "baseline of another type": lambda r, k: r.set(k.baseline, "junk"),
    "baseline junk fields": lambda r, k: r.hset(
        k.baseline, mapping={"format": "x", "window_ms": "-5", "global": "nan,nan"}
    ),
    "rollout of another type": lambda r, k: r.rpush(k.rollout, "junk"),
    "rollout junk fields": lambda r, k: r.hset(
        k.rollout, mapping={"seq": "9" * 40, "phase": "promoted", "hosts": "\x00", "proof": "{"}
    ),
    "roster of another type": lambda r, k: r.set(k.roster, "or-01,or-02"),
    "roster junk members": lambda r, k: r.sadd(k.roster, "NOT A HOST", "x" * 500, ""),
}


class TestJunkAtStart:
    """Issue 27, a test per input read at start: junk in it neither crashes nor silences."""

    @pytest.mark.parametrize("what", list(JUNK_IN_REDIS))
    def test_junk_in_redis_leaves_every_trip_firing(self, fleet: Fleet, what: str) -> None:
        """With junk in the baseline, the rollout record or the roster before the aggregator
        starts, it starts, and the cap and the version vector both still kill the node."""
        keys = NodeKeys(fleet.node)
        with _redis(fleet) as r:
            r.delete(keys.baseline, keys.rollout)
            JUNK_IN_REDIS[what](r, keys)
        proc = aggregator(fleet)
        try:
            every_trip_fires(fleet, proc)
        finally:
            proc.stop()
            with _redis(fleet) as r:
                r.delete(keys.baseline, keys.rollout)

    @pytest.mark.parametrize(
        "content",
        [b"", b"\xff\xfe junk", b"alice ssh-ed25519 AAAA-not-base64\n", b"[" * 5000],
    )
    def test_junk_operators_file_is_refused_in_one_line(
        self, redis_url: str, node: str, tmp_path: Path, content: bytes
    ) -> None:
        """An operators file the aggregator cannot use stops it at start with exit 2 and one
        line naming the file, never a traceback, never a silent start that could not trip."""
        path = tmp_path / "operators"
        path.write_bytes(content)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
        res = subprocess.run(
            [sys.executable, "-m", "killswitch", "aggregator", "--node", node, "--redis",
             redis_url, "--hosts", "h1,h2", "--operators", str(path),
             "--audit-log", str(tmp_path / "audit.jsonl")],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
        assert "Traceback" not in res.stderr and str(path) in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
