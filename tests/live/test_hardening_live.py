"""Hardening on real processes: the sync loop never dies silently, liveness is judged by the
node's bound, the static cap is always active, the metrics server binds loopback by default."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import structlog
from redis.asyncio import Redis as AsyncRedis
from structlog.testing import CapturingLogger

from killswitch.core.node.state import NodeState
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.sim.operators import make_operators, two_person_arm
from killswitch.store.localstate import LocalState, Memo
from killswitch.store.redisconn import connect
from killswitch.store.store import Store
from kstest import Fleet, Proc, fleet, wait_until, wait_until_async

HOSTS = ["or-01", "or-02"]


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        for line in r.read().decode().splitlines():
            if line.startswith((name + "{", name + " ")):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not served")


def host_report(f: Fleet, host: str, *extra: str) -> dict[str, Any]:
    code, rep = f.cli_json("status", *extra)
    assert code in (0, 3), rep  # 3: read, but some host does not prove the state
    hosts: dict[str, Any] = rep["hosts"]
    return dict(hosts[host])


class TestSyncLoopNeverDiesSilently:
    def test_unwritable_state_file_blocks_is_told_everywhere_and_recovers(
        self, redis_server: EmbeddedRedis, node: str
    ) -> None:
        """A state file that cannot be written closes the gate, turns /healthz 503 with the
        reason, counts, logs, reports to Redis, and is retried until it works again."""
        port = free_port()
        with fleet(redis_server.url, node, HOSTS, metrics_ports={"or-01": port}) as f:
            f.start_aggregator("--tick", "0.05")
            f.wait_ready()
            state_file = f.workdir / "state" / f"{node}@or-01.json"
            assert healthz(port) == (200, "ok\n")
            # A directory in the file's place: every write of a new epoch fails.
            state_file.unlink(missing_ok=True)  # a fresh node: nothing recorded yet
            state_file.mkdir()
            code, rep = f.cli_json("arm", "--key", f.ops.key("alice"), "--reason", "t")
            assert code == 5, rep  # the first operator's signed request is pending
            code, rep = f.cli_json("arm", "--key", f.ops.key("bob"), "--timeout", "2")
            assert code == 3 and rep["missing"] == ["or-01"], rep
            assert f.ping("or-01").startswith("PONG STALE")
            assert f.order("or-01").startswith("BLOCK")
            assert f.ping("or-02").startswith("PONG ARMED")
            status, body = healthz(port)
            assert status == 503 and "unwritable" in body and str(state_file) in body
            assert metric(port, "killswitch_sync_loop_errors_total") >= 1
            assert metric(port, "killswitch_healthy") == 0
            assert f.sidecars["or-01"].logged("LOCAL_STATE_UNWRITABLE")
            rep1 = host_report(f, "or-01")
            assert "unwritable" in rep1["regression"], rep1  # reported to Redis
            # Fix the disk: the next round trip writes, the host applies ARMED again.
            state_file.rmdir()
            f.wait_all("PONG ARMED")
            wait_until(lambda: healthz(port) == (200, "ok\n"), 10, what="healthz ok again")
            assert json.loads(state_file.read_text())["max_state"] == "ARMED"
            assert f.sidecars["or-01"].logged("LOCAL_STATE_WRITABLE")


class TestLivenessByNodeBound:
    def test_status_and_arm_do_not_trust_a_hosts_long_claim(
        self, redis_server: EmbeddedRedis, node: str
    ) -> None:
        """A host claiming stale-after 10 s is not alive for status or arm after ~1 s of silence."""
        f = Fleet(redis_server.url, node, HOSTS, stale_after=10.0)
        with f:
            f.start_aggregator("--tick", "0.05")
            f.wait_ready()
            proc = f.sidecars["or-01"].popen
            assert proc is not None
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: not host_report(f, "or-01")["alive"], 10, what="or-01 not alive")
                # The host's own claim (10 s) would still call it alive: the node's bound decides.
                assert host_report(f, "or-01", "--stale-after", "10")["alive"]
                code, rep = f.cli_json("arm", "--key", f.ops.key("alice"), "--reason", "t")
                assert code == 4 and "or-01" in rep["refused"], rep
            finally:
                os.kill(proc.pid, signal.SIGCONT)


class TestStaticCapAlwaysActive:
    def test_aggregator_without_max_orders_enforces_the_derived_cap(
        self, redis_server: EmbeddedRedis, node: str, tmp_path: Path
    ) -> None:
        """No --max-orders: the aggregator enforces 1000 orders/s per roster host over the window,
        and status shows it as an active, enforcing rule."""
        f = Fleet(redis_server.url, node, HOSTS)
        with f:
            agg = Proc("aggregator", [sys.executable, "-m", "killswitch", "aggregator",
                                      "--hosts", ",".join(HOSTS), "--window", "2",
                                      "--tick", "0.05"], tmp_path / "agg.log")  # fmt: skip
            agg.start(f.env())
            try:
                f.wait_ready()

                def view() -> dict[str, Any]:
                    rep: dict[str, Any] = f.cli_json("status")[1].get("aggregator", {})
                    return rep if rep.get("rules") else {}

                v = wait_until(view, 20, 0.1, "aggregator view with rules")
                assert v["max_orders"] == 1000 * len(HOSTS) * 2  # a number in status --json
                cap = [r for r in v["rules"] if r["rule"] == "max_orders"]
                assert cap and cap[0]["active"] and not cap[0]["shadow"], v["rules"]
                assert "NO ACTIVE TRIP RULE" not in f.cli("status").stdout
            finally:
                agg.stop()


class TestMetricsListen:
    def test_sidecar_metrics_bind_loopback_by_default(
        self, redis_server: EmbeddedRedis, node: str
    ) -> None:
        """Without --metrics-listen the sidecar's /metrics listens on 127.0.0.1 only."""
        port = free_port()
        with fleet(redis_server.url, node, ["or-01"], metrics_ports={"or-01": port}):
            wait_until(lambda: healthz(port)[0] == 200, 10, what="metrics up")
            assert _listeners(port) == ["127.0.0.1"]

    def test_metrics_listen_all_interfaces(self, redis_server: EmbeddedRedis, node: str) -> None:
        """--metrics-listen 0.0.0.0 binds every interface (for scraping across containers)."""
        port = free_port()
        f = Fleet(redis_server.url, node, ["or-01"], metrics_ports={"or-01": port},
                  extra_sidecar_args=("--metrics-listen", "0.0.0.0"))  # fmt: skip
        with f:
            wait_until(lambda: healthz(port)[0] == 200, 10, what="metrics up")
            assert _listeners(port) == ["0.0.0.0"]


def _listeners(port: int) -> list[str]:
    """Local IPv4 addresses listening on `port`, from the kernel's own table."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, st = line.split()[1], line.split()[3]
        ip_hex, port_hex = local.split(":")
        if int(port_hex, 16) == port and st == "0A":  # 0A: LISTEN
            ip = ".".join(str(int(ip_hex[i : i + 2], 16)) for i in (6, 4, 2, 0))
            out.append(ip)
    return out


class _BrokenState(LocalState):
    """A state file whose writes fail with an error nobody planned for (not an OSError)."""

    broken = True

    def save(self, max_epoch: int, state: NodeState | None, memo: Memo | None = None) -> None:
        if self.broken:
            raise ValueError("simulated bug in the write path")
        super().save(max_epoch, state, memo)


class TestSyncLoopSurvivesAnyError:
    async def test_unexpected_error_closes_gate_counts_and_retries(
        self, redis: AsyncRedis, redis_url: str, node: str, tmp_path: Path
    ) -> None:
        """Any exception in a sync iteration closes the gate, is logged and counted, shows on
        /healthz's reason, and the loop keeps going until the iteration succeeds again."""
        store = Store(redis, node)
        await store.set_roster(["py-01"], "test")
        ops = make_operators(tmp_path / "operators")
        settings = SidecarSettings(
            node=node, host="py-01", redis_url=redis_url, state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5, operators=str(ops.file),
        )  # fmt: skip
        logger = CapturingLogger()
        client = connect(redis_url)
        sc = Sidecar(settings, client, logger=structlog.wrap_logger(logger, processors=[]))
        broken = _BrokenState(tmp_path, node, "py-01")
        sc.memory.local = broken
        await sc.start()
        try:
            await wait_until_async(lambda: sc.last_ok is not None)
            armed = await two_person_arm(store, ops, reason="t", timeout=0.5)
            assert armed.code == 3, armed  # the host cannot record it, so never confirms
            await wait_until_async(lambda: sc.loop_errors >= 3)
            assert not sc.gate.is_open
            assert "simulated bug" in sc.problem()
            assert [c for c in logger.calls if c.kwargs.get("event") == "SYNC_LOOP_ERROR"]
            broken.broken = False
            await wait_until_async(lambda: sc.gate.is_open)
            assert sc.problem() == ""
            assert [c for c in logger.calls if c.kwargs.get("event") == "SYNC_LOOP_RECOVERED"]
        finally:
            await sc.stop()
            await client.aclose()


class TestBlockLogNeverStarvesTheLoop:
    def test_blocked_stderr_flood_keeps_sync_and_counts_every_block(
        self, redis_server: EmbeddedRedis, node: str
    ) -> None:
        """With stderr not being read, a flood of blocked orders neither stalls PING nor the
        kill confirmation, and every BLOCK is in the log: a line or a summary count."""
        f = Fleet(redis_server.url, node, ["or-01"])
        asyncio.run(_set_roster(redis_server.url, node, ["or-01"]))
        proc = subprocess.Popen(
            f.sidecar_args("or-01"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=f.env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()))  # type: ignore[union-attr]
        try:
            f.wait_serving("or-01")
            blocked = 0
            with f.client("or-01") as c:
                for batch in range(40):  # 40 x 500 orders, far more than a pipe buffer holds
                    c.send(*(f"ORDER b{batch}-{i} AAPL BUY 1" for i in range(500)))
                    replies = [c.reply() for _ in range(500)]
                    assert all(r.startswith("BLOCK") for r in replies), replies[:3]
                    blocked += len(replies)
                assert c.ping().startswith("PONG")  # the loop answers while stderr is stuck
            res = f.cli("kill", "--reason", "flood", "--timeout", "5", "--json")
            assert res.returncode == 0, res.stderr
            assert json.loads(res.stdout)["confirmed"] == ["or-01"]
        finally:
            reader.start()
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
            reader.join(20)
            if proc.stdout is not None:
                proc.stdout.close()
        events = [json.loads(x) for x in b"".join(out).decode().splitlines() if x.startswith("{")]
        lines = [e for e in events if e["event"] == "BLOCK_ORDER" and not e.get("summary")]
        summaries = [e for e in events if e["event"] == "BLOCK_ORDER" and e.get("summary")]
        assert summaries, "the flood should have outrun a stuck stderr"
        counted = sum(sum(e["counts"].values()) for e in summaries)
        assert len(lines) + counted == blocked
        assert all(set(e["counts"]) <= {"unarmed", "stale", "killed"} for e in summaries)


async def _set_roster(url: str, node: str, hosts: list[str]) -> None:
    r = AsyncRedis.from_url(url, decode_responses=True)
    try:
        await Store(r, node).set_roster(hosts, "test")
    finally:
        await r.aclose()
