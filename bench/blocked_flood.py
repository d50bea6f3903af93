"""Re-kill confirmation while a runaway router floods a killed host with orders.

Every blocked order is a `BLOCK_ORDER` log event. This measures how long a re-kill (killing
the killed node again, which collects fresh confirmations) takes to confirm with and without
such a flood, with the sidecars' logs going to a file as under a process supervisor.
`BENCH_SIDECAR_SRC=DIR` runs the sidecars from another source tree (e.g. an older commit
unpacked with `git archive`), to measure before and after a change with the same driver.
`BENCH_FLOOD_RATE=N` paces the flood at N orders/s per host (default: as fast as the
clients can pipeline), so two trees can be compared at the same offered load.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

from redis.asyncio import Redis

from bench.common import summary
from killswitch.ops import control
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.store import Store
from kstest import Fleet, GateClient

HOSTS = ["or-01", "or-02"]
KILLS = 30
FLOODERS = 2  # pipelining clients per host
BATCH = 500


class _Fleet(Fleet):
    def env(self) -> dict[str, str]:
        env = super().env()
        src = os.environ.get("BENCH_SIDECAR_SRC")
        if src:
            env["PYTHONPATH"] = src
            env["PYTHONSAFEPATH"] = "1"  # `-m` must not put this tree's cwd first
        return env


def _flood(f: Fleet, host: str, stop: threading.Event, sent: list[int]) -> None:
    n = 0
    rate = float(os.environ.get("BENCH_FLOOD_RATE", "0")) / FLOODERS
    start = time.monotonic()
    while not stop.is_set():
        try:
            with GateClient(f.address(host), timeout=30) as c:
                while not stop.is_set():
                    if rate and n / rate > time.monotonic() - start:
                        time.sleep(min(0.01, n / rate - (time.monotonic() - start)))
                        continue  # paced: the next batch is not due yet
                    c.send(*(f"ORDER f{n + i} AAPL BUY 1" for i in range(BATCH)))
                    for _ in range(BATCH):
                        c.reply()
                    n += BATCH
        except OSError:
            time.sleep(0.05)
    sent.append(n)


async def _rekills(url: str, node: str, kills: int) -> tuple[list[float], list[float]]:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, node)
    server_side, wall = [], []
    try:
        for i in range(kills):
            t0 = time.perf_counter()
            out = await control.kill(store, reason=f"rekill {i}", operator="bench", timeout=5)
            wall.append(time.perf_counter() - t0)
            server_side.append(out.report["elapsed_s"])
            assert out.code == 0, out.report
            await asyncio.sleep(0.05)  # pacing between kills, not a wait for a condition
    finally:
        await redis.aclose()
    return server_side, wall


def run() -> dict[str, Any]:
    node = "bench-flood"
    with EmbeddedRedis() as server:
        f = _Fleet(server.url, node, HOSTS)
        f.start()
        f.start_aggregator("--tick", "0.05")
        try:
            f.wait_ready(30)
            f.arm()
            quiet = asyncio.run(_rekills(server.url, node, KILLS))
            stop = threading.Event()
            sent: list[int] = []
            threads = [
                threading.Thread(target=_flood, args=(f, h, stop, sent))
                for h in HOSTS
                for _ in range(FLOODERS)
            ]
            for t in threads:
                t.start()
            time.sleep(2.0)  # let the flood reach its steady rate before measuring
            t0 = time.perf_counter()
            flood = asyncio.run(_rekills(server.url, node, KILLS))
            elapsed = time.perf_counter() - t0
            stop.set()
            for t in threads:
                t.join()
            log_bytes = sum((f.workdir / f"{h}.log").stat().st_size for h in HOSTS)
            summaries = sum(
                len([e for e in f.sidecars[h].events("BLOCK_ORDER") if e.get("summary")])
                for h in HOSTS
            )
        finally:
            f.stop()
    return {
        "sidecar_src": os.environ.get("BENCH_SIDECAR_SRC", "this tree"),
        "flood_rate_per_host": os.environ.get("BENCH_FLOOD_RATE", "unpaced"),
        "quiet_rekill_confirm_ms": summary(quiet[0], 1000),
        "flood_rekill_confirm_ms": summary(flood[0], 1000),
        "flood_rekill_wall_ms": summary(flood[1], 1000),
        "blocked_orders_per_s": round(sum(sent) / (elapsed + 2.0)),
        "log_mb": round(log_bytes / 1e6, 1),
        "summary_events": summaries,
    }
