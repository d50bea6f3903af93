"""The in-process gate check, per order, against one Redis round trip per order."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from killswitch.core.gate import Gate
from killswitch.core.limits import Limit, Limits
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
    # Limits on: every kind set, one symbol override, and a rate the run never reaches, so
    # every order walks the whole check (qty, notional, bucket refill) and is allowed.
    limits = Limits(
        Limit(max_qty=1_000_000, max_notional=1e12, max_orders_per_s=1e12),
        {"ES": Limit(max_qty=10, max_notional=1e12, max_orders_per_s=1e12)},
    )
    lgate = Gate("bench", "h1", limits=limits)
    lgate.apply(HostView(1, NodeState.ARMED, NodeState.ARMED, 1, 1), time.monotonic() + 3600)
    lcheck = lgate.check
    lallow = lgate.allow

    def check_args() -> object:
        return check("o-1", "AAPL", "BUY", 100, 187.5)

    def lcheck_args() -> object:
        return lcheck("o-1", "AAPL", "BUY", 100, 187.5)

    def lcheck_sym() -> object:
        return lcheck("o-1", "ES", "BUY", 5, 5000.25)

    def lallow_args() -> object:
        return lallow("o-1", "AAPL", "BUY", 100, 187.5)

    wrap = _per_call_ns(lambda: check_args)  # the cost of the wrapper itself, for subtraction
    res = {
        "allow_ns": round(_per_call_ns(allow), 1),
        "check_ns": round(_per_call_ns(check), 1),
        "check_with_order_args_limits_off_ns": round(_per_call_ns(check_args) - wrap, 1),
        "check_limits_on_ns": round(_per_call_ns(lcheck_args) - wrap, 1),
        "check_limits_on_symbol_override_ns": round(_per_call_ns(lcheck_sym) - wrap, 1),
        "allow_limits_on_ns": round(_per_call_ns(lallow_args) - wrap, 1),
        "empty_call_ns": round(empty, 1),
        "orders_checked": gate.allowed + lgate.allowed,
        "limit_refusals": lgate.blocked,
    }
    with EmbeddedRedis() as server:
        res["redis_incr_roundtrip_us"] = round(asyncio.run(_redis_rtt_us(server.url)), 1)
    return res
