"""Release attestation on real processes: a split roster cannot be armed, an armed node that
splits is killed with cause `version_split`, a host that cannot read its release blocks.

Real sidecar and aggregator processes and a real redis-server; each sidecar runs in its own
directory and attests `bin` and `flags/*.toml` there, as the same install path would be on
each production host.
"""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from killswitch.sim.embedded import free_port
from killswitch.store.keys import NodeKeys
from kstest import Fleet, wait_until

EIGHT = [f"or-0{i}" for i in range(1, 9)]
ATTEST = ("bin", "flags/*.toml")


def install(f: Fleet, host: str, code: bytes = b"smars v2", flags: str = "rlp = true\n") -> None:
    d = f.release_dir(host)
    (d / "flags").mkdir(exist_ok=True)
    (d / "bin").write_bytes(code)
    (d / "flags" / "smars.toml").write_text(flags)


SPLIT_BOUND_MS = 5000


def server_ms(redis_url: str) -> int:
    with redis_sync.Redis.from_url(redis_url) as r:
        secs, micros = r.time()
    return int(secs) * 1000 + int(micros) // 1000


def killed_ms(redis_url: str, node: str) -> int:
    with redis_sync.Redis.from_url(redis_url, decode_responses=True) as r:
        return int(r.hget(NodeKeys(node).state, "killed_ms") or 0)


def status(f: Fleet) -> dict[str, Any]:
    code, rep = f.cli_json("status")
    assert code in (0, 3), rep  # 3: read, but some host does not prove the state
    return rep


def arm_refused(f: Fleet) -> tuple[dict[str, Any], str]:
    res = f.cli("arm", "--key", f.ops.key("alice"), "--reason", "open", "--json")
    assert res.returncode == 4, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout), res.stderr


def start(f: Fleet, *agg: str) -> Fleet:
    for h in f.hosts:
        install(f, h)
    f.start()
    f.start_aggregator("--tick", "0.05", *agg)
    f.wait_ready(60)
    wait_until(lambda: len(status(f)["releases"]) == 1, 20, 0.05, "every host attested")
    return f


@pytest.fixture
def three(redis_url: str, node: str) -> Iterator[Fleet]:
    f = Fleet(
        redis_url, node, EIGHT[:3], attest=ATTEST, extra_sidecar_args=("--attest-interval", "0.3"),
        metrics_ports={"or-02": free_port()},
    )  # fmt: skip
    try:
        yield start(f)
    finally:
        f.stop()


def metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def trips_total(port: int, node: str) -> float | None:
    return metric(port, "killswitch_trips_total", node=node, cause="version_split")


class TestVersionSplit:
    """Issue 11, must show 1: the version vector is a trip rule and an arm check."""

    def test_eight_hosts_split_on_sighup_killed_refused_until_converged(
        self, redis_url: str, node: str
    ) -> None:
        """Same release: arm succeeds; or-08's binary changes and SIGHUP: killed with cause
        version_split within a few seconds of its new report, releases set or-08 apart, arm is
        refused naming it until it runs the fleet's release again."""
        port = free_port()
        f = Fleet(redis_url, node, EIGHT, attest=ATTEST)
        try:
            start(f, "--metrics-port", str(port))
            release = next(iter(status(f)["releases"]))
            assert status(f)["releases"] == {release: EIGHT}
            f.arm()
            f.wait_all("PONG ARMED")
            assert trips_total(port, node) == 0.0

            install(f, "or-08", code=b"smars v1 (power peg)")
            sighup_ms = server_ms(redis_url)
            f.sidecars["or-08"].send(signal.SIGHUP)
            rep = wait_until(
                lambda: (s := status(f))["state"] == "KILLED" and s, 20, 0.05, "node killed"
            )
            assert rep["cause"] == "version_split"
            assert "or-08" in rep["reason"]
            # Server time from the SIGHUP to the recorded kill: a few seconds at most, even on
            # a loaded machine (the path is one re-hash, one flush and one aggregator tick).
            assert 0 < killed_ms(redis_url, node) - sighup_ms < SPLIT_BOUND_MS
            [attested] = [
                e
                for e in f.sidecars["or-08"].events("ATTESTED")
                if e.get("forced") and e["previous"]
            ]
            odd = attested["release"]
            assert rep["releases"] == {release: EIGHT[:7], odd: ["or-08"]}
            assert rep["release_split"]["odd"] == {"or-08": odd}
            assert rep["hosts"]["or-08"]["release"] == odd
            assert rep["hosts"]["or-08"]["files"]["bin"] != rep["hosts"]["or-01"]["files"]["bin"]
            f.wait_all("PONG KILLED")

            # Within a few seconds of the split being visible, on server time: the audit's
            # trip entry against or-08's log event (both logged in wall-clock terms).
            trips = [e for e in f.cli_json("audit")[1]["entries"] if e["action"] == "trip"]
            assert [t["cause"] for t in trips] == ["version_split"] and "or-08" in trips[0][
                "reason"
            ]
            agg = f.aggregator
            assert agg is not None
            [logged] = agg.logged("VERSION_SPLIT")
            assert logged["hosts"] == ["or-08"]
            assert [e["cause"] for e in agg.logged("TRIP")] == ["version_split"]
            assert trips_total(port, node) == 1.0
            assert metric(port, "killswitch_release_split_hosts", node=node) == 1.0

            refused, err = arm_refused(f)
            assert refused["refused"] == {"or-08": f"runs release {odd}"}
            assert "or-08" in err and "version_split" in err
            human = f.cli("status")
            assert "SPLIT" in human.stdout and "or-08" in human.stdout

            install(f, "or-08")  # converges: the fleet's release again
            f.sidecars["or-08"].send(signal.SIGHUP)
            wait_until(lambda: len(status(f)["releases"]) == 1, 20, 0.05, "converged")
            wait_until(
                lambda: metric(port, "killswitch_release_split_hosts", node=node) == 0.0,
                10, 0.05, "split gauge back to 0",
            )  # fmt: skip
            f.arm(reason="converged")
            f.wait_all("PONG ARMED")
        finally:
            f.stop()


class TestAttestProblems:
    """Issue 11, must show 3 and the re-hash period: reading the release, without SIGHUP."""

    def test_changed_flag_without_sighup_is_a_split(self, three: Fleet) -> None:
        """A reused flag file changed on or-03 (no SIGHUP) splits the armed node within one
        re-hash period: killed with cause version_split."""
        three.arm()
        three.wait_all("PONG ARMED")
        install(three, "or-03", flags="rlp = true\npower_peg = true\n")
        rep = wait_until(
            lambda: (s := status(three))["state"] == "KILLED" and s, 20, 0.05, "node killed"
        )
        assert rep["cause"] == "version_split" and "or-03" in rep["reason"]
        assert (
            rep["hosts"]["or-03"]["files"]["flags/smars.toml"]
            != (rep["hosts"]["or-01"]["files"]["flags/smars.toml"])
        )

    def test_missing_attested_file_blocks_that_host_and_names_it(self, three: Fleet) -> None:
        """or-02's binary disappears: its gate blocks (unarmed), status and its log name the
        file, arm is refused naming it, and its peers trade on."""
        three.arm()
        three.wait_all("PONG ARMED")
        (three.release_dir("or-02") / "bin").unlink()
        wait_until(lambda: three.order("or-02").endswith(" unarmed"), 20, 0.05, "or-02 blocks")
        rep = status(three)
        assert rep["state"] == "ARMED"
        assert "bin" in rep["hosts"]["or-02"]["attest"]
        assert rep["hosts"]["or-02"]["proof"] == "unattested"
        assert three.order("or-01").startswith("ALLOW")
        [failed] = three.sidecars["or-02"].logged("ATTEST_FAILED")
        assert "cannot read bin" in failed["reason"]
        port = three.metrics_ports["or-02"]
        labels = {"node": three.node, "host": "or-02"}
        assert metric(port, "killswitch_attest_unreadable", **labels) == 1.0
        three.cli("kill", "--reason", "re-arm")
        refused, err = arm_refused(three)
        assert "cannot read bin" in refused["refused"]["or-02"] and "or-02" in err
