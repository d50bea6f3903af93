"""Anomaly figures: the scenario table (bench/scenario_table.py: every scenario of the
library against the static cap, the earlier baseline and the guarded one), detection
latency on the demo's scenario, live, and false trips per simulated normal day, in virtual
time through `backtest.replay`.

Live part: eight sidecar processes and the aggregator with the demo's rules (1 s windows).
Each cycle arms the node, runs normal flow, then puts one host on the legacy path (the
demo's or-08 at 8.5x its peers, under its own cap) or floods it Knight-style (100x), and
measures on Redis server time: onset -> the aggregator's tripping evaluation, -> the kill
recorded, -> the eighth host's confirmation.

Simulated days: eight hosts, 08:00-16:00 with a U-shaped intraday profile (an open burst,
a quiet midday, a rising close), Poisson counts per host per second, a few 2x news bursts
a day, each host's share jittered. Default rules at real scale (10 s windows, the fast
rules on) plus --max-host-share 0.5; each day starts from the previous day's baseline, and a trip is
re-armed a minute later (which teaches a baseline trip's level, as live).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from typing import Any

from redis.asyncio import Redis

from bench import scenario_table
from bench.common import summary
from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.backtest import FlowEvent, replay
from killswitch.sim.demo import RULES, aggregator_flags
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.loadgen import drive
from killswitch.sim.operators import two_person_arm
from killswitch.store.store import Store
from kstest import Fleet

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
CYCLES = 5
DAYS = 5  # per variant
NORMAL_S, FLOOD_S = 4.0, 4.0


async def _cycles(fleet: Fleet, legacy_rate: float) -> list[dict[str, int]]:
    redis = Redis.from_url(fleet.redis_url, decode_responses=True)
    store = Store(redis, fleet.node)
    out = []
    try:
        for _ in range(CYCLES):
            arm = await two_person_arm(store, fleet.ops, reason="bench", timeout=10)
            assert arm.code == 0, arm.message
            secs, micros = await redis.time()
            t0_ms = int(secs) * 1000 + int(micros) // 1000

            def rate(h: str, t: float) -> float:
                return legacy_rate if h == "or-08" and t >= NORMAL_S else 10.0

            await drive({h: fleet.address(h) for h in HOSTS}, rate, NORMAL_S + FLOOD_S)
            onset = t0_ms + round(NORMAL_S * 1000)
            state = await redis.hgetall(store.keys.state)
            view = await redis.hgetall(store.keys.aggregator)
            epoch = int(state["epoch"])
            applied = []
            for h in HOSTS:
                c = await redis.hgetall(store.keys.host(h).confirm)
                if int(c.get("epoch", 0)) == epoch:
                    applied.append(int(c["applied_ms"]))
            assert state["state"] == "KILLED" and len(applied) == len(HOSTS), (state, applied)
            out.append(
                {
                    "trip": int(view["last_trip_at_ms"]) - onset,
                    "killed": int(state["killed_ms"]) - onset,
                    "confirmed": max(applied) - onset,
                    "cause": view["last_trip_cause"],  # type: ignore[dict-item]
                }
            )
    finally:
        await redis.aclose()
    return out


def live() -> dict[str, Any]:
    results: dict[str, Any] = {}
    with EmbeddedRedis() as server:
        fleet = Fleet(server.url, "bench-anomaly", HOSTS)
        try:
            fleet.start()
            fleet.start_aggregator(*aggregator_flags(RULES))
            fleet.wait_ready(30)
            for name, rate in (("demo_legacy_host_8.5x", 85.0), ("knight_flood_100x", 1000.0)):
                runs = asyncio.run(_cycles(fleet, rate))
                results[name] = {
                    "causes": sorted({str(r["cause"]) for r in runs}),
                    **{
                        f"onset_to_{k}_ms": summary([float(r[k]) for r in runs])
                        for k in ("trip", "killed", "confirmed")
                    },
                }
        finally:
            fleet.stop()
    return results


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:  # normal approximation: exact enough for counts per second this large
        return max(round(rng.gauss(lam, math.sqrt(lam))), 0)
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k, p = k + 1, p * rng.random()
    return k


def node_rate(s: float, ramp_s: float) -> float:
    """Orders/s per host at `s` seconds after midnight UTC-4 (08:00 .. 16:00); the open
    reaches its peak over `ramp_s` seconds (0: one step from the pre-open)."""
    h = s / 3600
    if h < 9.5:
        return 2.0  # pre-open
    if h < 10.0:  # the open: 20/s decaying to 8/s over 30 minutes
        into = s - 9.5 * 3600
        peak = 8.0 + 12.0 * math.exp(-(h - 9.5) * 6)
        return peak if ramp_s <= 0 or into >= ramp_s else 2.0 + (peak - 2.0) * into / ramp_s
    if h < 15.0:
        return 8.0 - 3.0 * math.sin(math.pi * (h - 10.0) / 5.0)  # the midday lull
    return 8.0 + 10.0 * (h - 15.0)  # the close builds up


def simulated_day(day: int, rng: random.Random, ramp_s: float) -> list[FlowEvent]:
    base = 1_343_779_200_000 + day * 86_400_000 + 12 * 3_600_000  # 08:00 New York in UTC
    weights = {h: rng.uniform(0.7, 1.3) for h in HOSTS}  # hosts are not perfectly balanced
    news = sorted(rng.uniform(9.6, 15.8) * 3600 for _ in range(3))
    events = []
    for sec in range(8 * 3600):
        s = 8 * 3600 + sec
        burst = 2.0 if any(0 <= s - n < 30 for n in news) else 1.0
        for h in HOSTS:
            lam = node_rate(s, ramp_s) * weights[h] * burst
            if n := _poisson(rng, lam):
                events.append(FlowEvent(base + sec * 1000, h, n))
    return events


def simulated_days(ramp_s: float) -> dict[str, Any]:
    config = MonitorConfig(max_host_share=0.5)
    rng = random.Random(20120801)
    baseline = None
    per_day = []
    started = time.perf_counter()
    for day in range(DAYS):
        result = replay(simulated_day(day, rng, ramp_s), config, tick_ms=100, baseline=baseline)
        baseline = result.baseline
        per_day.append([(t.cause, t.detail) for t in result.trips if not t.shadow])
    trips = [len(d) for d in per_day]
    return {
        "days": DAYS,
        "open": f"10x the pre-open, reached over {ramp_s:g} s" if ramp_s else "10x in one step",
        "config": "defaults (10 s window, multiplier 5, 2 breach windows, min 100, "
        "5 min warm-up; the fast rules: 1 s window, multiplier 8, 100 ms hold, min 50) + "
        "max_host_share 0.5 (and host_share_fast); re-armed 60 s after a trip (a re-arm after "
        "a baseline or baseline_fast trip teaches the baseline that level)",
        "false_trips_per_day": trips,
        "days_with_a_false_trip": sum(1 for n in trips if n),
        "first_trips": [t for d in per_day for t in d][:3],
        "seconds": round(time.perf_counter() - started, 1),
    }


def run() -> dict[str, Any]:
    return {
        "scenarios": scenario_table.run(),
        "live_demo_scenario": live(),
        "simulated_normal_days": [simulated_days(ramp) for ramp in (60.0, 30.0, 0.0)],
    }
