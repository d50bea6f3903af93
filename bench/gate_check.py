"""The in-process gate check, per order, against one Redis round trip per order."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from killswitch.core.gate import Gate
from killswitch.core.state import HostView, NodeState
from killswitch.sim.embedded import EmbeddedRedis

N = 2_000_000


def _per_call_ns(fn: object, n: int = N, repeats: int = 5) -> float:
    best = float("inf")
    f = fn  # local for the loop
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            f()  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


async def _redis_rtt_us(url: str, n: int = 5000) -> float:
    r = Redis.from_url(url)
    try:
        await r.ping()
        t0 = time.perf_counter()
        for _ in range(n):
            await r.incr("bench:rl")
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        await r.aclose()


def run() -> dict[str, float]:
    gate = Gate("bench", "h1")
    gate.apply(HostView(1, NodeState.ARMED, NodeState.ARMED, 1, 1), time.monotonic() + 3600)
    allow = gate.allow
    check = gate.check
    empty = _per_call_ns(lambda: None)
    res = {
        "allow_ns": round(_per_call_ns(allow), 1),
        "check_ns": round(_per_call_ns(check), 1),
        "empty_call_ns": round(empty, 1),
        "orders_checked": gate.allowed,
    }
    with EmbeddedRedis() as server:
        res["redis_incr_roundtrip_us"] = round(asyncio.run(_redis_rtt_us(server.url)), 1)
    return res
