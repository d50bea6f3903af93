"""Backtest: parsing recorded counts, and replaying them through the live Monitor in virtual time."""

from __future__ import annotations

from dataclasses import replace

import pytest

from killswitch.core.rules.anomaly import (
    BASELINE,
    BASELINE_FAST,
    MAX_ORDERS,
    MAX_RATE,
    MonitorConfig,
)
from killswitch.core.rules.backtest import CsvError, FlowEvent, backtest, read_counts_csv, replay

T0 = 1_343_827_800_000  # 2012-08-01 13:30:00 UTC, 09:30 in New York


class TestReadCsv:
    @pytest.mark.parametrize(
        ("text", "events"),
        [
            (
                "timestamp,host,count\n1343827800.25,or-01,12\n1343827800.5,or-02,0\n",
                [FlowEvent(T0 + 250, "or-01", 12), FlowEvent(T0 + 500, "or-02", 0)],
            ),
            ("1343827800,or-01,3", [FlowEvent(T0, "or-01", 3)]),  # no header
            (
                "2012-08-01T09:30:00.100-04:00,or-01,7\n2012-08-01T13:30:00Z,or-02,1\n",
                [FlowEvent(T0, "or-02", 1), FlowEvent(T0 + 100, "or-01", 7)],  # sorted by time
            ),
            ("2012-08-01 13:30:00.5,or-01,2", [FlowEvent(T0 + 500, "or-01", 2)]),  # naive: UTC
            (
                "# recorded by ops\n\n Timestamp , Host , Count \n 1343827800 , or-01 , 4 \n",
                [FlowEvent(T0, "or-01", 4)],
            ),
            ("", []),
        ],
    )
    def test_parses(self, text: str, events: list[FlowEvent]) -> None:
        """Epoch seconds or ISO-8601, optional header, comments and blank lines skipped."""
        assert read_counts_csv(text) == events

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("1343827800,or-01", "line 1: expected 3 fields"),
            ("timestamp,host,count\n\n1343827800,or-01,1,9", "line 3: expected 3 fields"),
            ("yesterday,or-01,5", "line 1: timestamp 'yesterday' is neither"),
            ("nan,or-01,5", "line 1: timestamp 'nan' is not a time"),
            ("-5,or-01,5", "line 1: timestamp '-5' is not a time"),
            ("1343827800,OR-01,5", "line 1: invalid host name 'OR-01'"),
            ("1343827800,or-01,-5", "line 1: count '-5' is not a non-negative integer"),
            ("1343827800,or-01,2.5", "line 1: count '2.5'"),
            ("1343827800,or-01,1\ntimestamp,host,count", "line 2: timestamp 'timestamp'"),
        ],
    )
    def test_errors_name_the_line(self, text: str, message: str) -> None:
        """A malformed row is refused with its line number and what is wrong with it."""
        with pytest.raises(CsvError, match=message):
            read_counts_csv(text)


def flood(start: int, end: int, per_tick: int, host: str = "or-01") -> list[FlowEvent]:
    return [FlowEvent(t, host, per_tick) for t in range(start, end, 100)]


# The window cap alone, so its crossing point is what is measured.
CAP = MonitorConfig(max_orders=5000, baseline_multiplier=None, fast_multiplier=None)
OLD_RULES = MonitorConfig(fast_multiplier=None)  # the slow rules only


class TestReplay:
    def test_static_cap_trips_where_the_window_crosses(self) -> None:
        """200 orders per 100 ms crosses 5000 in a 10 s window on the 26th flush."""
        trips = backtest(flood(T0, T0 + 4000, 200), CAP, rearm_after_ms=None)
        assert [(t.at_ms, t.cause, t.node_total) for t in trips] == [(T0 + 2500, MAX_ORDERS, 5200)]
        assert trips[0].detail == "node sent 5200 orders in 10s, over its cap of 5000"

    @pytest.mark.parametrize(
        ("rearm", "trip_times"),
        [
            (None, [2500]),  # stop at the first kill
            (60_000, [2500]),  # the default: re-armed a minute later
            (0, [2500, 2600, 2700, 2800]),  # re-armed into the flood: killed again at once
            (300, [2500, 2800]),
            (5000, [2500]),  # still killed when the flood ends
        ],
    )
    def test_rearm_model(self, rearm: int | None, trip_times: list[int]) -> None:
        """After a kill the node stays killed for `rearm_after_ms`, then is re-armed."""
        trips = backtest(flood(T0, T0 + 2900, 200), CAP, rearm_after_ms=rearm)
        assert [t.at_ms - T0 for t in trips] == trip_times

    def test_shadow_trips_do_not_kill(self) -> None:
        """Shadow trips are recorded as such and never stop the replay."""
        config = replace(CAP, shadow=True)
        trips = backtest(flood(T0, T0 + 4000, 200), config, rearm_after_ms=None)
        assert [(t.at_ms - T0, t.shadow) for t in trips] == [(2500, True)]

    def test_ticks_cover_first_to_last_event(self) -> None:
        """Ticks fall on multiples of the tick from the first event to the last."""
        events = [FlowEvent(T0 + 50, "or-01", 1), FlowEvent(T0 + 1000, "or-02", 1)]
        assert replay(events, CAP).ticks == 10  # T0+100 ... T0+1000
        assert replay(events, CAP, tick_ms=250).ticks == 4
        assert replay([], CAP).ticks == 0

    def test_rate_cap_trips_before_the_window_cap(self) -> None:
        """The derived rate cap (3 x 5000 per 10 s = 1500/s) trips a 2000/s flood when its
        1 s window crosses 1500, 1.8 s before the window cap would."""
        config = replace(CAP, max_rate_auto=True)
        trips = backtest(flood(T0, T0 + 4000, 200), config, rearm_after_ms=None)
        assert [(t.at_ms - T0, t.cause) for t in trips] == [(700, MAX_RATE)]
        assert trips[0].detail == "node sent 1600 orders in 1s, over its rate cap of 1500/s"

    @pytest.mark.parametrize(
        ("config", "cause"), [(OLD_RULES, BASELINE), (MonitorConfig(), BASELINE_FAST)]
    )
    def test_stored_baseline_starts_warm(self, config: MonitorConfig, cause: str) -> None:
        """Yesterday's learned baseline lets today's replay trip without a fresh warm-up."""
        yesterday = replay(flood(T0, T0 + 400_000, 10), config)
        assert yesterday.trips == ()
        today = T0 + 86_400_000
        events = flood(today, today + 30_000, 10) + flood(
            today + 10_000, today + 30_000, 200, "or-02"
        )
        assert backtest(events, config, rearm_after_ms=None) == []  # cold: still warming up
        [trip] = backtest(events, config, rearm_after_ms=None, baseline=yesterday.baseline)
        assert trip.cause == cause
        assert today + 10_000 < trip.at_ms <= today + 30_000

    @pytest.mark.parametrize(
        ("config", "cause"), [(OLD_RULES, BASELINE), (MonitorConfig(), BASELINE_FAST)]
    )
    def test_step_open_is_learned_from_the_rearm(self, config: MonitorConfig, cause: str) -> None:
        """A step open trips on day one only; without the re-arm day two trips again (a
        fast trip's rate teaches the baseline as a slow trip's window does)."""

        def day(n: int, open_ms: int = 600_000) -> list[FlowEvent]:
            start = T0 + n * 86_400_000
            return flood(start - 1_800_000, start, 10) + flood(start, start + open_ms, 100)

        # Day one runs 30 s past the 09:35 bucket: a window is learned once confirmed (two
        # windows later), and a bucket speaks the next day only if it learned all of it.
        first = replay(day(0, 630_000), config)
        assert [t.cause for t in first.trips] == [cause]
        assert replay(day(1), config, baseline=first.baseline).trips == ()
        never_rearmed = replay(day(0), config, rearm_after_ms=None)
        assert [t.cause for t in never_rearmed.trips] == [cause]
        again = replay(day(1), config, rearm_after_ms=None, baseline=never_rearmed.baseline)
        assert [t.cause for t in again.trips] == [cause]

    def test_csv_to_trips(self) -> None:
        """A recorded CSV replays end to end."""
        rows = "\n".join(f"{(T0 + i * 100) / 1000},or-0{1 + i % 2},120" for i in range(60))
        trips = backtest(read_counts_csv("timestamp,host,count\n" + rows), CAP)
        assert [t.at_ms - T0 for t in trips] == [4100]

    def test_bad_arguments(self) -> None:
        """A non-positive tick or a negative re-arm delay is refused."""
        with pytest.raises(ValueError, match="tick_ms"):
            replay([], CAP, tick_ms=0)
        with pytest.raises(ValueError, match="rearm_after_ms"):
            replay([], CAP, rearm_after_ms=-1)
