"""How killswitch grows with hosts per node and nodes per fleet, on a real Redis.

N simulated hosts run the real sidecar code (`killswitch.sidecar.service.Sidecar`: the same
sync loop, flush script, kill-notice handler and local state file as the `sidecar` command),
many per worker process, with no gate socket (nothing trades: this measures the fixed cost
of being a host and the kill path). One real aggregator process watches the node.

Measured, for N = 8, 100, 1000 hosts on one node of one redis-server, and for 50 nodes x 8
hosts on a real 3-master Redis Cluster:
- kill to all-confirmed (Redis server time from the kill being recorded to the last host's
  confirmation, as `kill --json` reports `elapsed_s`), p50/p99 over repeated arm+kill;
- Redis CPU per idle host (INFO cpu, used_cpu_sys + used_cpu_user over an idle period,
  including the aggregator's reads), as a % of one core;
- aggregator CPU per tick (its /proc utime+stime over the idle period / ticks);
- Redis CPU per kill cycle (a signed arm and a kill, every host confirming both): the work
  Redis does in series, so the floor under kill-to-all-confirmed once each host has its own
  machine, which these runs on two shared cores cannot show;
- memory per host (RSS of the worker processes / hosts), and one real `killswitch sidecar`
  process's idle CPU and RSS, measured armed, after its start-up has settled.

The idle period starts with the node armed and settled (no host has anything to report, so
each only renews its lease, `core.node.heartbeat`).

Usage: `python -m bench scale` (all) or `python -m bench.scale [--hosts 8,100] [--no-cluster]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis as redis_sync

from bench.common import summary
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import OperatorKeys
from kstest import Fleet

HOSTS_PER_WORKER = 250
# The simulated hosts' cadence (`--flush-interval`, `--stale-after`); without `--stale-after`
# on the command line it is 10 x the flush interval, as the defaults 0.1 s / 1 s.
FLUSH_S = 0.1
STALE_S = 1.0
IDLE_S = 10.0
SETTLE_S = 3.0
KILLS = 30
TICK_S = 0.1
CLUSTER_TICK_S = 0.5  # 50 aggregators at 0.1 s would need more than the machine's two cores
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def host_names(n: int) -> list[str]:
    return [f"h{i:04d}" for i in range(n)]


# -- the worker: many real sidecars in one process ------------------------------------------


async def _worker(
    url: str, node: str, hosts: Sequence[str], state_dir: str, flush_s: float, stale_s: float
) -> None:
    from killswitch.runtime import logs
    from killswitch.sidecar.service import Sidecar
    from killswitch.sidecar.settings import SidecarSettings
    from killswitch.store.redisconn import connect

    logs.configure(fmt="json")
    # Every sidecar holds one pub/sub connection for good and borrows one for its round
    # trip: redis-py's own pool cap would starve the rest.
    redis = connect(
        url, socket_timeout=2.0, client_name=f"ks-bench-{node}",
        max_connections=2 * len(hosts) + 8,
    )  # fmt: skip
    cars = [
        Sidecar(
            SidecarSettings(
                node=node,
                host=h,
                redis_url=url,
                state_dir=state_dir,
                operators=os.environ.get("KILLSWITCH_OPERATORS", ""),
                flush_interval=flush_s,
                stale_after=stale_s,
            ),
            redis,
        )
        for h in hosts
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    for c in cars:
        await c.start()
    await stop.wait()
    for c in cars:
        await c.stop()
    await redis.aclose()


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime


def _proc_rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def _redis_cpu_s(client: redis_sync.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


class Node:
    """N simulated hosts of one node in worker processes, plus its real aggregator."""

    def __init__(
        self, url: str, node: str, hosts: Sequence[str], workdir: Path, tick_s: float = TICK_S
    ) -> None:
        self.url, self.node, self.hosts, self.tick_s = url, node, list(hosts), tick_s
        self.workdir = workdir
        self.fleet = Fleet(url, node, self.hosts, workdir=workdir)
        self.workers: list[subprocess.Popen[bytes]] = []

    def start(self) -> Node:
        for i in range(0, len(self.hosts), HOSTS_PER_WORKER):
            chunk = self.hosts[i : i + HOSTS_PER_WORKER]
            self.workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.scale",
                        "worker",
                        "--redis",
                        self.url,
                        "--node",
                        self.node,
                        "--hosts",
                        ",".join(chunk),
                        "--state-dir",
                        str(self.workdir / "state"),
                        "--flush-interval",
                        str(FLUSH_S),
                        "--stale-after",
                        str(STALE_S),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=self.fleet.env(),
                )
            )
        self.fleet.start_aggregator("--tick", str(self.tick_s))
        try:
            self.fleet.wait_ready(120)
        except TimeoutError:
            res = self.fleet.cli("status", "--json")
            dead = [w.args for w in self.workers if w.poll() is not None]
            self.stop()
            raise RuntimeError(
                f"not ready: {res.stdout[:2000]} {res.stderr} dead: {dead}"
            ) from None
        return self

    def stop(self) -> None:
        for w in self.workers:
            w.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.wait(20)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        self.fleet.stop()


async def _kills(url: str, node: str, kills: int, ops: OperatorKeys) -> list[float]:
    from killswitch.ops import control
    from killswitch.sim.operators import two_person_arm
    from killswitch.store.redisconn import connect
    from killswitch.store.store import Store

    redis = connect(url, socket_timeout=5.0)
    store = Store(redis, node)
    out = []
    alive_ms = round(STALE_S * 1000)
    try:
        if kills == 0:  # only arm (the idle period is measured on an armed node)
            arm = await two_person_arm(store, ops, reason="bench", timeout=30, alive_ms=alive_ms)
            assert arm.code == 0, arm.message
        for i in range(kills):
            arm = await two_person_arm(store, ops, reason="bench", timeout=30, alive_ms=alive_ms)
            assert arm.code == 0, arm.message
            k = await control.kill(
                store, reason=f"bench {i}", operator="bench", timeout=30, alive_ms=alive_ms
            )
            assert k.code == 0, k.message
            out.append(float(k.report["elapsed_s"]))
    finally:
        await redis.aclose()
    return out


def measure_node(url: str, n: int, kills: int = KILLS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ks-scale-") as d:
        node = Node(url, f"scale{n}", host_names(n), Path(d)).start()
        try:
            client = redis_sync.Redis.from_url(url)
            agg = node.fleet.aggregator
            assert agg is not None and agg.popen is not None
            asyncio.run(_kills(url, node.node, 0, node.fleet.ops))  # armed, then idle
            time.sleep(SETTLE_S)
            r0, a0, t0 = _redis_cpu_s(client), _proc_cpu_s(agg.popen.pid), time.monotonic()
            time.sleep(IDLE_S)
            r1, a1, t1 = _redis_cpu_s(client), _proc_cpu_s(agg.popen.pid), time.monotonic()
            rss = sum(_proc_rss(w.pid) for w in node.workers)
            elapsed = asyncio.run(_kills(url, node.node, kills, node.fleet.ops))
            r2, t2 = _redis_cpu_s(client), time.monotonic()
            client.close()
        finally:
            node.stop()
    span = t1 - t0
    return {
        "hosts": n,
        "flush_interval_s": FLUSH_S,
        "stale_after_s": STALE_S,
        "kill_to_all_confirmed_ms": summary(elapsed, 1000),
        "redis_cpu_pct_per_idle_host": round((r1 - r0) / span / n * 100, 4),
        "redis_cpu_pct_total_idle": round((r1 - r0) / span * 100, 2),
        "redis_cpu_ms_per_kill_cycle": round((r2 - r1) / kills * 1000, 2),
        # less what the idle node would have cost Redis over the same time: the kill path's own
        "redis_cpu_ms_per_kill_cycle_over_idle": round(
            ((r2 - r1) - (r1 - r0) / span * (t2 - t1)) / kills * 1000, 2
        ),
        "aggregator_cpu_ms_per_tick": round((a1 - a0) / (span / TICK_S) * 1000, 3),
        "worker_rss_mib_per_host": round(rss / n / 2**20, 3),
    }


CONTROL = """
import asyncio, sys
async def main():
    while True:
        await asyncio.sleep(float(sys.argv[1]))
asyncio.run(main())
"""


def measure_one_sidecar() -> dict[str, Any]:
    """One real `killswitch sidecar` process, armed and idle: its CPU and RSS.

    Measured from `SETTLE_S` after the arm is confirmed, so that the interpreter's start-up
    (about half a second of CPU) is not counted as idle cost: counted over a 10 s window
    right after start, it alone reads as 5%. Beside it, over the same window, a control: a
    bare Python process whose event loop only wakes every flush interval, as the sidecar's
    does. On a virtual machine each wake-up is charged far more than its work; the control
    shows how much of the sidecar's figure that is.
    """
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as d:
        f = Fleet(server.url, "scale-one", ["h0000"], workdir=Path(d))
        f.start()
        control = subprocess.Popen([sys.executable, "-c", CONTROL, str(FLUSH_S)])
        try:
            proc = f.sidecars["h0000"].popen
            assert proc is not None
            f.start_aggregator()
            f.wait_ready(60)
            f.arm()
            assert f.aggregator is not None
            f.aggregator.stop()  # from here on, every script call is the host's round trip
            time.sleep(SETTLE_S)
            client = redis_sync.Redis.from_url(server.url)
            calls0 = _host_calls(client)
            c0, k0, t0 = _proc_cpu_s(proc.pid), _proc_cpu_s(control.pid), time.monotonic()
            time.sleep(IDLE_S)
            c1, k1, t1 = _proc_cpu_s(proc.pid), _proc_cpu_s(control.pid), time.monotonic()
            calls = _host_calls(client) - calls0
            client.close()
            return {
                "sidecar_idle_cpu_pct": round((c1 - c0) / (t1 - t0) * 100, 3),
                "control_loop_cpu_pct": round((k1 - k0) / (t1 - t0) * 100, 3),
                "sidecar_rss_mib": round(_proc_rss(proc.pid) / 2**20, 1),
                "sidecar_idle_round_trips_per_s": round(calls / (t1 - t0), 2),
                **asyncio.run(_trip_cost(server.url, d)),
            }
        finally:
            control.kill()
            control.wait()
            f.stop()


async def _trip_cost(url: str, state_dir: str, n: int = 2000) -> dict[str, float]:
    """CPU per round trip and per idle wake-up of the real sync code, back to back in this
    process (so a wake-up's charge by the machine is not in it)."""
    import structlog
    from structlog.testing import CapturingLogger

    from killswitch.sidecar.service import Sidecar
    from killswitch.sidecar.settings import SidecarSettings
    from killswitch.store.redisconn import connect

    redis = connect(url, socket_timeout=2.0)
    car = Sidecar(
        SidecarSettings(node="scale-cost", host="h0", redis_url=url, state_dir=state_dir),
        redis, logger=structlog.wrap_logger(CapturingLogger()),
    )  # fmt: skip
    try:
        for _ in range(200):
            await car.sync_once()
        t = time.process_time()
        for _ in range(n):
            await car.sync_once()
        trip = (time.process_time() - t) / n
        t = time.process_time()
        for _ in range(n):
            await car.sync_once(woken=False)
        skip = (time.process_time() - t) / n
    finally:
        await redis.aclose()
    return {
        "cpu_us_per_round_trip": round(trip * 1e6, 1),
        "cpu_us_per_idle_skip": round(skip * 1e6, 1),
    }


def _host_calls(client: redis_sync.Redis) -> int:
    """Round trips of hosts: the flush function's calls (FCALL)."""
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_fcall", {}).get("calls", 0))


def measure_cluster(nodes: int = 50, hosts: int = 8, kills: int = 10) -> dict[str, Any]:
    """`nodes` x `hosts` on a 3-master cluster: kill to all-confirmed of one node, and the
    cluster's total CPU per idle host."""
    from kstest.cluster import RedisClusterHarness

    with RedisClusterHarness(3, 0) as cluster, tempfile.TemporaryDirectory() as d:
        running = []
        try:
            for i in range(nodes):
                w = Path(d) / f"n{i}"
                w.mkdir()
                node = Node(
                    cluster.url, f"fleet{i}", [f"n{i}h{j}" for j in range(hosts)], w,
                    tick_s=CLUSTER_TICK_S,
                )  # fmt: skip
                running.append(node.start())
            for node in running:
                asyncio.run(_kills(cluster.url, node.node, 0, node.fleet.ops))
            time.sleep(SETTLE_S)
            clients = [redis_sync.Redis(port=p) for p in cluster.ports]
            c0, t0 = sum(_redis_cpu_s(c) for c in clients), time.monotonic()
            time.sleep(IDLE_S)
            c1, t1 = sum(_redis_cpu_s(c) for c in clients), time.monotonic()
            elapsed = asyncio.run(_kills(cluster.url, running[0].node, kills, running[0].fleet.ops))
            for c in clients:
                c.close()
        finally:
            for node in running:
                node.stop()
    return {
        "nodes": nodes,
        "hosts_per_node": hosts,
        "kill_to_all_confirmed_ms": summary(elapsed, 1000),
        "cluster_cpu_pct_per_idle_host": round((c1 - c0) / (t1 - t0) / (nodes * hosts) * 100, 4),
        "aggregator_tick_s": CLUSTER_TICK_S,
    }


def run(sizes: Sequence[int] = (8, 100, 1000), cluster: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"one_sidecar": measure_one_sidecar(), "single_redis": []}
    print(json.dumps(out["one_sidecar"]), file=sys.stderr, flush=True)
    with EmbeddedRedis() as server:
        for n in sizes:
            try:
                row = measure_node(server.url, n)
            except (AssertionError, RuntimeError) as e:  # a size the machine cannot carry
                row = {
                    "hosts": n,
                    "flush_interval_s": FLUSH_S,
                    "stale_after_s": STALE_S,
                    "failed": str(e)[:400],
                }
            print(json.dumps(row), file=sys.stderr, flush=True)
            out["single_redis"].append(row)
    if cluster:
        out["cluster_50x8"] = measure_cluster()
    return out


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="bench.scale")
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("worker")
    w.add_argument("--redis", required=True)
    w.add_argument("--node", required=True)
    w.add_argument("--hosts", required=True)
    w.add_argument("--state-dir", required=True)
    w.add_argument("--flush-interval", type=float, default=0.1)
    w.add_argument("--stale-after", type=float, default=1.0)
    p.add_argument("--hosts", default="8,100,1000")
    p.add_argument("--no-cluster", action="store_true")
    p.add_argument("--only-cluster", action="store_true")
    p.add_argument("--flush-interval", type=float, default=0.1)
    p.add_argument("--stale-after", type=float, help="default: 10 x --flush-interval")
    a = p.parse_args(argv)
    if a.cmd == "worker":
        asyncio.run(
            _worker(
                a.redis, a.node, a.hosts.split(","), a.state_dir, a.flush_interval, a.stale_after
            )
        )
        return 0
    global FLUSH_S, STALE_S  # noqa: PLW0603  # one setting for every measurement of this run
    FLUSH_S = a.flush_interval
    STALE_S = a.stale_after if a.stale_after is not None else 10 * a.flush_interval
    if a.only_cluster:
        print(json.dumps({"cluster_50x8": measure_cluster()}, indent=2))
        return 0
    sizes = [int(x) for x in a.hosts.split(",")]
    print(json.dumps(run(sizes, not a.no_cluster), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
