"""The limit-burst rule: a table, a property, and backtests of two recorded-style days."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.rules.limitburst import LimitBurst, LimitBurstConfig, backtest

CFG = LimitBurstConfig(max_refusals=100, window_ms=1000, min_hosts=2)


class TestRule:
    @pytest.mark.parametrize(
        ("rows", "trips"),
        [
            ([], False),
            ([(0, "h1", 500)], False),  # one host: its own gate is holding
            ([(0, "h1", 50), (10, "h2", 50)], False),  # exactly the limit
            ([(0, "h1", 50), (10, "h2", 51)], True),
            ([(0, "h1", 60), (1000, "h2", 60)], False),  # h1's refusals left the window
        ],
    )
    def test_table(self, rows: list[tuple[int, str, int]], trips: bool) -> None:
        """More than max_refusals from at least min_hosts hosts inside one window trips."""
        rule = LimitBurst(CFG)
        for r in rows:
            rule.add(*r)
        assert (rule.observe(1000 if rows and rows[-1][0] == 1000 else 100) is not None) == trips

    def test_latched_until_the_burst_is_over(self) -> None:
        """One trip per breach; after the window drains, a new burst trips again."""
        rule = LimitBurst(CFG)
        rule.add(0, "h1", 80)
        rule.add(0, "h2", 80)
        assert rule.observe(0) is not None
        rule.add(50, "h3", 10)
        assert rule.observe(100) is None
        assert rule.observe(1100) is None  # drained: unlatched
        rule.add(1200, "h1", 80)
        rule.add(1200, "h4", 80)
        trip = rule.observe(1200)
        assert trip is not None and trip.hosts == ("h1", "h4") and trip.refusals == 160

    @given(
        st.lists(
            st.tuples(
                st.integers(0, 5000), st.sampled_from(["h1", "h2", "h3"]), st.integers(1, 50)
            ),
            max_size=60,
        )
    )
    def test_trip_only_when_over(self, rows: list[tuple[int, str, int]]) -> None:
        """Every trip the backtest reports saw more than max_refusals from >= min_hosts hosts."""
        for trip in backtest(rows, CFG):
            assert trip.refusals > CFG.max_refusals
            assert len(trip.hosts) >= CFG.min_hosts
            window = [r for r in rows if trip.at_ms - CFG.window_ms < r[0] <= trip.at_ms]
            assert sum(r[2] for r in window) == trip.refusals


class TestBacktest:
    def test_quiet_day_with_one_misconfigured_host(self) -> None:
        """A day where one host refuses 30 orders/s all day (its own limit) never trips."""
        rows = [(t, "or-03", 3) for t in range(0, 600_000, 100)]
        rows += [(t, h, 1) for t in range(0, 600_000, 5000) for h in ("or-01", "or-02")]
        assert backtest(rows, CFG) == []

    def test_knight_style_release_on_eight_hosts(self) -> None:
        """The same runaway on eight hosts, each held at its local rate: one trip, 0.2 s in."""
        hosts = [f"or-{i:02d}" for i in range(1, 9)]
        start = 60_000
        rows = [(t, h, 10) for t in range(start, start + 30_000, 100) for h in hosts]
        trips = backtest(rows, CFG)
        assert len(trips) == 1
        assert trips[0].at_ms == start + 100
        assert len(trips[0].hosts) == 8
