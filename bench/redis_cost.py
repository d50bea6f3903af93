"""Redis commands per host per second: idle, and at 10,000 orders/s through the gate."""

from __future__ import annotations

import asyncio
import time

import redis as redis_sync

from bench.common import start_fleet
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.loadgen import OrderRouter

SECONDS = 5.0
RATE = 10_000.0
IGNORE = {"info", "config|resetstat", "config", "client|list"}
# Commands the flush script runs inside Redis: they cost server CPU, not client round trips.
IN_SCRIPT = {"hset", "hmget", "time", "xadd", "publish"}


def _calls(r: redis_sync.Redis) -> dict[str, int]:
    stats = r.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {
        k: v - before.get(k, 0)
        for k, v in after.items()
        if k not in IGNORE and v - before.get(k, 0)
    }


async def _load(address: str) -> tuple[int, float]:
    router = OrderRouter(address, lambda: RATE, name="bench")
    task = asyncio.create_task(router.run())
    await asyncio.sleep(SECONDS)
    router.stop()
    stats = await task
    return stats.allowed, SECONDS


def run() -> dict[str, object]:
    with EmbeddedRedis() as server:
        f = start_fleet(server.url, "bench-cost", ["h1"])
        try:
            f.arm()
            f.aggregator.stop() if f.aggregator else None  # only the sidecar talks to Redis now
            r = redis_sync.Redis.from_url(server.url, decode_responses=True)
            time.sleep(0.5)
            before = _calls(r)
            time.sleep(SECONDS)
            idle = _delta(_calls(r), before)
            before = _calls(r)
            allowed, secs = asyncio.run(_load(f.address("h1")))
            busy = _delta(_calls(r), before)
            r.close()

            def per_s(d: dict[str, int], inside: bool) -> float:
                return round(
                    sum(v for k, v in d.items() if (k in IN_SCRIPT) == inside) / SECONDS, 2
                )

            return {
                "idle_client_commands_per_s": per_s(idle, False),
                "idle_in_script_commands_per_s": per_s(idle, True),
                "idle_by_command": idle,
                "load_orders_per_s": round(allowed / secs),
                "load_client_commands_per_s": per_s(busy, False),
                "load_in_script_commands_per_s": per_s(busy, True),
                "load_by_command": busy,
                "seconds": SECONDS,
            }
        finally:
            f.stop()
