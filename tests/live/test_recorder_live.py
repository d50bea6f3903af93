"""The flight recorder on real sidecar processes and a real redis-server: every decision in
the ring, one merged timeline, a kill frozen on every host and named in its confirmation,
a ring that survives SIGKILL mid-flood; and the flush script's recorder fields."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from killswitch.core.enforce.recfmt import HEADER_SIZE, INDEX_OFFSET, decode
from killswitch.core.enforce.timeline import NS
from killswitch.runtime import ring as ringmod
from killswitch.sim.embedded import free_port
from killswitch.store.store import FlushReport, Store
from kstest import Fleet, GateClient, wait_until

HOSTS = ["or-01", "or-02"]
# The recorder's writers a sidecar here runs: the C one unless this machine is allowed
# without it (tests/unit/test_ringwrite.py fails where it did not build).
WRITERS = (
    ["python"]
    if os.environ.get("KILLSWITCH_ALLOW_PURE_RECORDER") == "1" and not ringmod.NATIVE
    else ["native", "python"]
)


def status(f: Fleet) -> dict[str, Any]:
    return f.cli_json("status")[1]


def ring(f: Fleet, host: str) -> Path:
    return f.workdir / "state" / f"{f.node}@{host}.rec"


def recorder(f: Fleet, *args: str) -> tuple[int, dict[str, Any], str]:
    res = f.cli("recorder", *args, "--json")
    return res.returncode, (json.loads(res.stdout) if res.stdout else {}), res.stderr


@pytest.fixture
def two(redis_url: str, node: str, tmp_path: Path) -> Iterator[Fleet]:
    limits = tmp_path / "limits.toml"
    limits.write_text("max_qty = 1000\n")
    f = Fleet(
        redis_url, node, HOSTS, metrics_ports={h: free_port() for h in HOSTS},
        extra_sidecar_args=("--limits", str(limits), "--recorder-freeze", "1"),
    )  # fmt: skip
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(60)
        yield f
    finally:
        f.stop()


def trade(f: Fleet, host: str) -> list[str]:
    """Blocked before the arm is in force on this host, then allowed, limited, cancelled."""
    with f.client(host) as c:
        return [
            c.request(f"ORDER {host}-allow KCG BUY 100 10.5"),
            c.request(f"ORDER {host}-limit KCG SELL 5000 10.5"),
            c.request(f"CANCEL {host}-cancel {host}-allow"),
        ]


class TestTimeline:
    """Issue 25, must show 1: decisions of every kind on two hosts, then a kill."""

    def test_every_decision_in_the_merged_timeline_and_the_kill_frozen_on_every_host(
        self, two: Fleet
    ) -> None:
        """Blocked (unarmed), allowed, limited, cancelled, then killed and blocked (killed):
        the merged timeline lists each in order with its decision, reason, epoch and release;
        each host froze the kill into <node>@<host>.<epoch>.rec, whose sha256 its confirmation
        names, holding the ring's records within a second of the kill, and `recorder --node
        --around` pulls those files from every sidecar's /recorder."""
        f = two
        for h in HOSTS:
            assert f.order(h, f"{h}-early").endswith("unarmed")
        armed = f.arm()["epoch"]
        f.wait_all("PONG ARMED")
        for h in HOSTS:
            assert [r.split()[0] for r in trade(f, h)] == ["ALLOW", "BLOCK", "ALLOW"]
        code, kill = f.cli_json("kill", "--reason", "runaway", "--operator", "sre")
        assert code == 0, kill
        epoch = kill["epoch"]
        for h in HOSTS:
            assert f.order(h, f"{h}-late") == f"BLOCK {h}-late {epoch} killed"

        def frozen() -> dict[str, Any] | None:
            hosts = status(f)["hosts"]
            recs = {h: hosts[h]["recorder"] for h in HOSTS}
            return recs if all(r and r["complete"] for r in recs.values()) else None

        recs = wait_until(frozen, 30, 0.1, "every host's frozen file complete")
        hosts = status(f)["hosts"]
        release = {h: hosts[h]["release"][:12] for h in HOSTS}
        limits = {h: hosts[h]["limits_digest"][:12] for h in HOSTS}
        assert all(release.values()) and all(limits.values())

        code, out, err = recorder(f, *(str(ring(f, h)) for h in HOSTS))
        assert code == 0, err
        rows = out["records"]
        assert [r["t_ns"] for r in rows] == sorted(r["t_ns"] for r in rows)
        for h in HOSTS:
            mine = [
                (r["order_id"], r["decision"], r["reason"], r["epoch"], r["release"], r["limits"])
                for r in rows
                if r["host"] == h
            ]
            assert mine == [
                (f"{h}-early", "block", "unarmed", 0, release[h], limits[h]),
                (f"{h}-allow", "allow", "", armed, release[h], limits[h]),
                (f"{h}-limit", "block", "limit", armed, release[h], limits[h]),
                (f"{h}-cancel", "cancel", "", armed, release[h], limits[h]),
                ("-", "kill", "killed", epoch, release[h], limits[h]),
                (f"{h}-late", "block", "killed", epoch, release[h], limits[h]),
            ]

        frozen_rows = []
        for h in HOSTS:
            path = Path(recs[h]["file"])
            assert path.name == f"{f.node}@{h}.{epoch}.rec"
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == recs[h]["digest"]
            d = decode(data)
            assert (d.header.epoch, d.header.complete, d.header.freeze_s) == (epoch, True, 1)
            lo, hi = d.header.kill_ns - NS, d.header.kill_ns + NS
            window = [r["seq"] for r in rows if r["host"] == h and lo <= r["t_ns"] <= hi]
            assert [e.seq for e in d.entries] == window
            assert ("-", "kill") in {(e.order_id, e.decision) for e in d.entries}
            frozen_rows += [e.to_json() for e in d.entries]
        # every host's frozen file, pulled from its sidecar's metrics port
        code, pulled, err = recorder(f, "--around", str(epoch))
        assert code == 0, err
        assert [{k: v for k, v in r.items() if k != "time"} for r in pulled["records"]] == sorted(
            frozen_rows, key=lambda r: (r["t_ns"], r["host"], r["seq"])
        )


class TestRestart:
    def test_a_host_restarted_after_a_kill_keeps_that_kills_frozen_file(self, two: Fleet) -> None:
        """A sidecar restarted on a killed node does not freeze the kill again around its
        restart: the frozen file stays byte for byte, and its confirmation names it again."""
        f = two
        f.arm()
        f.wait_all("PONG ARMED")
        code, kill = f.cli_json("kill", "--reason", "runaway", "--operator", "sre")
        assert code == 0, kill

        def complete() -> dict[str, Any] | None:
            rec = status(f)["hosts"]["or-01"]["recorder"]
            return rec if rec and rec["complete"] else None

        before = wait_until(complete, 30, 0.1, "or-01's frozen file complete")
        data = Path(before["file"]).read_bytes()
        f.sidecars["or-01"].stop()
        f.start_sidecar("or-01")
        f.wait_all(f"PONG KILLED {kill['epoch']}")
        wait_until(lambda: status(f)["hosts"]["or-01"]["alive"], 30, 0.1, "or-01 reporting")
        assert complete() == before
        assert Path(before["file"]).read_bytes() == data


class TestCrash:
    """Issue 25, must show 2: a sidecar SIGKILLed in the middle of a flood."""

    @pytest.mark.parametrize("writer", WRITERS)
    def test_sigkill_mid_flood_leaves_a_readable_ring_with_at_most_one_record_skipped(
        self, redis_url: str, node: str, writer: str
    ) -> None:
        """Orders pipelined as fast as the client goes; SIGKILL once the ring wrapped: the
        file decodes, its records are consecutive orders of the flood, at most one skipped.
        With each writer the sidecar can run (the C writer: required where it can build)."""
        args = ("--recorder-size", "500", "--recorder-writer", writer)
        f = Fleet(redis_url, node, ["or-01"], extra_sidecar_args=args)
        try:
            f.start()
            [started] = wait_until(lambda: f.sidecars["or-01"].events("RECORDER_STARTED"), 30)
            assert started["writer"] == writer
            path = ring(f, "or-01")
            stop = threading.Event()

            def flood() -> None:
                try:
                    with GateClient(f.address("or-01")) as c:
                        n = 0
                        while not stop.is_set():
                            c.send(*(f"ORDER o{n + i} KCG BUY 1" for i in range(200)))
                            for _ in range(200):
                                c.reply()
                            n += 200
                except (OSError, ConnectionError):
                    pass  # the sidecar is gone: that is the point

            t = threading.Thread(target=flood, daemon=True)
            t.start()
            wait_until(lambda: written(path) > 3000, 60, 0.01, "the ring wrapped several times")
            f.sidecars["or-01"].stop(signal.SIGKILL)
            stop.set()
            t.join(10)
        finally:
            f.stop()
        d = decode(path.read_bytes())
        assert d.skipped <= 1
        assert 499 <= len(d.entries) <= 500
        seqs = [e.seq for e in d.entries]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
        ids = [int(e.order_id[1:]) for e in d.entries]
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert {(e.decision, e.reason) for e in d.entries} == {("block", "unarmed")}


def written(path: Path) -> int:
    with path.open("rb") as fh:
        head = fh.read(HEADER_SIZE)
    return int.from_bytes(head[INDEX_OFFSET : INDEX_OFFSET + 8], "little") - 1


class TestRefusal:
    """Issue 25, must show 3 (second half): a file of another format version."""

    def test_a_sidecar_refuses_a_ring_file_of_another_format_version(
        self, redis_url: str, node: str, tmp_path: Path
    ) -> None:
        """`killswitch sidecar --recorder F` where F is a version-2 recorder file: exit 2 and
        one line naming the file and both versions; the file is left as it was."""
        other = tmp_path / "old.rec"
        other.write_bytes(b"KSFLTREC\x02\x00" + bytes(300))
        res = subprocess.run(
            [sys.executable, "-m", "killswitch", "sidecar", "--node", node, "--host", "or-01",
             "--redis", redis_url, "--listen", f"unix:{tmp_path / 'g.sock'}",
             "--state-dir", str(tmp_path), "--recorder", str(other)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and str(other) in lines[0] and "version 2" in lines[0], lines
        assert other.read_bytes() == b"KSFLTREC\x02\x00" + bytes(300)

    def test_recorder_node_names_a_host_it_cannot_pull_and_prints_the_rest(
        self, redis_url: str, node: str
    ) -> None:
        """`recorder --node N` with one host serving no metrics port: that host is named on
        stderr with why, the other host's records are printed, and the exit is 1."""
        f = Fleet(redis_url, node, HOSTS, metrics_ports={"or-01": free_port()})
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(60)
            for h in HOSTS:
                assert f.order(h, f"{h}-x").endswith("unarmed")
            res = f.cli("recorder", "--json")
        finally:
            f.stop()
        assert res.returncode == 1
        assert "or-02" in res.stderr and "no metrics address" in res.stderr
        assert [r["order_id"] for r in json.loads(res.stdout)["records"]] == ["or-01-x"]


class TestConfirmationFields:
    async def test_the_flush_script_names_the_frozen_file_only_in_that_kills_confirmation(
        self, redis: Redis, node: str
    ) -> None:
        """Recorder fields reported for epoch 7 go into a confirmation of epoch 7 (also when
        they arrive a round trip later), and the newly named file is published on the
        confirms channel (a waiting `kill` wakes); a confirmation of epoch 8 names no file."""
        store = Store(redis, node)
        confirm = store.keys.host("or-01").confirm
        pubsub = redis.pubsub()
        await pubsub.subscribe(store.keys.confirms)

        def report(confirm_epoch: int, *rec: tuple[str, str]) -> FlushReport:
            return FlushReport(
                boot="b", allowed=0, blocked=0, acked_allowed=0, acked_blocked=0, max_epoch=8,
                view="KILLED", gate="closed", orders_per_s=0.0, stale_after_ms=1000,
                regression="", confirm_epoch=confirm_epoch, confirm_ver=1, extra=rec,
            )  # fmt: skip

        await store.flush("or-01", report(7), "test")
        assert await redis.hget(confirm, "recorder_file") is None
        frozen = (("recorder_epoch", "7"), ("recorder_file", "/s/x.7.rec"),
                  ("recorder_digest", "d7"), ("recorder_complete", "0"))  # fmt: skip
        await store.flush("or-01", report(0, *frozen), "test")
        got = await redis.hmget(confirm, "recorder_file", "recorder_digest", "recorder_complete")
        assert got == ["/s/x.7.rec", "d7", "0"]
        await store.flush("or-01", report(0, *frozen), "test")  # named already: no message
        published: list[str] = []
        deadline = time.monotonic() + 10
        while len(published) < 3 and time.monotonic() < deadline:  # a third would be a bug
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if msg is not None:
                published.append(msg["data"])
            elif len(published) == 2:
                break
        await pubsub.aclose()
        assert published == ["or-01 7 1", "or-01 7 recorder"]
        await store.flush("or-01", report(8, *frozen), "test")
        assert await redis.hget(confirm, "epoch") == "8"
        assert await redis.hget(confirm, "recorder_file") == ""
