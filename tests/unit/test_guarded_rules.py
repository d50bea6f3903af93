"""Guarded learning, breach time over a span and the runaway rule, unit by unit.

No server and no clock: time is virtual milliseconds and every input is a number. The whole
scenarios (floods, runaways, pulses, normal days) are in tests/unit/test_scenarios.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from killswitch.cli.rulecli import backtest_command, rule_config
from killswitch.core.rules.anomaly import BASELINE, RUNAWAY, Evaluation, Monitor, MonitorConfig
from killswitch.core.rules.baseline import Baseline
from killswitch.core.rules.readings import Span
from killswitch.core.rules.scenarios import learned
from killswitch.runtime.config import ConfigError, Resolver
from killswitch.view.ruleview import decode_view, rule_lines, view_fields

T0 = 1_343_826_000_000  # 2012-08-01 13:00 UTC
TICK = 100
W = 10_000
NORMAL = 800  # orders per 10 s window
CONFIG = MonitorConfig()


def warm_monitor(config: MonitorConfig = CONFIG) -> Monitor:
    return Monitor(
        config, Baseline.from_dict(learned(config, 80.0, T0).to_dict(), config.baseline_params())
    )


def drive(
    m: Monitor, start: int, end: int, total: Callable[[int], float], tick: int = TICK
) -> list[Evaluation]:
    return [m.observe(t, round(total(t)), {}) for t in range(start, end, tick)]


def window_of(rate: Callable[[float], float]) -> Callable[[int], float]:
    """The 10 s window sum of a node rate (x normal, as a function of seconds since T0)."""

    def total(t: int) -> float:
        s = (t - T0) / 1000
        return sum(rate(s - k / 10) for k in range(100)) * NORMAL / 100

    return total


def trips(evals: list[Evaluation]) -> list[tuple[int, str]]:
    return [(t.at_ms - T0, t.cause) for e in evals for t in e.trips]


class TestGuardedLearning:
    def test_a_floods_rising_windows_are_not_learned(self) -> None:
        """The windows of a flood's rise, each under the line when judged, are forgotten
        when it breaches; the learning of earlier releases took them in."""

        def flood(s: float) -> float:
            return 1.0 if s < 60 else min(1.0 + (s - 60) / 10, 8.0)

        quiet = replace(CONFIG, fast_multiplier=None, runaway_growth=None)
        m = warm_monitor(quiet)
        evals = drive(m, T0, T0 + 150_000, window_of(flood))
        assert [c for _, c in trips(evals)] == [BASELINE]
        # What it took in before the breach rose at most 2x an hour: 150 s of that.
        assert NORMAL <= (m.baseline.global_.value or 0) <= NORMAL * 2 ** (150 / 3600)
        old = warm_monitor(quiet.unguarded())
        drive(old, T0, T0 + 150_000, window_of(flood))
        assert (old.baseline.global_.value or 0) > 1.5 * NORMAL

    def test_sustained_growth_under_the_line_rises_at_most_2x_an_hour(self) -> None:
        """A node at 4x (under the multiplier, no rule breaching) for an hour moves the
        baseline by at most 2x; earlier releases' learning followed it within minutes."""
        quiet = replace(CONFIG, runaway_growth=None, fast_multiplier=None)
        for config, bound in ((quiet, 2.0 * NORMAL * 1.01), (quiet.unguarded(), None)):
            m = warm_monitor(config)
            evals = drive(m, T0, T0 + 3_600_000, lambda _t: 4 * NORMAL, tick=1000)
            expected = evals[-1].expected or 0.0
            if bound is None:
                assert expected == pytest.approx(4 * NORMAL, rel=0.01)
            else:
                assert NORMAL * 1.5 < expected <= bound

    def test_band_a_window_counts_as_at_most_band_x_expected(self) -> None:
        """Guarded learning takes a sample as at most band x the expectation in one step."""
        b = learned(CONFIG, 80.0, T0)
        b.learn(T0 + W, 100 * NORMAL, W, guarded=True)
        # One window's weight at a 45 s half-life, of a sample clipped to 1.5 x 800.
        keep = 0.5 ** (W / CONFIG.half_life_ms)
        assert b.global_.value == pytest.approx(
            min(keep * NORMAL + (1 - keep) * 1.5 * NORMAL, NORMAL * 2 ** (W / 3_600_000)), rel=0.001
        )
        assert b.expected(T0 + W) == pytest.approx(NORMAL * 2 ** (W / 3_600_000), rel=0.001)

    def test_a_silent_node_climbs_back_to_the_floor(self) -> None:
        """From silence the rise bound still lets the baseline reach min_orders / multiplier."""
        b = Baseline(CONFIG.baseline_params())
        b.advance(T0)
        for t in range(T0 + W, T0 + 50 * W, W):
            b.learn(t, 0.0, b.advance(t), guarded=False)
        for t in range(T0 + 50 * W, T0 + 100 * W, W):
            b.learn(t, 1000.0, b.advance(t), guarded=True)
        # Up to the floor at once, then at most 2x an hour (50 windows: 500 s).
        floor = CONFIG.min_orders / 5.0
        assert floor <= (b.global_.value or 0) <= floor * 2 ** (500 / 3600) * 1.001

    def test_the_slow_average_remembers_the_morning_through_a_lull(self) -> None:
        """After 90 minutes at half the level, the expectation is still over 3/4 of it."""
        m = warm_monitor(replace(CONFIG, runaway_growth=None))
        evals = drive(m, T0, T0 + 5_400_000, lambda _t: NORMAL / 2, tick=1000)
        assert (evals[-1].expected or 0) > 0.75 * NORMAL
        assert (m.baseline.global_.value or 0) == pytest.approx(NORMAL / 2, rel=0.01)

    def test_warmup_ends_on_the_median_so_a_late_flood_is_judged(self) -> None:
        """A cold monitor that sees a 6x flood in the last third of its warm-up settles on
        the normal level and trips within two windows of the warm-up's end."""
        m = Monitor(replace(CONFIG, fast_multiplier=None, runaway_growth=None))
        flood_at = T0 + 210_000

        def total(t: int) -> float:
            return min(t - T0, W) / W * NORMAL + 5 * NORMAL * min(max(t - flood_at, 0), W) / W

        evals = drive(m, T0, T0 + 360_000, total)
        [(at, cause)] = trips(evals)
        assert cause == BASELINE
        assert 300_000 < at <= 300_000 + 2 * W + 2 * W  # warm-up counts learned time
        unguarded = Monitor(replace(CONFIG, fast_multiplier=None).unguarded())
        assert trips(drive(unguarded, T0, T0 + 360_000, total)) == []


class TestSpan:
    NEEDED, SPAN = W, 3 * W

    def run(self, breaches: Callable[[int], bool], span: int | None = None) -> int | None:
        s = Span()
        for t in range(0, 120_000, TICK):
            if s.judge(breaches(t), t, self.NEEDED, span or self.SPAN):
                return t
        return None

    def test_an_unbroken_breach_trips_after_needed(self) -> None:
        """A breach from t0 on trips at t0 + needed, as an unbroken streak does."""
        assert self.run(lambda t: t >= 5000) == 15_000

    def test_a_spike_in_the_window_for_one_width_does_not_trip(self) -> None:
        """A spike is in the window for one width less a tick: under `needed`."""
        assert self.run(lambda t: 5000 <= t < 15_000) is None

    def test_a_pulse_trips_that_a_streak_never_would(self) -> None:
        """9 s in breach every 25 s trips within the span; counted unbroken, never."""

        def pulse(t: int) -> bool:
            return t >= 8_000 and (t - 8_000) % 25_000 < 9_000

        assert self.run(pulse) == 34_100  # 8.9 s + 1.1 s of the second pulse
        assert self.run(pulse, span=self.NEEDED) is None

    def test_trips_once_per_episode(self) -> None:
        """After a trip it reports again only once its breach time fell under `needed`."""
        s = Span()
        fired = [
            t for t in range(0, 200_000, TICK) if s.judge(t < 50_000 or t >= 100_000, t, W, 3 * W)
        ]
        assert fired == [10_000, 110_000]


class TestRunaway:
    @pytest.mark.parametrize("windows", [1, 2, 3, 4, 6, 12])
    def test_a_burst_at_one_level_never_runs_away(self, windows: int) -> None:
        """A 2.5x burst of any length grows while it fills the steps and then stops: no
        three steps of growth, so no runaway trip."""
        m = warm_monitor()

        def burst(s: float) -> float:
            return 2.5 if 100 <= s < 100 + windows * 10 else 1.0

        evals = drive(m, T0, T0 + 400_000, window_of(burst))
        assert [c for _, c in trips(evals) if c == RUNAWAY] == []
        assert any(r.active for e in evals if (r := e.rule(RUNAWAY)))  # it looked

    def test_a_day_starting_from_silence_does_not_run_away(self) -> None:
        """Routers connecting one by one after a silent night, then a 2.5x open: growth
        from nothing is not a runaway (its first step is under the band's share of normal)."""
        m = warm_monitor()

        def start(s: float) -> float:
            if s < 100:
                return 0.0
            return min((s - 100) / 60, 1.0) * (2.5 if 160 <= s < 190 else 1.0)

        evals = drive(m, T0, T0 + 300_000, window_of(start))
        assert [c for _, c in trips(evals) if c == RUNAWAY] == []

    def test_doubling_every_minute_trips_before_4x(self) -> None:
        """A node doubling every minute trips `runaway` before it reaches 4x its normal;
        without the rule nothing trips before the baseline rule's 5x."""

        def doubling(s: float) -> float:
            return 2.0 ** (max(s - 100, 0) / 60)

        m = warm_monitor()
        [(at, cause), *_] = trips(drive(m, T0, T0 + 400_000, window_of(doubling)))
        assert cause == RUNAWAY
        assert doubling(at / 1000) < 4.0
        off = warm_monitor(replace(CONFIG, runaway_growth=None, fast_multiplier=None))
        [(at_off, cause_off), *_] = trips(drive(off, T0, T0 + 400_000, window_of(doubling)))
        assert cause_off == BASELINE and doubling(at_off / 1000) > 4.0

    def test_detail_and_accepted_level(self) -> None:
        """The trip says how fast the node grew; a re-arm accepts its window as the level."""
        m = warm_monitor()

        def doubling(s: float) -> float:
            return 2.0 ** (max(s - 100, 0) / 60)

        evals = drive(m, T0, T0 + 300_000, window_of(doubling))
        trip = next(t for e in evals for t in e.trips)
        assert trip.detail.startswith("node grew at least 1.")
        assert "orders per 20s" in trip.detail and "its baseline of 80" in trip.detail
        assert m.baseline.trip is not None and m.baseline.trip.value > 1.5 * NORMAL


class TestFlags:
    def test_new_settings_resolve_and_turn_off(self) -> None:
        """The guarded learning and runaway flags resolve, 'off' turns each off."""
        c = rule_config(Resolver({}, env={}))
        assert (c.baseline_band, c.baseline_doubling_ms, c.baseline_slow_half_life_ms) == (
            1.5,
            3_600_000,
            7_200_000,
        )
        assert (c.breach_span, c.runaway_growth, c.runaway_step, c.runaway_steps) == (
            None,
            1.15,
            2,
            4,
        )
        flags: dict[str, Any] = {
            "baseline_band": "off",
            "baseline_doubling": "off",
            "baseline_slow_half_life": "off",
            "breach_span": "1",
            "runaway_growth": "off",
        }
        off = rule_config(Resolver(flags, env={}))
        assert off == CONFIG.unguarded()
        env = {"KILLSWITCH_BASELINE_DOUBLING": "360", "KILLSWITCH_RUNAWAY_STEP": "3"}
        c = rule_config(Resolver({"runaway_growth": "1.3", "breach_span": 4}, env=env))
        assert (c.baseline_doubling_ms, c.runaway_step, c.runaway_growth, c.breach_span) == (
            360_000,
            3,
            1.3,
            4,
        )

    @pytest.mark.parametrize(
        ("flags", "field"),
        [
            ({"baseline_band": "0.5"}, "baseline-band"),
            ({"baseline_doubling": "0"}, "baseline-doubling"),
            ({"baseline_slow_half_life": "-1"}, "baseline-slow-half-life"),
            ({"breach_span": "0"}, "breach-span"),
            ({"runaway_growth": "1"}, "runaway-growth"),
            ({"runaway_step": "0"}, "runaway-step"),
            ({"runaway_steps": "1000"}, "runaway-steps"),
            ({"breach_windows": "5", "breach_span": "2"}, "breach-span"),
        ],
    )
    def test_bad_values_name_the_flag(self, flags: dict[str, Any], field: str) -> None:
        """A value out of its bound is refused naming its flag."""
        with pytest.raises(ConfigError, match=f"^{field}: "):
            rule_config(Resolver(flags, env={}))

    def test_backtest_replays_a_scenario_by_name(self) -> None:
        """`backtest --scenario NAME` replays the library's flow from its own baseline, and
        an unknown name is refused naming the known ones."""
        flags = {"scenario": "pulse", "rearm_after": "never", "json": True}
        code, out = backtest_command(Resolver(flags, env={}))
        doc = json.loads(out)
        assert code == 0 and doc["scenario"] == "pulse"
        [trip] = doc["trips"]
        assert trip["cause"] == BASELINE and "5." in trip["detail"]
        with pytest.raises(
            ConfigError, match=r"^scenario: no scenario 'nope'; known: post_burst_flood"
        ):
            backtest_command(Resolver({"scenario": "nope"}, env={}))

    def test_status_shows_the_runaway_rule_as_growth_per_step(self) -> None:
        """`status` reads the runaway rule's value and limit as growth per step."""
        m = warm_monitor()
        ev = m.observe(T0, NORMAL, {})
        lines = rule_lines(decode_view({**view_fields(CONFIG, ev), "node_orders": "800"}))
        [line] = [x for x in lines if x.lstrip().startswith("runaway")]
        assert "value +0%/step" in line and "limit +15%" in line
