"""The fast rules live at production settings: eight sidecar processes, the aggregator with
10 s windows and a learned baseline, routers on the gate protocol, and `killswitch export` +
`killswitch backtest` on what they recorded.

The baseline is seeded through the store API (five minutes of 80 orders/s already learned,
as a node that has been trading for a while has), so no test waits out a warm-up. Every
bound on a trip's timing is checked on Redis server time stamps (the aggregator's
evaluation instant and the onset mapped onto server time), never on how long the test took.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis as AsyncRedis

from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.ops import control
from killswitch.sim.loadgen import drive
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store
from kstest import Fleet
from kstest.baselines import learned_baseline

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
PER_HOST = 10.0  # orders/s per host: the node's learned 80 orders/s
RULES = ["--window", "10", "--tick", "0.1"]
TICK_MS = 100
FAST_BOUND_MS = 2000  # the promise: a 20x flood trips within 2 s of onset

Rate = Callable[[str, float], float]


@pytest.fixture
def fleet8(redis_url: str, node: str) -> Iterator[Fleet]:
    """Eight sidecar processes (no aggregator yet: each test seeds a baseline first)."""
    f = Fleet(redis_url, node, HOSTS)
    try:
        yield f.start()
    finally:
        f.stop()


def server_ms(f: Fleet) -> int:
    with redis_sync.Redis.from_url(f.redis_url) as r:
        secs, micros = r.time()
    return int(secs) * 1000 + int(micros) // 1000


def seed_baseline(f: Fleet) -> dict[str, str]:
    """Write a warm baseline of 80 orders/s (800 per 10 s window) through the store API."""
    data = learned_baseline(MonitorConfig(), PER_HOST * len(HOSTS), server_ms(f)).to_dict()

    async def save() -> None:
        r = AsyncRedis.from_url(f.redis_url, decode_responses=True)
        try:
            await Store(r, f.node).save_baseline(data)
        finally:
            await r.aclose()

    asyncio.run(save())
    return data


def start(f: Fleet, *flags: str) -> dict[str, str]:
    seeded = seed_baseline(f)
    f.start_aggregator(*RULES, *flags)
    f.wait_ready(30)
    f.arm()
    return seeded


def status(f: Fleet) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        r = AsyncRedis.from_url(f.redis_url, decode_responses=True)
        try:
            return (await control.status(Store(r, f.node))).report
        finally:
            await r.aclose()

    return asyncio.run(read())


def run_until_killed(f: Fleet, rate: Rate, seconds: float) -> int:
    """Drive every host's gate until the node is killed; returns server ms at t=0."""
    r = redis_sync.Redis.from_url(f.redis_url, decode_responses=True)
    key = NodeKeys(f.node).state
    try:
        t0 = server_ms(f)
        asyncio.run(
            drive(
                {h: f.address(h) for h in HOSTS},
                rate,
                seconds,
                stop_when=lambda: r.hget(key, "state") == "KILLED",
            )
        )
    finally:
        r.close()
    return t0


def live_trips(f: Fleet) -> list[tuple[int, str]]:
    agg = f.aggregator
    assert agg is not None
    return [(e["at_ms"], e["cause"]) for e in agg.logged("TRIP")]


def backtest(f: Fleet, tmp_path: Path, seeded: dict[str, str], *flags: str) -> list[dict[str, Any]]:
    """`killswitch export` of the flow, backtested from the seeded baseline.

    Learning starts at the arm in both: the export gets a zero row per host there, and the
    seeded baseline's clock is moved to the grid point before it, where the live aggregator's
    unarmed ticks (which learn nothing) had moved it.
    """
    res = f.cli("export")
    assert res.returncode == 0, res.stderr
    with redis_sync.Redis.from_url(f.redis_url, decode_responses=True) as r:
        armed_ms = int(r.hget(NodeKeys(f.node).state, "armed_ms") or 0)
    csv = tmp_path / "flow.csv"
    csv.write_text(res.stdout + "".join(f"{armed_ms / 1000:.3f},{h},0\n" for h in HOSTS))
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps({**seeded, "last_ms": str((armed_ms - 1) // TICK_MS * TICK_MS)}))
    res = f.cli(
        "backtest", "--counts", str(csv), "--baseline", str(base), "--json",
        "--rearm-after", "never", *RULES, *flags,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    trips: list[dict[str, Any]] = json.loads(res.stdout)["trips"]
    return trips


def assert_backtest_agrees(live: list[tuple[int, str]], replayed: list[dict[str, Any]]) -> None:
    [(at_ms, cause)] = live
    first = [t for t in replayed if not t["shadow"]]
    assert first and first[0]["cause"] == cause, (first, cause)
    assert abs(first[0]["at_ms"] - at_ms) <= TICK_MS, (first[0]["at_ms"], at_ms)


class TestFastRulesLive:
    """Issue 16, items 1 to 3 on real processes at production windows."""

    def test_spread_20x_flood_trips_fast_and_a_short_burst_does_not(
        self, fleet8: Fleet, tmp_path: Path
    ) -> None:
        """A 2.5x burst of 3 s trips nothing; a 20x flood spread evenly over eight hosts trips
        `baseline_fast` within 2 s of onset on server time; the backtest finds the same trip."""
        seeded = start(fleet8)
        burst, onset = (2.0, 5.0), 8.0

        def rate(h: str, t: float) -> float:
            if t >= onset:
                return 20 * PER_HOST
            return 2.5 * PER_HOST if burst[0] <= t < burst[1] else PER_HOST

        t0 = run_until_killed(fleet8, rate, onset + 6)
        onset_ms = t0 + round(onset * 1000)
        live = live_trips(fleet8)
        [(at_ms, cause)] = live  # one trip: the burst tripped nothing
        assert cause == "baseline_fast"
        assert onset_ms < at_ms <= onset_ms + FAST_BOUND_MS, at_ms - onset_ms
        assert status(fleet8)["aggregator"]["last_trip_cause"] == "baseline_fast"
        assert_backtest_agrees(live, backtest(fleet8, tmp_path, seeded))

    def test_sustained_3x_flood_trips_the_slow_window_only(
        self, fleet8: Fleet, tmp_path: Path
    ) -> None:
        """With --baseline-multiplier 2, a 3x flood trips `baseline` (the window must confirm
        it, so after at least one window) while `baseline_fast` never even warns."""
        flags = ("--baseline-multiplier", "2")
        seeded = start(fleet8, *flags)
        onset = 3.0
        t0 = run_until_killed(fleet8, lambda h, t: 3 * PER_HOST if t >= onset else PER_HOST, 33)
        onset_ms = t0 + round(onset * 1000)
        live = live_trips(fleet8)
        [(at_ms, cause)] = live
        assert cause == "baseline"
        assert onset_ms + 10_000 <= at_ms <= onset_ms + 30_000, at_ms - onset_ms
        agg = fleet8.aggregator
        assert agg is not None
        assert [e for e in agg.events("LIMIT_WARNING") if e["rule"] == "baseline_fast"] == []
        assert_backtest_agrees(live, backtest(fleet8, tmp_path, seeded, *flags))

    @pytest.mark.parametrize(
        ("flags", "haunted", "cause"),
        [
            (("--max-host-share", "0.5"), True, "host_share_fast"),
            (("--max-rate", "400"), False, "max_rate"),
        ],
    )
    def test_other_fast_rules_trip_fast_and_backtest_agrees(
        self, fleet8: Fleet, tmp_path: Path, flags: tuple[str, ...], haunted: bool, cause: str
    ) -> None:
        """One host at 100x trips `host_share_fast`, and a 20x spread flood over a 400/s rate
        cap trips `max_rate`, each within 2 s of onset; the backtest finds the same trip."""
        seeded = start(fleet8, *flags)
        onset = 3.0

        def rate(h: str, t: float) -> float:
            if t < onset:
                return PER_HOST
            if haunted:
                return 100 * PER_HOST if h == "or-03" else PER_HOST
            return 20 * PER_HOST

        t0 = run_until_killed(fleet8, rate, onset + 6)
        onset_ms = t0 + round(onset * 1000)
        live = live_trips(fleet8)
        [(at_ms, tripped)] = live
        assert tripped == cause
        assert onset_ms < at_ms <= onset_ms + FAST_BOUND_MS, at_ms - onset_ms
        assert_backtest_agrees(live, backtest(fleet8, tmp_path, seeded, *flags))
