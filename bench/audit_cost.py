"""What the audit hash chain costs a state change: Redis server time per kill script call,
with the chained script and without the chain (the kill script of before the chain, kept
here verbatim for comparison). The order path and the sidecar's flush never append."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store

CALLS = 1000
UNCHAINED_KILL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cur = redis.call('HMGET', KEYS[1], 'state', 'epoch', 'ver')
local epoch = tonumber(cur[2]) or 0
local ver = tonumber(cur[3]) or 0
local new_epoch = math.max(epoch, 1)
redis.call('HSET', KEYS[1], 'state', 'KILLED', 'epoch', new_epoch, 'ver', ver + 1,
  'reason', ARGV[2], 'actor', ARGV[1], 'cause', ARGV[3], 'ts_ms', now, 'killed_ms', now)
redis.call('XADD', KEYS[2], '*', 'action', 'kill', 'actor', ARGV[1], 'reason', ARGV[2],
  'cause', ARGV[3], 'epoch', new_epoch, 'ver', ver + 1, 'ts_ms', now,
  'prev_state', cur[1] or '', 'prev_epoch', epoch)
redis.call('PUBLISH', KEYS[3], 'KILLED ' .. new_epoch .. ' ' .. (ver + 1))
return 1
"""


async def _measure(r: Redis, call: Any) -> dict[str, float]:
    for _ in range(50):
        await call()
    await r.config_resetstat()
    lat = []
    for _ in range(CALLS):
        t = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t)
    lat.sort()
    stats: Any = await r.info("commandstats")
    return {
        "server_us_per_call": round(float(stats["cmdstat_evalsha"]["usec_per_call"]), 1),
        "client_p50_us": round(lat[len(lat) // 2] * 1e6, 1),
    }


async def _run() -> dict[str, Any]:
    with EmbeddedRedis() as server:
        r = Redis.from_url(server.url, decode_responses=True)
        try:
            old = r.register_script(UNCHAINED_KILL)
            k = NodeKeys("bench-unchained")
            store = Store(r, "bench-chained")
            unchained = await _measure(
                r, lambda: old(keys=[k.state, k.audit, k.events], args=["sre", "bench", "op"])
            )
            chained = await _measure(
                r, lambda: store.kill(actor="sre", reason="bench", cause="op", floor=0)
            )
        finally:
            await r.aclose()
    return {"calls": CALLS, "unchained_kill": unchained, "chained_kill": chained}


def run() -> dict[str, Any]:
    return asyncio.run(_run())
