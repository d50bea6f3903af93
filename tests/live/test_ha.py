"""High availability under faults, on real processes: Sentinel failover that loses a kill,
a frozen leader aggregator, and a wall clock that jumps by an hour.

Every wait is a condition with a deadline; assertions are orderings, never timings.
"""

from __future__ import annotations

import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.store.keys import NodeKeys
from kstest import Fleet, Hammer, Proc, no_allow_after_first_block, wait_until
from kstest.sentinel import SentinelCluster

HOSTS = ["or-01", "or-02", "or-03"]

pytestmark = pytest.mark.slow


def metric(port: int, name: str, **labels: str) -> float | None:
    """One sample from a process's /metrics, or None when it is not exported."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


class TestSentinelFailover:
    """A failover that loses an acknowledged kill cannot re-arm the hosts that confirmed it."""

    def test_failover_losing_the_kill_keeps_confirmed_hosts_blocked(self, node: str) -> None:
        """Kill confirmed, replica cut off, primary crashes: the promoted replica says ARMED at an older epoch, every host stays blocked."""
        with SentinelCluster(down_after_ms=1000, failover_timeout_ms=3000) as cluster:
            f = Fleet(cluster.url, node, HOSTS, stale_after=0.5, flush_interval=0.1)
            keys = NodeKeys(node)
            try:
                f.start()
                f.start_aggregator("--tick", "0.05")
                wait_until(lambda: f.ready(cluster.url), 20, 0.05, "all alive via Sentinel")
                armed = f.arm()["epoch"]
                replica = redis_sync.Redis(port=cluster.replica_ports[0], decode_responses=True)
                primary = redis_sync.Redis(port=cluster.primary_port, decode_responses=True)
                try:
                    wait_until(lambda: replica.hget(keys.state, "epoch") == str(armed), 10)
                    # Cut replication so the kill stays on the primary only: the replica can
                    # no longer authenticate to it, and its live link is dropped.
                    replica.config_set("masterauth", "not-the-password")
                    primary.client_kill_filter(_type="replica")
                    wait_until(
                        lambda: int(primary.info("replication")["connected_slaves"]) == 0, 10
                    )
                    with Hammer(f, HOSTS) as hammer:
                        code, rep = f.cli_json("kill", "--reason", "failover drill")
                        confirmed_at = time.monotonic()
                        assert code == 0 and rep["missing"] == [], rep
                        assert rep["replicas_acked"] == 0  # the operator sees the exposure
                        killed = rep["epoch"]
                        assert replica.hget(keys.state, "state") == "ARMED"  # the kill is not there
                        cluster.kill_primary()
                        cluster.wait_for_failover()

                        def regressed() -> bool:
                            hosts = f.cli_json("status")[1]["hosts"]
                            return all("went back" in s["regression"] for s in hosts.values())

                        wait_until(regressed, 30, 0.1, "every host reports the rollback")
                        hammer.wait_for_more(time.monotonic())
                    for h in HOSTS:
                        after = hammer.sent_after(h, confirmed_at)
                        assert after and all(r.startswith("BLOCK") for r in after), h
                        no_allow_after_first_block(hammer.replies[h], "killed")
                        assert f.ping(h) == f"PONG STALE {killed}"
                        assert f.sidecars[h].logged("EPOCH_REGRESSION")
                    # Re-armed on purpose: the new epoch is above what the hosts saw.
                    rearmed = f.arm()["epoch"]
                    assert rearmed > killed
                    f.wait_all(f"PONG ARMED {rearmed}")
                finally:
                    replica.close()
                    primary.close()
            finally:
                f.stop()


class TestLeaderAggregator:
    """Two aggregators for one node: one acts, the other takes over, never both."""

    def test_frozen_leader_standby_trips_once_and_no_fight(self, redis_url: str, node: str) -> None:
        """Leader SIGSTOPped during an anomaly: the standby trips it; SIGCONT brings no second trip."""
        f = Fleet(redis_url, node, ["or-01", "or-02"])
        ports = {"agg-a": free_port(), "agg-b": free_port()}
        aggs: dict[str, Proc] = {}
        r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        view = NodeKeys(node).aggregator

        def start(name: str) -> Proc:
            args = [
                sys.executable, "-m", "killswitch", "aggregator", "--hosts", "or-01,or-02",
                "--instance", name, "--max-orders", "20", "--window", "60", "--tick", "0.05",
                "--lease-ttl", "1", "--metrics-port", str(ports[name]),
            ]  # fmt: skip
            p = aggs[name] = Proc(name, args, f.workdir / f"{name}.log")
            p.start(f.env())
            return p

        def trips() -> float:
            return sum(
                metric(ports[a], "killswitch_trips_total", cause="max_orders") or 0 for a in aggs
            )

        try:
            f.start()
            start("agg-a")
            wait_until(lambda: f.cli_json("status")[1]["leader"] == "agg-a", 20, 0.05)
            start("agg-b")
            wait_until(lambda: metric(ports["agg-b"], "killswitch_aggregator_leader") == 0.0, 20)
            f.wait_ready(20)
            epoch = f.arm()["epoch"]
            with f.client("or-01") as c:
                c.send(*[f"ORDER a{i} AAPL BUY 1" for i in range(20)])
                assert all(c.reply().startswith("ALLOW") for _ in range(20))
            wait_until(lambda: r.hget(view, "node_orders") == "20", 10, 0.02, "leader counted")
            wait_until(lambda: metric(ports["agg-b"], "killswitch_node_orders") == 20, 10)

            aggs["agg-a"].send(signal.SIGSTOP)
            try:
                assert f.order("or-02", "over") == f"ALLOW over {epoch}"
                wait_until(lambda: f.cli_json("status")[1]["state"] == "KILLED", 15, 0.05)
            finally:
                aggs["agg-a"].send(signal.SIGCONT)
            wait_until(lambda: aggs["agg-a"].events("LEADER_LOST"), 15, 0.05, "A steps down")
            tick = int(r.hget(view, "tick_ms") or 0)
            wait_until(lambda: int(r.hget(view, "tick_ms") or 0) > tick + 500, 10, 0.02)

            audit = f.cli_json("audit")[1]["entries"]
            tripped = [e for e in audit if e["action"] == "trip"]
            assert len(tripped) == 1 and tripped[0]["actor"] == "aggregator:agg-b", tripped
            assert trips() == 1
            assert metric(ports["agg-a"], "killswitch_aggregator_leader") == 0.0
            assert metric(ports["agg-b"], "killswitch_aggregator_leader") == 1.0
            assert f.cli_json("status")[1]["leader"] == "agg-b"
            assert len(aggs["agg-a"].events("LEADER_ACQUIRED")) == 1  # its first, no fight
            assert len(aggs["agg-b"].events("LEADER_ACQUIRED")) == 1
        finally:
            for p in aggs.values():
                p.stop()
            r.close()
            f.stop()


SITECUSTOMIZE = '''
"""Test-only: SIGUSR1 moves this process's wall clock an hour ahead, SIGUSR2 an hour back.

Every wall-clock reader Python offers moves: time.time/time_ns, clock_gettime(CLOCK_REALTIME),
localtime/gmtime/ctime/strftime without an explicit time, and datetime's now/utcnow/today
(datetime.datetime is replaced by a subclass before any killswitch module imports it).
The monotonic clock does not move: it is the one leases are meant to run on.
"""
import datetime as _dt, json, os, signal, sys, time

if os.environ.get("KS_TEST_CLOCK_JUMPS") == "1":
    _offset = [0.0]
    _time, _time_ns = time.time, time.time_ns
    _cg, _cg_ns = time.clock_gettime, time.clock_gettime_ns
    _lt, _gm, _ct, _sf = time.localtime, time.gmtime, time.ctime, time.strftime
    time.time = lambda: _time() + _offset[0]
    time.time_ns = lambda: _time_ns() + int(_offset[0] * 1e9)
    time.clock_gettime = lambda c: _cg(c) + (_offset[0] if c == time.CLOCK_REALTIME else 0.0)
    time.clock_gettime_ns = lambda c: _cg_ns(c) + (
        int(_offset[0] * 1e9) if c == time.CLOCK_REALTIME else 0
    )
    time.localtime = lambda t=None: _lt(time.time() if t is None else t)
    time.gmtime = lambda t=None: _gm(time.time() if t is None else t)
    time.ctime = lambda t=None: _ct(time.time() if t is None else t)
    time.strftime = lambda f, t=None: _sf(f, time.localtime() if t is None else t)

    class _JumpingDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls.fromtimestamp(time.time(), tz)

        @classmethod
        def utcnow(cls):
            return cls.now(_dt.timezone.utc).replace(tzinfo=None)

        @classmethod
        def today(cls):
            return cls.now()

    _dt.datetime = _JumpingDatetime

    def _jump(signum, frame):
        _offset[0] += 3600.0 if signum == signal.SIGUSR1 else -3600.0
        seen = {"time": time.time() - _time(), "datetime": _dt.datetime.now().timestamp() - _time(),
                "realtime": _cg(time.CLOCK_REALTIME) - time.clock_gettime(time.CLOCK_REALTIME)}
        sys.stdout.write(json.dumps({"event": "test_clock_jumped", "offset_s": _offset[0],
                                     "seen_s": seen}) + "\\n")
        sys.stdout.flush()

    signal.signal(signal.SIGUSR1, _jump)
    signal.signal(signal.SIGUSR2, _jump)
'''


class JumpFleet(Fleet):
    """A fleet whose processes load a sitecustomize that can jump their wall clock."""

    site_dir: Path = Path()

    def env(self) -> dict[str, str]:
        env = super().env()
        env["PYTHONPATH"] = f"{self.site_dir}:{env.get('PYTHONPATH', '')}".rstrip(":")
        env["KS_TEST_CLOCK_JUMPS"] = "1"
        return env


@pytest.fixture
def jump_fleet(tmp_path: Path, node: str) -> Iterator[tuple[JumpFleet, EmbeddedRedis]]:
    """One sidecar and an aggregator whose wall clocks jump on SIGUSR1/SIGUSR2, on their own Redis."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    server = EmbeddedRedis().start()
    f = JumpFleet(server.url, node, ["or-01"], stale_after=0.5, flush_interval=0.1)
    f.site_dir = tmp_path
    try:
        f.start()
        f.start_aggregator("--max-orders", "20", "--window", "60", "--tick", "0.05")
        wait_until(lambda: f.ready(server.url), 20, 0.05)
        yield f, server
    finally:
        f.stop()
        server.cleanup()


class TestClockJump:
    """Leases run on the monotonic clock, windows on Redis server time: the wall clock is never read."""

    def test_hour_jumps_change_neither_leases_nor_windows(
        self, jump_fleet: tuple[JumpFleet, EmbeddedRedis]
    ) -> None:
        """+1 h: orders still allowed and the window still trips at 21; -1 h: Redis loss still blocks within stale-after + flush."""
        f, server = jump_fleet
        assert f.aggregator is not None
        sidecar, agg = f.sidecars["or-01"], f.aggregator
        epoch = f.arm()["epoch"]
        for p in (sidecar, agg):
            p.send(signal.SIGUSR1)
        for p in (sidecar, agg):
            [jumped] = wait_until(lambda p=p: p.events("test_clock_jumped"), 10)  # type: ignore[misc]
            # Every wall-clock reader of that process moved by the hour, not just time.time.
            seen = jumped["seen_s"]
            assert abs(seen["time"] - 3600) < 1 and abs(seen["datetime"] - 3600) < 1, seen
            assert abs(seen["realtime"] + 3600) < 1, seen
        with f.client("or-01") as c:
            c.send(*[f"ORDER j{i} AAPL BUY 1" for i in range(20)])
            assert [c.reply() for _ in range(20)] == [f"ALLOW j{i} {epoch}" for i in range(20)]
            view = NodeKeys(f.node).aggregator
            r = redis_sync.Redis(port=server.port, decode_responses=True)
            try:
                wait_until(lambda: r.hget(view, "node_orders") == "20", 10, 0.02)
            finally:
                r.close()
            assert f.cli_json("status")[1]["state"] == "ARMED"
            assert c.order("over") == f"ALLOW over {epoch}"
        wait_until(lambda: f.cli_json("status")[1]["state"] == "KILLED", 10, 0.02, "trip")
        assert f.cli_json("status")[1]["cause"] == "max_orders"

        agg.stop()  # the rest is about the lease alone
        for n in (2, 3):  # one at a time: a second pending SIGUSR2 would be merged
            sidecar.send(signal.SIGUSR2)
            wait_until(lambda n=n: len(sidecar.events("test_clock_jumped")) == n, 10)  # type: ignore[misc]
        assert sidecar.events("test_clock_jumped")[-1]["offset_s"] == -3600.0
        rearmed = f.arm()["epoch"]
        with Hammer(f, ["or-01"]) as hammer:
            t0 = time.monotonic()
            server.kill()
            deadline = t0 + f.stale_after + f.flush_interval
            wait_until(lambda: time.monotonic() > deadline, 5)
            hammer.wait_for_more(deadline)
        after = hammer.sent_after("or-01", deadline)
        assert after and all(r.endswith(f"{rearmed} stale") for r in after), after[:3]
        no_allow_after_first_block(hammer.replies["or-01"], "stale")
