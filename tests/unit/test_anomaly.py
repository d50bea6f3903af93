"""The pure trip rules: static cap, learned baseline, host share, levels, shadow mode.

No server and no clock: time is virtual milliseconds and every input is a number.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.core.rules.anomaly import (
    BASELINE,
    BASELINE_FAST,
    HOST_SHARE,
    HOST_SHARE_FAST,
    MAX_ORDERS,
    MAX_RATE,
    RUNAWAY,
    Evaluation,
    Monitor,
    MonitorConfig,
    haunted_hosts,
    next_level,
)
from killswitch.core.rules.backtest import FlowEvent, replay
from killswitch.core.rules.baseline import Baseline

DAY0 = 1_343_779_200_000  # 2012-08-01 00:00 UTC, the Knight day
TICK = 100
WINDOW = 10_000
HOSTS = tuple(f"or-{i:02d}" for i in range(1, 9))


def at(h: int, m: int, s: float = 0.0) -> int:
    return DAY0 + round(((h * 60 + m) * 60 + s) * 1000)


def drive(
    monitor: Monitor,
    start_ms: int,
    end_ms: int,
    total: Callable[[int], int],
    hosts: Callable[[int, int], Mapping[str, int]] | None = None,
    **kw: bool,
) -> list[Evaluation]:
    """Observe every tick in [start_ms, end_ms) with window sums given as functions of time."""
    out = []
    for now in range(start_ms, end_ms, TICK):
        n = total(now)
        out.append(monitor.observe(now, n, hosts(now, n) if hosts else {}, **kw))
    return out


def step(before: int, after: int, onset_ms: int) -> Callable[[int], int]:
    """Window sums of a rate that steps at `onset_ms`: the window fills over one width."""

    def total(now: int) -> int:
        filled = min(max(now - onset_ms, 0), WINDOW) / WINDOW
        return round(before + (after - before) * filled)

    return total


def trips(evals: Sequence[Evaluation], shadow: bool = False) -> list[tuple[int, str]]:
    return [(t.at_ms, t.cause) for e in evals for t in (e.shadow_trips if shadow else e.trips)]


class TestConfig:
    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("max_orders", -1),
            ("baseline_multiplier", 1.0),
            ("breach_windows", 0),
            ("min_orders", -5),
            ("warmup_ms", -1),
            ("max_host_share", 1.5),
            ("max_host_share", 0.0),
            ("haunted_ratio", 0.5),
            ("shadow", frozenset({"baseline", "volume"})),
            ("half_life_ms", 0),
            ("window_ms", 0),
            ("profile_bucket_ms", 86_400_001),
        ],
    )
    def test_bad_values_name_the_field(self, field: str, value: object) -> None:
        """A bad setting is refused with an error that names it."""
        with pytest.raises(ValueError, match=field.removeprefix("profile_")):
            MonitorConfig(**{field: value})  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("config", "causes"),
        [
            (MonitorConfig(), (BASELINE, BASELINE_FAST, RUNAWAY)),
            (
                MonitorConfig(max_orders=500, max_host_share=0.5, max_rate_auto=True),
                (
                    MAX_ORDERS,
                    BASELINE,
                    HOST_SHARE,
                    MAX_RATE,
                    BASELINE_FAST,
                    HOST_SHARE_FAST,
                    RUNAWAY,
                ),
            ),
            (
                MonitorConfig(
                    max_orders=500, baseline_multiplier=None, fast_multiplier=None, max_rate=90
                ),
                (MAX_ORDERS, MAX_RATE, RUNAWAY),
            ),
            (
                MonitorConfig(max_orders=500, max_host_share=0.5),
                (MAX_ORDERS, BASELINE, HOST_SHARE, BASELINE_FAST, HOST_SHARE_FAST, RUNAWAY),
            ),
            # No fast window shorter than the window: the fast rules add nothing and are off.
            (
                MonitorConfig(window_ms=1000, max_orders=500, max_host_share=0.5),
                (MAX_ORDERS, BASELINE, HOST_SHARE, RUNAWAY),
            ),
            (MonitorConfig(window_ms=1000, max_rate=300), (BASELINE, MAX_RATE, RUNAWAY)),
            (MonitorConfig(runaway_growth=None), (BASELINE, BASELINE_FAST)),
        ],
    )
    def test_rules_on(self, config: MonitorConfig, causes: tuple[str, ...]) -> None:
        """A rule is on exactly when its limit is configured; the baseline rule by default."""
        assert config.causes == causes

    @pytest.mark.parametrize(
        ("shadow", "expected"),
        [(True, {MAX_ORDERS, BASELINE, HOST_SHARE}), (frozenset({HOST_SHARE}), {HOST_SHARE})],
    )
    def test_shadow_names(self, shadow: frozenset[str] | bool, expected: set[str]) -> None:
        """`shadow=True` shadows every rule; a set shadows the causes it names."""
        config = MonitorConfig(shadow=shadow)
        assert {c for c in (MAX_ORDERS, BASELINE, HOST_SHARE) if config.is_shadow(c)} == expected


class TestLevels:
    @pytest.mark.parametrize(
        ("percent", "previous", "level"),
        [
            (0.0, 0, 0),
            (49.9, 0, 0),
            (50.0, 0, 50),
            (80.0, 0, 75),
            (95.0, 50, 90),
            (140.0, 0, 90),
            (73.0, 75, 75),  # within the hysteresis band: stays
            (69.9, 75, 50),  # 5 points below: drops
            (86.0, 90, 90),
            (84.0, 90, 75),
            (60.0, 90, 50),
            (10.0, 90, 0),
            (46.0, 50, 50),
            (44.0, 50, 0),
        ],
    )
    def test_next_level(self, percent: float, previous: int, level: int) -> None:
        """Levels rise at 50/75/90% and fall only 5 points below the level they leave."""
        assert next_level(percent, previous) == level

    def test_warnings_once_per_crossing(self) -> None:
        """Hovering around 75% of the cap logs one warning, not one per tick."""
        m = Monitor(MonitorConfig(max_orders=1000, baseline_multiplier=None))
        values = [100, 520, 760, 740, 751, 730, 790, 920, 880, 100]
        got = [
            (w.old, w.new)
            for i, v in enumerate(values)
            for w in m.observe(DAY0 + i * TICK, v, {}).warnings
        ]
        assert got == [(0, 50), (50, 75), (75, 90), (90, 0)]

    def test_rule_status_reports_limits(self) -> None:
        """Each rule reports its value, limit and level for the metrics."""
        m = Monitor(MonitorConfig(max_orders=1000, max_host_share=0.5, max_rate_auto=True))
        ev = m.observe(DAY0, 800, {"or-01": 500, "or-02": 300})
        cap, base, share, *fast, runaway = ev.rules
        assert [r.cause for r in fast] == [MAX_RATE, BASELINE_FAST, HOST_SHARE_FAST]
        assert (runaway.cause, runaway.active) == (RUNAWAY, False)  # no baseline yet
        assert not any(r.active for r in fast)  # no fast window passed: inactive, not breached
        assert (cap.cause, cap.value, cap.limit, cap.level) == (MAX_ORDERS, 800.0, 1000.0, 75)
        assert (base.cause, base.active, base.limit) == (BASELINE, False, None)
        assert (share.cause, share.value, share.limit, share.level) == (HOST_SHARE, 0.625, 0.5, 90)
        assert ev.rule(HOST_SHARE) is share


class TestStaticCap:
    @pytest.mark.parametrize(
        ("totals", "trip_at"),
        [
            ([900, 1000, 1000], None),  # at the cap is allowed: "more than N"
            ([900, 1001, 1200], 1),
            ([5000], 0),
        ],
    )
    def test_trips_above_cap_at_once(self, totals: list[int], trip_at: int | None) -> None:
        """More than `max_orders` in the window trips on the first tick, with no breach count."""
        m = Monitor(MonitorConfig(max_orders=1000, baseline_multiplier=None))
        evals = [m.observe(DAY0 + i * TICK, n, {}) for i, n in enumerate(totals)]
        expected = [] if trip_at is None else [(DAY0 + trip_at * TICK, MAX_ORDERS)]
        assert trips(evals) == expected

    def test_detail_and_latch(self) -> None:
        """A breach trips once with a readable detail, and again only after it cleared."""
        m = Monitor(MonitorConfig(max_orders=5000, baseline_multiplier=None))
        evals = [m.observe(DAY0 + i * TICK, n, {}) for i, n in enumerate([5231, 6000, 10, 5100])]
        assert [len(e.trips) for e in evals] == [1, 0, 0, 1]
        assert evals[0].trips[0].detail == "node sent 5231 orders in 10s, over its cap of 5000"
        assert evals[0].trip is evals[0].trips[0]


class TestBaselineRule:
    @pytest.mark.parametrize(
        ("steady", "factor", "min_orders", "tripped"),
        [
            (800, 1.0, 100, False),
            (800, 3.0, 100, False),  # a 3x burst is far from 5x
            (800, 5.0, 100, False),  # the window fills over 10 s and the baseline follows it
            (800, 10.0, 100, True),
            (800, 40.0, 100, True),
            (20, 40.0, 1000, False),  # 20 -> 800 is over 5x, but 800 is under the floor
            (20, 40.0, 100, True),
            (0, 1.0, 100, False),  # an idle node stays idle
        ],
    )
    def test_step_table(self, steady: int, factor: float, min_orders: int, tripped: bool) -> None:
        """A sudden step to `factor` x the learned volume trips within two windows, or never."""
        m = Monitor(MonitorConfig(min_orders=min_orders))
        onset = at(9, 10)
        evals = drive(m, at(9, 0), at(9, 12), step(steady, round(steady * factor), onset))
        got = trips(evals)
        if not tripped:
            assert got == []
        else:
            assert len(got) == 1
            when, cause = got[0]
            assert cause == BASELINE
            assert onset < when <= onset + 2 * WINDOW

    def test_detail(self) -> None:
        """The detail says how many orders, how many times the baseline, and the baseline."""
        m = Monitor(MonitorConfig())
        evals = drive(m, at(9, 0), at(9, 6, 30), step(1000, 20_000, at(9, 6)))
        [trip] = [t for e in evals for t in e.trips]
        assert trip.detail.startswith("node sent 20000 orders in 10s, ")
        assert trip.detail.endswith(f"x its baseline of {trip.limit / 5:.0f}")

    def test_no_trip_during_warmup(self) -> None:
        """A flood during warm-up does not trip: there is nothing to call it anomalous against."""
        m = Monitor(MonitorConfig(warmup_ms=300_000))
        evals = drive(m, at(9, 0), at(9, 4), step(800, 40_000, at(9, 1)))
        assert trips(evals) == []
        assert not evals[-1].warm
        assert evals[-1].rule(BASELINE) is not None

    def test_breach_is_not_learned(self) -> None:
        """While the window is in breach the baseline stands still, so a flood cannot teach itself."""
        m = Monitor(MonitorConfig(breach_windows=100))  # keep breaching without tripping
        drive(m, at(9, 0), at(9, 6), lambda now: 1000)
        evals = drive(m, at(9, 6), at(9, 8), step(1000, 20_000, at(9, 6)))
        breaching = [e.expected for e in evals if e.rule(BASELINE).breach_windows > 0]  # type: ignore[union-attr]
        assert len(breaching) > 1000
        assert len(set(breaching)) == 1

    def test_reset_keeps_baseline_and_restarts_count(self) -> None:
        """Re-arming restarts the breach count but keeps what the baseline learned."""
        m = Monitor(MonitorConfig())
        drive(m, at(9, 0), at(9, 6), lambda now: 1000)
        first = drive(m, at(9, 6), at(9, 6, 15), step(1000, 30_000, at(9, 6)))
        [(tripped, _)] = trips(first)
        expected = m.baseline.expected(tripped)
        m.reset(tripped)
        again = drive(m, tripped + TICK, tripped + 15_000, lambda now: 30_000)
        assert m.baseline.expected(tripped) == expected
        assert trips(again) == [(tripped + TICK + WINDOW, BASELINE)]

    def test_not_armed_learns_nothing_and_never_trips(self) -> None:
        """A killed node's silence is not learned and its window never trips."""
        m = Monitor(MonitorConfig())
        drive(m, at(9, 0), at(9, 6), lambda now: 1000)
        before = m.baseline.to_dict()
        evals = drive(m, at(9, 6), at(9, 8), step(1000, 0, at(9, 6)), armed=False)
        evals += drive(m, at(9, 8), at(9, 9), lambda now: 50_000, armed=False)
        assert trips(evals) == []
        after = m.baseline.to_dict()
        assert {k: v for k, v in after.items() if k != "last_ms"} == {
            k: v for k, v in before.items() if k != "last_ms"
        }

    def test_restored_baseline_is_warm(self) -> None:
        """A monitor restored from the stored hash trips at once, with no fresh warm-up."""
        config = MonitorConfig()
        learner = Monitor(config)
        drive(learner, at(9, 0), at(9, 6), lambda now: 1000)
        stored = learner.baseline.to_dict()
        restored = Monitor(config, Baseline.from_dict(stored, config.baseline_params()))
        evals = drive(restored, at(9, 7), at(9, 7, 20), step(1000, 30_000, at(9, 7)))
        assert evals[0].warm
        assert len(trips(evals)) == 1

    def test_profile_expects_yesterdays_open(self) -> None:
        """After a day that had a busy open, the next day's expectation at 09:30 is higher
        (the learning of earlier releases, which took the 4x open in as it came)."""
        config = MonitorConfig(warmup_ms=0).unguarded()
        m = Monitor(config)

        def day(offset: int) -> Callable[[int], int]:
            return lambda now: 1200 if at(9, 30) + offset <= now < at(9, 40) + offset else 300

        # Ticks of 1 s are enough here: the baseline decays by time, not per call.
        for now in range(at(9, 0), at(10, 0), 1000):
            assert not m.observe(now, day(0)(now), {}).trips  # 4x: learned, not a breach
        tomorrow = at(9, 32) + 86_400_000
        assert m.baseline.global_.value == pytest.approx(300, rel=0.01)
        assert m.baseline.expected(tomorrow) == m.baseline.profile_expected(tomorrow)
        assert m.baseline.profile_expected(tomorrow) == pytest.approx(1200, rel=0.05)
        assert m.baseline.profile_expected(tomorrow - 10 * 60_000) == pytest.approx(300, rel=0.05)


# --- operator feedback: a re-arm after a baseline trip ------------------------------------
PRE_OPEN = 1000  # orders per window before the open
DAY_MS = 86_400_000


def step_open(factor: float, day: int = 0) -> Callable[[int], int]:
    """A pre-open of 1000 orders per window that steps to `factor` x at 09:30 of `day`."""
    return step(PRE_OPEN, round(PRE_OPEN * factor), at(9, 30) + day * DAY_MS)


def with_rearms(
    monitor: Monitor,
    start_ms: int,
    end_ms: int,
    total: Callable[[int], int],
    hosts: Callable[[int, int], Mapping[str, int]] | None = None,
    rearm_after_ms: int = 60_000,
) -> list[Evaluation]:
    """Like `drive`, but a trip kills the node and two approvers re-arm it a minute later."""
    out = []
    killed_until: int | None = None
    for now in range(start_ms, end_ms, TICK):
        if killed_until is not None and now >= killed_until:
            monitor.reset(now)
            killed_until = None
        n = total(now)
        ev = monitor.observe(now, n, hosts(now, n) if hosts else {}, armed=killed_until is None)
        out.append(ev)
        if ev.trips:
            killed_until = now + rearm_after_ms
    return out


def until_trip(
    monitor: Monitor,
    start_ms: int,
    total: Callable[[int], int],
    hosts: Callable[[int, int], Mapping[str, int]] | None = None,
) -> Evaluation:
    """Observe from `start_ms` until an evaluation trips (the node is killed then); return it."""
    now = start_ms
    while not (
        ev := monitor.observe(now, total(now), hosts(now, total(now)) if hosts else {})
    ).trips:
        now += TICK
    return ev


def accepted(evals: Sequence[Evaluation]) -> list[float]:
    return [e.accepted.value for e in evals if e.accepted is not None]


def one_haunted(now: int, n: int) -> dict[str, int]:
    """Eight hosts share the pre-open evenly; whatever is above it comes from or-01."""
    hosts = dict.fromkeys(HOSTS, min(n, PRE_OPEN) // len(HOSTS))
    hosts["or-01"] += n - sum(hosts.values())
    return hosts


def learned_state(m: Monitor) -> dict[str, str]:
    """The baseline's stored form without the clock, which moves on every observation."""
    return {k: v for k, v in m.baseline.to_dict().items() if k != "last_ms"}


class TestOperatorFeedback:
    @pytest.mark.parametrize("factor", [8.0, 10.0, 20.0, 50.0])
    def test_rearm_at_the_same_level_does_not_retrip(self, factor: float) -> None:
        """A step open trips once; re-armed a minute later into the same level, it stays up."""
        m = Monitor(MonitorConfig())
        evals = with_rearms(m, at(9, 0), at(9, 45), step_open(factor))
        [(when, cause)] = trips(evals)
        assert cause == BASELINE
        assert at(9, 30) < when <= at(9, 30) + 2 * WINDOW
        assert accepted(evals) == [factor * PRE_OPEN]
        rearmed = next(e for e in evals if e.accepted is not None)
        assert rearmed.now_ms == when + 60_000  # the first armed evaluation after the re-arm
        assert rearmed.expected == factor * PRE_OPEN

    def test_next_days_open_is_expected(self) -> None:
        """After one accepted step open, the next days' opens at the same time do not trip."""
        m = Monitor(MonitorConfig())
        per_day = []
        for day in range(3):
            start = at(9, 0) + day * DAY_MS
            per_day.append(trips(with_rearms(m, start, start + 40 * 60_000, step_open(10, day))))
        assert [len(t) for t in per_day] == [1, 0, 0]
        # The profile learned the whole 09:30 bucket on day one, as on a day without a trip.
        bucket = m.baseline.profile[m.baseline.bucket_of(at(9, 30))]
        assert bucket.learned_ms >= 3 * 300_000

    @pytest.mark.parametrize(
        ("k", "trips_again"), [(1.0, False), (4.9, False), (5.5, True), (40.0, True)]
    )
    def test_flood_above_multiplier_x_accepted_trips(self, k: float, trips_again: bool) -> None:
        """A flood going on through the kill at k x the accepted level trips iff k > multiplier."""
        m = Monitor(MonitorConfig())
        first = with_rearms(m, at(9, 0), at(9, 30, 30), step_open(10))
        [(when, _)] = trips(first)
        level = round(10 * PRE_OPEN * k)
        killed = drive(m, at(9, 30, 30), when + 60_000, lambda now: level, armed=False)
        m.reset(when + 60_000)
        after = drive(m, when + 60_000, when + 90_000, lambda now: level)
        assert trips(killed) == []
        assert after[0].accepted is not None and after[0].expected == 10 * PRE_OPEN
        assert trips(after) == ([(when + 60_000 + WINDOW, BASELINE)] if trips_again else [])

    @pytest.mark.parametrize("factor", [10.0, 40.0])
    def test_later_step_above_accepted_level_trips(self, factor: float) -> None:
        """Minutes after an accepted open, a step well above it trips within two windows."""
        m = Monitor(MonitorConfig())
        onset = at(9, 40)
        opened = step_open(10)
        flood = step(10 * PRE_OPEN, round(10 * PRE_OPEN * factor), onset)
        evals = with_rearms(m, at(9, 0), at(9, 41), lambda t: opened(t) if t < onset else flood(t))
        assert len(accepted(evals)) == 1
        [_, (when, cause)] = trips(evals)
        assert cause == BASELINE and onset < when <= onset + 2 * WINDOW

    @pytest.mark.parametrize(
        ("config", "hosts", "cause"),
        [
            (MonitorConfig(max_orders=5000), None, MAX_ORDERS),
            (MonitorConfig(max_host_share=0.5), one_haunted, HOST_SHARE),
        ],
    )
    def test_rearm_after_other_rule_teaches_nothing(
        self,
        config: MonitorConfig,
        hosts: Callable[[int, int], Mapping[str, int]] | None,
        cause: str,
    ) -> None:
        """A re-arm after a max_orders or host_share kill leaves the baseline as it was."""
        m = Monitor(config, roster=HOSTS)
        first = until_trip(m, at(9, 0), step_open(10), hosts)
        when = first.now_ms
        assert [t.cause for t in first.trips] == [cause]
        drive(m, when + TICK, when + 60_000, step_open(10), hosts, armed=False)
        before = learned_state(m)
        m.reset(when + 60_000)
        after = drive(m, when + 60_000, when + 60_000 + TICK, step_open(10), hosts)
        assert after[0].accepted is None
        assert learned_state(m) == before
        assert m.baseline.trip is None

    def test_shadow_baseline_trip_is_not_kept(self) -> None:
        """A baseline rule in shadow mode kills nothing, so no re-arm can accept its level."""
        m = Monitor(MonitorConfig(shadow=frozenset({BASELINE})))
        evals = with_rearms(m, at(9, 0), at(9, 32), step_open(10))
        assert trips(evals) == [] and len(trips(evals, shadow=True)) == 1
        assert m.baseline.trip is None and accepted(evals) == []

    def test_nothing_learned_while_killed(self) -> None:
        """A reset while the node is still killed (an aggregator restart) learns nothing."""
        m = Monitor(MonitorConfig())
        [(_, cause)] = trips(drive(m, at(9, 0), at(9, 30, 30), step_open(10)))
        assert cause == BASELINE
        drive(m, at(9, 30, 30), at(9, 31), lambda now: 0, armed=False)
        before = learned_state(m)
        m.reset(at(9, 31))
        killed = drive(m, at(9, 31), at(9, 33), lambda now: 0, armed=False)
        assert learned_state(m) == before and accepted(killed) == []
        m.reset(at(9, 33))
        assert m.observe(at(9, 33), 0, {}).accepted is not None

    def test_trip_that_never_killed_is_not_accepted(self) -> None:
        """A reset with no killed evaluation since the trip (the kill never landed) learns nothing."""
        m = Monitor(MonitorConfig())
        [(when, _)] = trips(drive(m, at(9, 0), at(9, 30, 30), step_open(10)))
        m.reset(when + TICK)
        ev = m.observe(when + TICK, 10 * PRE_OPEN, {})
        assert ev.accepted is None and m.baseline.trip is None
        assert ev.rule(BASELINE).breach_windows == 1  # type: ignore[union-attr]

    def test_restart_between_kill_and_rearm(self) -> None:
        """Stored during the kill and restored, a monitor accepts the trip on re-arm like one that never stopped."""
        config = MonitorConfig()
        a = Monitor(config)
        [(when, _)] = trips(drive(a, at(9, 0), at(9, 30, 30), step_open(10)))
        drive(a, at(9, 30, 30), at(9, 30, 40), step_open(10), armed=False)
        b = Monitor(config, Baseline.from_dict(a.baseline.to_dict(), config.baseline_params()))
        assert b.baseline == a.baseline and b.baseline.trip is not None
        b.reset(at(9, 30, 40))  # a new aggregator's first tick, the node still killed
        for m in (a, b):
            drive(m, at(9, 30, 40), when + 60_000, step_open(10), armed=False)
            m.reset(when + 60_000)
        ea = drive(a, when + 60_000, at(9, 35), step_open(10))
        eb = drive(b, when + 60_000, at(9, 35), step_open(10))
        assert ea == eb
        assert accepted(ea) == [10 * PRE_OPEN]


class TestHostShare:
    @pytest.mark.parametrize(
        ("hosts", "trip"),
        [
            ({"a": 100, "b": 100, "c": 100, "d": 100}, False),
            ({"a": 500, "b": 100, "c": 100, "d": 100}, True),  # 62.5% of 800
            ({"a": 400, "b": 200, "c": 100, "d": 100}, False),  # exactly 50% is allowed
            ({"a": 60, "b": 5, "c": 5, "d": 5}, False),  # 75 orders: below min_orders
            ({"a": 1000}, False),  # one host is all of itself: no peers, no rule
            ({"a": 1000, "b": 0}, True),
        ],
    )
    def test_share_table(self, hosts: dict[str, int], trip: bool) -> None:
        """A host over `max_host_share` of a node at or above min_orders trips after two windows."""
        m = Monitor(MonitorConfig(max_host_share=0.5, baseline_multiplier=None))
        total = sum(hosts.values())
        evals = drive(m, DAY0, DAY0 + WINDOW + TICK, lambda now: total, lambda now, n: hosts)
        assert trips(evals) == ([(DAY0 + WINDOW, HOST_SHARE)] if trip else [])

    def test_detail_names_the_host(self) -> None:
        """The detail names the host, its share, the limit and how far above its peers it is."""
        m = Monitor(MonitorConfig(max_host_share=0.5, breach_windows=1, baseline_multiplier=None))
        hosts = {"or-01": 131, "or-02": 130, "or-03": 2620, "or-04": 129}
        [trip] = m.observe(DAY0, 3010, hosts).trips
        assert trip.host == "or-03"
        assert trip.detail == (
            "host or-03 sent 87% of the node's 3010 orders in 10s (limit 50%), "
            "20.2x its peers' median of 130"
        )

    def test_roster_hosts_count_as_silent(self) -> None:
        """A roster host missing from the window counts as a peer that sent nothing."""
        m = Monitor(MonitorConfig(max_host_share=0.9, breach_windows=1), roster=["a", "b"])
        ev = m.observe(DAY0, 500, {"a": 500})
        assert [(t.host, t.value) for t in ev.trips] == [("a", 1.0)]

    @pytest.mark.parametrize(
        ("hosts", "haunted"),
        [
            ({"a": 100, "b": 110, "c": 90}, []),
            ({"a": 2000, "b": 100, "c": 90, "d": 110}, ["a"]),
            ({"a": 2000, "b": 1900, "c": 90, "d": 110, "e": 100}, ["a", "b"]),  # median: no hiding
            ({"a": 40, "b": 0, "c": 0}, []),  # below min_orders
        ],
    )
    def test_haunted_hosts(self, hosts: dict[str, int], haunted: list[str]) -> None:
        """Hosts at 5x their peers' median are reported, loudest first."""
        got = haunted_hosts(hosts, sum(hosts.values()), 5.0, 100)
        assert [h.host for h in got] == haunted
        for h in got:
            assert h.share == hosts[h.host] / sum(hosts.values())


class TestShadow:
    def test_shadow_reports_without_enforcing(self) -> None:
        """A shadowed rule says when it would have tripped and does not ask for a kill."""
        m = Monitor(MonitorConfig(max_orders=1000, shadow=frozenset({MAX_ORDERS})))
        ev = m.observe(DAY0, 1500, {})
        assert ev.trips == ()
        assert [(t.cause, t.at_ms, t.shadow) for t in ev.shadow_trips] == [(MAX_ORDERS, DAY0, True)]


# --- a full session in virtual time -------------------------------------------------------
# Eight hosts. Per host: 3 orders/s pre-open, a ramp over 30 s from 09:30 to 30/s (3x the
# steady day, 10x the pre-open the baseline learned), back to 10/s by 09:40, steady until
# 10:00. Poisson counts per host per 100 ms flush, from a fixed seed.
PRE, PEAK, STEADY = 3.0, 30.0, 10.0
OPEN = at(9, 30)
HAUNTED_EXTRA = 19 * STEADY  # one host at 20x its normal rate


def session_rate(now: int) -> float:
    s = (now - OPEN) / 1000
    if s < 0:
        return PRE
    if s < 30:
        return PRE + (PEAK - PRE) * s / 30
    if s < 600:
        return PEAK - (PEAK - STEADY) * (s - 30) / 570
    return STEADY


def poisson(rng: random.Random, lam: float) -> int:
    # Knuth's method: exact and fast enough for the small means of one 100 ms flush.
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k, p = k + 1, p * rng.random()
    return k


@functools.cache
def session(extra: Callable[[str, int], float] | None = None) -> tuple[FlowEvent, ...]:
    rng = random.Random(20120801)
    events = []
    for now in range(at(9, 0), at(10, 0), TICK):
        rate = session_rate(now)
        for host in HOSTS:
            lam = (rate + (extra(host, now) if extra else 0.0)) * TICK / 1000
            if count := poisson(rng, lam):
                events.append(FlowEvent(now, host, count))
    return tuple(events)


def haunted_or03(host: str, now: int) -> float:
    return HAUNTED_EXTRA if host == "or-03" and now >= OPEN else 0.0


def haunted_spread(host: str, now: int) -> float:
    return HAUNTED_EXTRA / len(HOSTS) if now >= OPEN else 0.0


class TestSession:
    def test_normal_session_never_trips(self) -> None:
        """Pre-open trickle, a 10x open ramping over 30 s and a steady day trip nothing with
        the learning of earlier releases, which followed the ramp."""
        result = replay(session(), MonitorConfig(max_host_share=0.5).unguarded())
        assert result.trips == ()

    def test_guarded_learning_does_not_follow_a_10x_ramp_unasked(self) -> None:
        """Guarded learning takes no 10x ramp in by itself: on a day with no profile the
        open trips once, by a baseline rule, within a minute of its start."""
        result = replay(session(), MonitorConfig(max_host_share=0.5), rearm_after_ms=None)
        [trip] = result.trips
        assert trip.cause in (BASELINE, BASELINE_FAST, RUNAWAY)
        assert OPEN < trip.at_ms <= OPEN + 60_000

    @pytest.mark.parametrize("extra", [haunted_or03, haunted_spread])
    def test_haunted_open_trips_within_two_windows(
        self, extra: Callable[[str, int], float]
    ) -> None:
        """Without the fast rules, one host's 20x flood (alone or spread over 8) at the open
        trips the slow baseline rule within two windows."""
        config = MonitorConfig(fast_multiplier=None)
        result = replay(session(extra), config, rearm_after_ms=None)
        [trip] = result.trips
        assert trip.cause == BASELINE
        assert OPEN < trip.at_ms <= OPEN + 2 * WINDOW

    @pytest.mark.parametrize("extra", [haunted_or03, haunted_spread])
    def test_haunted_open_trips_the_fast_rule_within_a_second(
        self, extra: Callable[[str, int], float]
    ) -> None:
        """With the default rules the same 20x flood trips `baseline_fast` within one fast
        window (plus its one-tick hold) of onset, during a 10x open ramp."""
        result = replay(session(extra), MonitorConfig(), rearm_after_ms=None)
        [trip] = result.trips
        assert trip.cause == BASELINE_FAST
        assert OPEN < trip.at_ms <= OPEN + 1000 + TICK, trip.at_ms - OPEN

    def test_haunted_host_also_trips_host_share(self) -> None:
        """With host share on, the haunted host is named as well: by the slow rule within two
        windows without the fast rules, by `host_share_fast` within a second with them."""
        slow_only = MonitorConfig(max_host_share=0.5, fast_multiplier=None, fast_host_share=False)
        result = replay(session(haunted_or03), slow_only)
        shares = [t for t in result.trips if t.cause == HOST_SHARE]
        assert shares
        assert shares[0].host == "or-03"
        assert shares[0].at_ms <= OPEN + 2 * WINDOW
        first = replay(session(haunted_or03), MonitorConfig(max_host_share=0.5)).trips[0]
        assert (first.cause, first.host) == (HOST_SHARE_FAST, "or-03")
        assert OPEN < first.at_ms <= OPEN + 1000 + TICK


# --- properties ----------------------------------------------------------------------------
SMALL = MonitorConfig(
    window_ms=1000,
    warmup_ms=3000,
    half_life_ms=2000,
    min_orders=50,
    max_orders=15_000,
    max_host_share=0.6,
    profile_bucket_ms=10_000,
    profile_half_life_ms=20_000,
)
Traffic = list[tuple[int, dict[str, int]]]


@st.composite
def traffic(draw: st.DrawFn, max_total: int = 20_000) -> Traffic:
    """Plateaus of window sums split over four hosts: steps, floods and silences."""
    out: Traffic = []
    for _ in range(draw(st.integers(1, 10))):
        total = draw(st.integers(0, max_total))
        weights = draw(st.lists(st.integers(0, 9), min_size=4, max_size=4))
        if not any(weights):
            weights[0] = 1
        hosts = {f"h{i}": total * w // sum(weights) for i, w in enumerate(weights)}
        hosts["h0"] += total - sum(hosts.values())
        out += [(total, hosts)] * draw(st.integers(1, 40))
    return out


def run(config: MonitorConfig, seq: Traffic, warm: int = 0) -> list[Evaluation]:
    m = Monitor(config)
    for i in range(warm):
        m.observe(DAY0 + i * TICK, 1000, {"h0": 250, "h1": 250, "h2": 250, "h3": 250})
    return [m.observe(DAY0 + (warm + i) * TICK, n, h) for i, (n, h) in enumerate(seq)]


FAST = settings(max_examples=60, deadline=None)


class TestProperties:
    @FAST
    @given(traffic(), st.sampled_from([True, frozenset({BASELINE}), frozenset({HOST_SHARE})]))
    def test_shadow_trips_when_enforcing_would(
        self, seq: Traffic, shadow: frozenset[str] | bool
    ) -> None:
        """A shadowed rule would have tripped at exactly the ticks the enforcing rule trips."""
        enforcing = run(SMALL, seq, warm=40)
        shadowed = run(replace(SMALL, shadow=shadow), seq, warm=40)
        config = replace(SMALL, shadow=shadow)
        want = [
            (t, c) for t, c in trips(enforcing) if config.is_shadow(c)
        ]  # the shadowed causes only
        assert trips(shadowed, shadow=True) == want
        assert trips(shadowed) == [(t, c) for t, c in trips(enforcing) if not config.is_shadow(c)]

    @FAST
    @given(traffic())
    def test_never_trips_below_min_orders(self, seq: Traffic) -> None:
        """Neither the baseline nor the host share trips on a window below min_orders."""
        for ev in run(SMALL, seq, warm=40):
            for t in ev.trips:
                assert t.cause == MAX_ORDERS or ev.node_total >= SMALL.min_orders

    @FAST
    @given(traffic())
    def test_never_trips_baseline_during_warmup(self, seq: Traffic) -> None:
        """No baseline trip before warmup_ms of learning, whatever the traffic."""
        for i, ev in enumerate(run(SMALL, seq)):
            if i * TICK < SMALL.warmup_ms:
                assert all(t.cause != BASELINE for t in ev.trips)

    @FAST
    @given(
        st.lists(st.integers(1000, 2000), min_size=60, max_size=200),
        st.floats(0.0, 2.4),
    )
    def test_bounded_traffic_never_trips(self, base: list[int], factor: float) -> None:
        """Traffic within 2x of itself, then scaled by under multiplier/2, never trips the baseline."""
        # Independent draws per tick are not a window's flow: their noise can grow three
        # steps in a row, so the runaway rule (tested on real flows) is off here.
        config = replace(
            SMALL, max_orders=None, max_host_share=None, min_orders=0, runaway_growth=None
        )
        no_hosts: dict[str, int] = {}
        warm: Traffic = [(n, no_hosts) for n in base] * (SMALL.warmup_ms // (TICK * len(base)) + 1)
        later: Traffic = [(round(n * factor), no_hosts) for n in base]
        assert trips(run(config, [*warm, *later])) == []

    @FAST
    @given(traffic(max_total=5000), st.sampled_from([2, 4, 8]))
    def test_scale_invariant(self, seq: Traffic, scale: int) -> None:
        """Trips depend on the traffic's shape, not the node's size (all counts scaled by 2^k)."""
        scaled_config = replace(
            SMALL, min_orders=SMALL.min_orders * scale, max_orders=15_000 * scale
        )
        scaled = [(n * scale, {h: v * scale for h, v in hs.items()}) for n, hs in seq]
        assert trips(run(scaled_config, scaled)) == trips(run(SMALL, seq))

    @FAST
    @given(traffic())
    def test_deterministic(self, seq: Traffic) -> None:
        """The same input sequence gives the same evaluations."""
        assert run(SMALL, seq, warm=40) == run(SMALL, seq, warm=40)

    @FAST
    @given(traffic(), st.integers(0, 200))
    def test_restore_continues_identically(self, seq: Traffic, cut: int) -> None:
        """Stored and restored at any tick, a monitor decides as one that never stopped."""
        cut = min(cut, len(seq))
        a = Monitor(SMALL)
        for i, (n, h) in enumerate(seq[:cut]):
            a.observe(DAY0 + i * TICK, n, h)
        b = Monitor(SMALL, Baseline.from_dict(a.baseline.to_dict(), SMALL.baseline_params()))
        a.reset(DAY0)
        for i, (n, h) in enumerate(seq[cut:], start=cut):
            assert a.observe(DAY0 + i * TICK, n, h) == b.observe(DAY0 + i * TICK, n, h)

    @FAST
    @given(traffic())
    def test_warnings_are_level_transitions(self, seq: Traffic) -> None:
        """A warning is reported exactly when a rule's level differs from the previous tick's."""
        previous: dict[str, int] = {}
        for ev in run(SMALL, seq, warm=40):
            changed = {w.cause: (w.old, w.new) for w in ev.warnings}
            for r in ev.rules:
                old = previous.get(r.cause, 0)
                assert changed.get(r.cause) == ((old, r.level) if old != r.level else None)
                previous[r.cause] = r.level
