"""A kill on real sidecar processes with the flight recorder on: `kill --json` names every
host's frozen file and its sha256, and each sidecar's /metrics counts its records and
freezes; a host whose freeze fails is counted by reason and does not hold the kill up."""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from killswitch.core.enforce.recfmt import decode
from killswitch.sim.embedded import free_port
from kstest import Fleet

HOSTS = ["or-01", "or-02", "or-03"]
SIZE = 1000  # --recorder-size


def scrape(f: Fleet, host: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, labels but node/host) -> value, of every killswitch_recorder_ sample."""
    port = f.metrics_ports[host]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("killswitch_recorder_"):
                assert (s.labels["node"], s.labels["host"]) == (f.node, host)
                rest = tuple(
                    sorted((k, v) for k, v in s.labels.items() if k not in ("node", "host"))
                )
                out[(s.name, rest)] = s.value
    return out


@pytest.fixture
def three(redis_url: str, node: str) -> Iterator[Fleet]:
    # The default freeze span (60 s): the files named at the kill stay as they are, so their
    # digests can be checked against the bytes while the fleet runs.
    f = Fleet(
        redis_url, node, HOSTS, metrics_ports={h: free_port() for h in HOSTS},
        extra_sidecar_args=("--recorder-size", str(SIZE)),
    )  # fmt: skip
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(60)
        yield f
    finally:
        f.stop()


def trade(f: Fleet, n: int) -> None:
    for h in HOSTS:
        with f.client(h) as c:
            for i in range(n):
                assert c.request(f"ORDER {h}-{i} KCG BUY 1").startswith("ALLOW")


class TestKillNamesFrozenFiles:
    def test_kill_json_names_every_hosts_frozen_file_and_digest(self, three: Fleet) -> None:
        """Three hosts trade, then `kill --json`: its report (not a later status) gives each
        host's `recorder` with the file <node>@<host>.<epoch>.rec beside the ring, whose sha256
        is the digest, holding that host's orders and the kill marker; each sidecar's
        /metrics counts the records, one freeze, the file's size and no failure."""
        f = three
        f.arm()
        f.wait_all("PONG ARMED")
        trade(f, 5)
        code, kill = f.cli_json("kill", "--reason", "runaway", "--operator", "sre", "--timeout",
                                "30")  # fmt: skip
        assert code == 0, kill
        epoch = kill["epoch"]
        for h in HOSTS:
            rec = kill["hosts"][h]["recorder"]
            assert rec is not None, (h, kill["hosts"][h])
            path = Path(rec["file"])
            assert path == f.workdir / "state" / f"{f.node}@{h}.{epoch}.rec"
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == rec["digest"]
            assert rec["complete"] is False  # the span after the kill is still being recorded
            entries = decode(data).entries
            assert [e.order_id for e in entries if e.decision == "allow"] == [
                f"{h}-{i}" for i in range(5)
            ]
            assert [(e.decision, e.epoch) for e in entries][-1] == ("kill", epoch)

            m = scrape(f, h)
            assert m[("killswitch_recorder_records_total", ())] >= 6  # 5 orders, the kill
            assert m[("killswitch_recorder_capacity_records", ())] == SIZE
            assert m[("killswitch_recorder_freezes_total", ())] == 1
            assert m[("killswitch_recorder_frozen_bytes", ())] == len(data)
            assert m[("killswitch_recorder_dropped_total", ())] == 0
            fails = {k[1]: v for k, v in m.items() if k[0].endswith("freeze_failures_total")}
            assert fails == {
                (("reason", r),): 0.0 for r in ("io", "no_space", "other", "permission")
            }

    def test_a_failed_freeze_is_counted_and_does_not_hold_the_kill(self, three: Fleet) -> None:
        """or-02 cannot write its frozen file (a directory stands where its temporary file
        goes): the kill is still proven (exit 0) with or-01's and or-03's files named and
        or-02's recorder null, and or-02's /metrics counts one `io` failure."""
        f = three
        armed = f.arm()["epoch"]
        f.wait_all("PONG ARMED")
        state = f.workdir / "state"
        for e in range(armed + 1, armed + 6):  # the kill's epoch is the next one (or near)
            (state / f"{f.node}@or-02.{e}.rec.tmp").mkdir()
        code, kill = f.cli_json("kill", "--reason", "runaway", "--operator", "sre", "--timeout",
                                "30")  # fmt: skip
        assert code == 0, kill
        assert kill["epoch"] <= armed + 5
        recs: dict[str, Any] = {h: kill["hosts"][h]["recorder"] for h in HOSTS}
        assert recs["or-02"] is None
        assert all(recs[h] and Path(recs[h]["file"]).is_file() for h in ("or-01", "or-03"))
        m = scrape(f, "or-02")
        assert m[("killswitch_recorder_freeze_failures_total", (("reason", "io"),))] == 1
        assert m[("killswitch_recorder_freezes_total", ())] == 0
