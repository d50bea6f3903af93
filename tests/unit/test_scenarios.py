"""The scenario library replayed at production windows (10 s, a 100 ms tick) through the
aggregator's own `Monitor`, in virtual time: what the rules must catch, how fast, and the
normal days they must leave alone. Pure: no server, no clock.

Each claim is checked against the learning of earlier releases too (`unguarded()`), so a
test that passes shows the difference the guarded baseline makes.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from killswitch.core.rules import scenarios as sc
from killswitch.core.rules.anomaly import BASELINE, RUNAWAY, MonitorConfig

# The aggregator's defaults and its derived backstop cap (1,000/s per host over 10 s).
NEW = MonitorConfig(max_orders=80_000)
OLD = NEW.unguarded()
W_S = NEW.window_ms / 1000


class TestIncidents:
    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_runaway_doubling_every_minute_trips_before_4x(self, seed: int) -> None:
        """A node doubling every minute trips before it reaches 4x its normal rate; the
        earlier learning followed it until the static cap, past 100x."""
        s = sc.runaway(1)
        got = sc.run(s, NEW, seed=seed)
        assert got.cause == RUNAWAY and got.multiple is not None and got.multiple < 4.0, got
        old = sc.run(s, OLD, seed=seed)
        assert old.multiple is None or old.multiple > 50, old

    @pytest.mark.parametrize("seed", [0, 1, 2])
    def test_pulse_trips_within_60_s(self, seed: int) -> None:
        """6x for 15 s, normal for 10 s, repeated, trips within 60 s of its onset: its breach
        time adds up across the dips. Counted unbroken it never trips."""
        got = sc.run(sc.pulse(), NEW, seed=seed)
        assert got.cause == BASELINE and got.detected_s is not None and got.detected_s <= 60, got
        assert sc.run(sc.pulse(), OLD, seed=seed).detected_s is None

    @pytest.mark.parametrize("seed", range(5))
    def test_post_burst_flood_trips_within_two_windows(self, seed: int) -> None:
        """A 6.25x flood right after a 2.5x burst of three windows trips within two windows
        of its onset, by the baseline rule alone too (the burst taught it nothing)."""
        for config in (NEW, replace(NEW, runaway_growth=None)):
            got = sc.run(sc.post_burst_flood(), config, seed=seed)
            assert got.detected_s is not None and 0 < got.detected_s <= 2 * W_S, got
        alone = replace(NEW, runaway_growth=None, fast_multiplier=None)
        got = sc.run(sc.post_burst_flood(), alone, seed=seed)
        assert got.cause == BASELINE and got.detected_s is not None
        assert got.detected_s <= 2 * W_S, got

    def test_flood_during_warmup_trips_when_warmup_ends(self) -> None:
        """A cold aggregator that sees a 6x flood in the last third of its warm-up trips it
        within two windows of the warm-up's end; the earlier learning took the flood in."""
        got = sc.run(sc.warmup_flood(), NEW)
        end = NEW.warmup_ms / 1000 - sc.warmup_flood().onset_s  # type: ignore[operator]
        assert got.detected_s is not None and end < got.detected_s <= end + 5 * W_S, got
        assert sc.run(sc.warmup_flood(), OLD).detected_s is None

    def test_step_change_trips_once_and_the_rearm_accepts_it(self) -> None:
        """A legitimate 6x step trips once; the operators' re-arm teaches its level and
        nothing trips in the half hour after it."""
        got = sc.run(sc.step_change(), NEW)
        assert got.detected_s is not None and got.detected_s <= 2 * W_S, got
        assert got.after_accept == 0, got.trips


class TestNormalDays:
    @pytest.mark.parametrize("windows", [1, 2, 3])
    def test_bursts_of_up_to_three_windows_never_trip(self, windows: int) -> None:
        """2.5x bursts of one to three windows, on a node with noisy flow, trip nothing."""

        def rate(_h: str, t: float) -> float:
            on = any(b <= t < b + windows * W_S for b in (200, 400, 430, 700, 1000))
            return sc.PER_HOST * (2.5 if on else 1.0)

        s = sc.Scenario("bursts", "2.5x bursts", 1200, None, rate)
        for seed in range(3):
            assert sc.run(s, NEW, seed=seed).trips == ()

    @settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.integers(0, 10_000))
    def test_no_false_trip_on_a_generated_day(self, seed: int) -> None:
        """Any generated day (open and close bursts, news bursts, a lunch lull, uneven
        hosts, the level within 15%) trips nothing; bench/anomaly.py replays a month."""
        day = sc.normal_day(seed)
        got = sc.run(day, NEW, tick_ms=1000, flush_ms=1000)
        assert got.trips == ()
