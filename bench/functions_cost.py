"""What calling the sidecar's round trip as a Redis Function costs against the EVALSHA it
replaced: the same `flush.lua`, the same keys and arguments, called both ways in rounds that
alternate (so the machine's load hits both alike); and the sidecar's check of the library's
code (`FUNCTION LIST ... WITHCODE`, made at most every 2 s), in the same rounds. Redis server
time from `INFO commandstats`, client p50 from the caller."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio import Redis

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.scripts import library_codes, plain_script, sidecar_library
from killswitch.store.store import FlushReport, Store

CALLS = 2000
ROUNDS = 5
REPORT = FlushReport(
    boot="bench", allowed=0, blocked=0, acked_allowed=0, acked_blocked=0, max_epoch=0,
    view="UNARMED", gate="closed", orders_per_s=0.0, stale_after_ms=1000, regression="",
)  # fmt: skip


async def _round(r: Redis, call: Any, stat: str, lat: list[float]) -> float:
    await r.config_resetstat()
    for _ in range(CALLS // ROUNDS):
        t = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t)
    stats: Any = await r.info("commandstats")
    return float(stats[stat]["usec"])


async def _run() -> dict[str, Any]:
    with EmbeddedRedis() as server:  # loads the sidecars' library at start
        r = Redis.from_url(server.url, decode_responses=True)
        try:
            store = Store(r, "bench-functions")
            lib = sidecar_library()
            script = r.register_script(plain_script("flush"))
            captured: dict[str, Any] = {}

            async def capture(keys: Any = (), args: Any = ()) -> Any:
                captured.update(keys=list(keys), args=list(args))
                return await fcall(keys=keys, args=args)

            fcall, store._flush = store._flush, capture  # type: ignore[assignment]
            await store.flush("or-01", REPORT, "bench")
            keys, args = captured["keys"], captured["args"]
            ways = {
                "evalsha": (lambda: script(keys=keys, args=args), "cmdstat_evalsha"),
                "fcall": (lambda: fcall(keys=keys, args=args), "cmdstat_fcall"),
                "check": (lambda: library_codes(r, lib.name), "cmdstat_function|list"),
            }
            usec = dict.fromkeys(ways, 0.0)
            lat: dict[str, list[float]] = {w: [] for w in ways}
            for _ in range(ROUNDS):
                for w, (call, stat) in ways.items():
                    usec[w] += await _round(r, call, stat, lat[w])
        finally:
            await r.aclose()
    out: dict[str, Any] = {"calls": CALLS, "library_bytes": len(sidecar_library().code)}
    for w in ways:
        lat[w].sort()
        out[w] = {
            "server_us_per_call": round(usec[w] / CALLS, 1),
            "client_p50_us": round(lat[w][len(lat[w]) // 2] * 1e6, 1),
        }
    return out


def run() -> dict[str, Any]:
    return asyncio.run(_run())
