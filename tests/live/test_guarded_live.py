"""The guarded baseline and the runaway rule live: eight sidecar processes, the aggregator
and routers on the gate protocol, time-compressed 10x as the demo is (1 s windows, every
duration of the rules a tenth), driving the scenario library's flows.

The production-window claims (10 s windows) are proven in virtual time through the same
`Monitor` in tests/unit/test_scenarios.py; here the same flows, compressed, trip real processes
the same way. Each test seeds a learned baseline through the store API (30 orders/s per
host: a 1 s window holds a tenth of a 10 s one, so the flow is 3x the scenario's to keep
its counts as steady), and checks every timing on Redis server time stamps.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis as AsyncRedis

from killswitch.core.rules import scenarios as sc
from killswitch.core.rules.anomaly import BASELINE, RUNAWAY, MonitorConfig
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.fleet import wait_until
from killswitch.sim.loadgen import drive
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store
from kstest import Fleet

K = 10.0  # time compression
VOLUME = 3.0
HOSTS = list(sc.HOSTS)
RULES = sc.compressed(MonitorConfig(), K)
PRE_S = 60.0  # 6 s compressed: a burst of three windows fits before the onset
# "Within two windows" live, as tests/live/test_anomaly_live.py counts it: two windows, plus one
# sidecar flush before the flood's first orders reach Redis, one tick of the evaluation grid
# and 0.1 s for the routers' batches and the onset mapping (the drive starts after t0).
TWO_WINDOWS_MS = 2 * RULES.window_ms + 300
FLAGS = [
    "--window", "1", "--tick", "0.1", "--half-life", "4.5", "--warmup", "30",
    "--min-orders", str(RULES.min_orders), "--baseline-doubling", "360",
    "--baseline-slow-half-life", "720", "--profile-bucket", "30", "--profile-half-life", "90",
]  # fmt: skip


@pytest.fixture(scope="class")
def fleet8(redis_server: EmbeddedRedis) -> Iterator[Fleet]:
    """Eight sidecars for the class (they take seconds to start); each test starts its own
    aggregator on a freshly seeded baseline."""
    f = Fleet(redis_server.url, f"guarded{os.getpid()}", HOSTS)
    try:
        yield f.start()
    finally:
        f.stop()


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """A busy-loop process beside the fleet for the test's duration: a loaded machine."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        hog.kill()
        hog.wait()


def server_ms(f: Fleet) -> int:
    with redis_sync.Redis.from_url(f.redis_url) as r:
        secs, micros = r.time()
    return int(secs) * 1000 + int(micros) // 1000


def start(f: Fleet) -> None:
    """Seed a warm baseline at the flow's normal rate, start an aggregator (it reads the
    baseline at start) and arm: a trip of an earlier test taught this one nothing."""
    if f.aggregator is not None:
        f.aggregator.stop()
    data = sc.learned(RULES, sc.PER_HOST * len(HOSTS) * VOLUME, server_ms(f)).to_dict()

    async def save() -> None:
        r = AsyncRedis.from_url(f.redis_url, decode_responses=True)
        try:
            await Store(r, f.node).save_baseline(data)
        finally:
            await r.aclose()

    asyncio.run(save())
    f.start_aggregator(*FLAGS)
    f.wait_ready(30)
    f.arm()


def run(f: Fleet, s: sc.Scenario) -> tuple[int, str, float]:
    """Drive `s` compressed until the node is killed: (ms from onset to the tripping
    evaluation on server time, cause, the node's rate then as a multiple of its normal)."""
    start(f)
    live = s.compressed(K, VOLUME)
    r = redis_sync.Redis.from_url(f.redis_url, decode_responses=True)
    key = NodeKeys(f.node).state
    try:
        t0 = server_ms(f)
        asyncio.run(
            drive(
                {h: f.address(h) for h in HOSTS},
                live.rate,
                live.duration_s,
                stop_when=lambda: r.hget(key, "state") == "KILLED",
            )
        )
    finally:
        r.close()
    agg = f.aggregator
    assert agg is not None

    def tripped() -> list[dict[str, Any]]:  # one log for every aggregator of the class
        return [e for e in agg.events("TRIP") if e["at_ms"] > t0]

    wait_until(tripped, 15.0, 0.02, "TRIP")
    [trip, *_] = tripped()
    assert live.onset_s is not None
    onset_ms = t0 + round(live.onset_s * 1000)
    return trip["at_ms"] - onset_ms, trip["cause"], live.multiple((trip["at_ms"] - t0) / 1000)


class TestGuardedLive:
    """Issue 28, item 1, on real processes (compressed 10x)."""

    @pytest.mark.usefixtures("cpu_hog")
    def test_post_burst_flood_trips_within_two_windows_beside_a_cpu_hog(
        self, fleet8: Fleet
    ) -> None:
        """A 6.25x flood right after a 2.5x burst of three windows trips within two windows
        of its onset (and the flush and tick that bring it to the rules), with a busy-loop
        process competing for the CPU."""
        after_ms, cause, _ = run(fleet8, sc.post_burst_flood(PRE_S))
        assert cause in (BASELINE, RUNAWAY)
        assert 0 < after_ms <= TWO_WINDOWS_MS, after_ms

    def test_runaway_doubling_every_minute_trips_before_4x(self, fleet8: Fleet) -> None:
        """A node doubling every (compressed) minute trips `runaway` before it reaches 4x."""
        _, cause, multiple = run(fleet8, sc.runaway(1, PRE_S))
        assert cause == RUNAWAY and multiple < 4.0, (cause, multiple)

    def test_pulse_trips_within_60_s(self, fleet8: Fleet) -> None:
        """6x for 15 s, normal for 10 s, repeated (compressed) trips within 60 s of onset."""
        after_ms, cause, _ = run(fleet8, sc.pulse(PRE_S))
        assert cause == BASELINE and 0 < after_ms <= 60_000 / K, (cause, after_ms)
