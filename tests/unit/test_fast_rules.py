"""The fast rules in the pure core: `max_rate`, `baseline_fast`, `host_share_fast`.

Tables for each rule's condition and hold, and properties of the `Monitor` with a fast
window beside the window. No server and no clock: time is virtual milliseconds.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.core.rules import readings
from killswitch.core.rules.anomaly import (
    BASELINE,
    BASELINE_FAST,
    FAST_CAUSES,
    HOST_SHARE,
    HOST_SHARE_FAST,
    MAX_ORDERS,
    MAX_RATE,
    Evaluation,
    Monitor,
    MonitorConfig,
)
from kstest.baselines import learned_baseline

DAY0 = 1_343_779_200_000
TICK = 100
CFG = MonitorConfig(max_host_share=0.5)  # 10 s window, 1 s fast window, the defaults
HOSTS = ("h0", "h1", "h2", "h3")


def warm_monitor(config: MonitorConfig = CFG, per_s: float = 80.0) -> Monitor:
    return Monitor(config, learned_baseline(config, per_s, DAY0), roster=HOSTS)


def even(total: int) -> dict[str, int]:
    out = {h: total // len(HOSTS) for h in HOSTS}
    out["h0"] += total - sum(out.values())
    return out


class TestConditions:
    @pytest.mark.parametrize(
        ("fast_total", "expected", "warm", "breach", "limit"),
        [
            (640, 800.0, True, False, 640.0),  # 8 x 80/s: at the line is allowed
            (641, 800.0, True, True, 640.0),
            (5000, 800.0, False, False, 640.0),  # warming up: never
            (49, 10.0, True, False, 50.0),  # a quiet node: the floor, not 8 x 1/s
            (51, 10.0, True, True, 50.0),
            (9999, None, True, False, None),  # nothing learned yet
        ],
    )
    def test_baseline_fast(
        self, fast_total: int, expected: float | None, warm: bool, breach: bool, limit: float | None
    ) -> None:
        """The last second breaches above fast_multiplier x the baseline's rate, never below
        fast_min_orders, only once warm."""
        r = readings.baseline_fast(CFG, fast_total, expected, warm)
        assert (r.breach, r.limit) == (breach, limit)

    @pytest.mark.parametrize(
        ("fast_ms", "per_s", "fast_total", "breach", "cap"),
        [
            (1000, 1500.0, 1500, False, 1500.0),
            (1000, 1500.0, 1501, True, 1500.0),
            (500, 1500.0, 751, True, 750.0),  # a cap per second over a half-second window
        ],
    )
    def test_max_rate(
        self, fast_ms: int, per_s: float, fast_total: int, breach: bool, cap: float
    ) -> None:
        """The rate cap is per second, whatever the fast window's width."""
        r = readings.max_rate(replace(CFG, fast_window_ms=fast_ms), fast_total, per_s)
        assert (r.breach, r.limit) == (breach, cap)

    @pytest.mark.parametrize(
        ("hosts", "breach", "active"),
        [
            ({"h0": 30, "h1": 10, "h2": 10, "h3": 10}, False, True),  # exactly 50%
            ({"h0": 31, "h1": 10, "h2": 10, "h3": 9}, True, True),
            ({"h0": 20, "h1": 1, "h2": 1, "h3": 1}, False, False),  # 23 orders: under the floor
        ],
    )
    def test_host_share_fast(self, hosts: dict[str, int], breach: bool, active: bool) -> None:
        """The share of the last second, only at or above fast_min_orders."""
        r = readings.host_share(CFG, sum(hosts.values()), hosts, 0.5, fast=True)
        assert (r.cause, r.breach, r.active, r.host) == (HOST_SHARE_FAST, breach, active, "h0")

    @pytest.mark.parametrize(
        ("cause", "fast_breach_ms", "hold"),
        [
            (MAX_ORDERS, 100, (1, 1)),
            (MAX_RATE, 100, (1, 1)),
            (BASELINE_FAST, 100, (100, 2)),
            (HOST_SHARE_FAST, 300, (300, 2)),
            (BASELINE_FAST, 0, (1, 1)),
            (BASELINE, 100, (10_000, 2)),
            (HOST_SHARE, 100, (10_000, 2)),
        ],
    )
    def test_hold(self, cause: str, fast_breach_ms: int, hold: tuple[int, int]) -> None:
        """Caps trip at once, fast rules after fast_breach_ms, slow rules after their windows."""
        assert readings.hold(replace(CFG, fast_breach_ms=fast_breach_ms), cause) == hold

    @pytest.mark.parametrize(
        ("config", "cap"),
        [
            (MonitorConfig(max_orders=5000), None),  # off unless asked for
            (MonitorConfig(max_orders=5000, max_rate_auto=True), 1500.0),  # 3 x 500/s
            (MonitorConfig(max_orders=5000, window_ms=5000, max_rate_auto=True), 3000.0),
            (MonitorConfig(max_orders=5000, max_rate=700), 700.0),
            (MonitorConfig(max_rate=700), 700.0),
            (MonitorConfig(max_rate_auto=True), None),  # no window cap: nothing to derive from
            (MonitorConfig(max_orders=5000, window_ms=1000, max_rate_auto=True), None),
        ],
    )
    def test_rate_cap(self, config: MonitorConfig, cap: float | None) -> None:
        """max_rate as set, else derived from max_orders, else off."""
        assert config.rate_cap == cap
        assert (MAX_RATE in config.causes) == (cap is not None)


class TestMonitor:
    def test_breach_must_hold_one_tick(self) -> None:
        """A one-tick spike over the fast line trips nothing; two ticks trip at the second."""
        m = warm_monitor()
        t = DAY0 + 1000
        for i, fast in enumerate([80, 900, 80, 900, 900, 80]):
            ev = m.observe(t + i * TICK, 800, even(800), fast_total=fast, fast_hosts=even(fast))
            assert [x.cause for x in ev.trips] == ([BASELINE_FAST] if i == 4 else [])

    def test_detail_and_status(self) -> None:
        """A fast trip says what the second held against the baseline's rate; its status
        reports the fast window's width."""
        m = warm_monitor()
        for i in range(2):
            ev = m.observe(DAY0 + 1000 + i * TICK, 800, even(800), fast_total=1600,
                           fast_hosts=even(1600))  # fmt: skip
        [trip] = ev.trips
        assert trip.detail == "node sent 1600 orders in 1s, 20.0x its baseline rate of 80/s"
        status = ev.rule(BASELINE_FAST)
        assert status is not None and status.window_ms == 1000
        assert status.limit == pytest.approx(640.0)
        assert ev.fast_total == 1600

    def test_rearm_after_a_fast_trip_teaches_its_rate(self) -> None:
        """A re-arm after a baseline_fast kill accepts the tripping second scaled to the window."""
        m = warm_monitor()
        t = DAY0 + 1000
        for i in range(2):
            m.observe(t + i * TICK, 800, even(800), fast_total=700, fast_hosts=even(700))
        m.observe(t + 300, 800, even(800), armed=False, fast_total=700, fast_hosts=even(700))
        m.reset(t + 400)
        ev = m.observe(t + 400, 800, even(800), fast_total=80, fast_hosts=even(80))
        assert ev.accepted is not None and ev.accepted.value == 7000.0
        assert ev.expected is not None and ev.expected >= 7000.0

    def test_rearm_after_a_rate_cap_teaches_nothing(self) -> None:
        """A max_rate kill is a cap, not a level anyone accepts as normal."""
        m = warm_monitor(MonitorConfig(max_orders=5000, max_rate_auto=True))
        t = DAY0 + 1000
        ev = m.observe(t, 800, even(800), fast_total=2000, fast_hosts=even(2000))
        assert ev.trip is not None and ev.trip.cause == MAX_RATE  # at once, before any hold
        m.observe(t + 100, 800, even(800), armed=False, fast_total=0, fast_hosts=even(0))
        m.reset(t + 200)
        assert m.observe(t + 200, 800, even(800), fast_total=0, fast_hosts=even(0)).accepted is None

    def test_without_a_fast_window_the_fast_rules_are_inactive(self) -> None:
        """A caller that passes no fast window gets the slow rules only: nothing fast trips."""
        m = warm_monitor()
        for i in range(30):
            ev = m.observe(DAY0 + 1000 + i * TICK, 800, even(800))
            assert not ev.trips
            assert all(not r.active for r in ev.rules if r.cause in FAST_CAUSES)


# --- properties ----------------------------------------------------------------------------
Seq = list[tuple[int, int, dict[str, int]]]  # (window total, fast total, fast per host)


@st.composite
def flows(draw: st.DrawFn) -> Seq:
    """Plateaus of (window, last second) over four hosts: calm, bursts, one loud host."""
    out: Seq = []
    for _ in range(draw(st.integers(1, 8))):
        fast = draw(st.integers(0, 3000))
        slow = draw(st.integers(fast, fast * 10 + 800))
        weights = draw(st.lists(st.integers(0, 9), min_size=4, max_size=4))
        if not any(weights):
            weights[0] = 1
        hosts = {h: fast * w // sum(weights) for h, w in zip(HOSTS, weights, strict=True)}
        hosts["h0"] += fast - sum(hosts.values())
        out += [(slow, fast, hosts)] * draw(st.integers(1, 20))
    return out


def run(config: MonitorConfig, seq: Seq) -> list[Evaluation]:
    m = warm_monitor(config)
    return [
        m.observe(DAY0 + 1000 + i * TICK, s, even(s), fast_total=f, fast_hosts=h)
        for i, (s, f, h) in enumerate(seq)
    ]


def trips(evals: list[Evaluation], shadow: bool = False) -> list[tuple[int, str]]:
    return [(t.at_ms, t.cause) for e in evals for t in (e.shadow_trips if shadow else e.trips)]


PROPS = settings(max_examples=60, deadline=None)
ALL_ON = MonitorConfig(max_orders=20_000, max_host_share=0.5, max_rate=1500)


class TestProperties:
    @PROPS
    @given(flows(), st.sampled_from([True, frozenset(FAST_CAUSES), frozenset({BASELINE_FAST})]))
    def test_shadow_trips_when_enforcing_would(
        self, seq: Seq, shadow: frozenset[str] | bool
    ) -> None:
        """A shadowed fast rule would have tripped at exactly the ticks it trips enforcing."""
        config = replace(ALL_ON, shadow=shadow)
        enforcing = trips(run(ALL_ON, seq))
        shadowed = run(config, seq)
        assert trips(shadowed, shadow=True) == [(t, c) for t, c in enforcing if config.is_shadow(c)]
        assert trips(shadowed) == [(t, c) for t, c in enforcing if not config.is_shadow(c)]

    @PROPS
    @given(flows())
    def test_fast_share_and_baseline_never_trip_below_their_floor(self, seq: Seq) -> None:
        """No baseline_fast or host_share_fast trip on a last second under fast_min_orders."""
        for ev in run(ALL_ON, seq):
            for t in ev.trips:
                if t.cause in (BASELINE_FAST, HOST_SHARE_FAST):
                    assert ev.fast_total is not None and ev.fast_total >= CFG.fast_min_orders

    @PROPS
    @given(flows())
    def test_fast_window_never_changes_what_is_learned(self, seq: Seq) -> None:
        """The baseline learns from the window alone: any last-second counts, same baseline."""
        m1, m2 = warm_monitor(ALL_ON), warm_monitor(ALL_ON)
        for i, (s, f, h) in enumerate(seq):
            now = DAY0 + 1000 + i * TICK
            m1.observe(now, s, even(s), fast_total=f, fast_hosts=h)
            m2.observe(now, s, even(s), fast_total=0, fast_hosts=even(0))
        assert m1.baseline.global_ == m2.baseline.global_
        assert m1.baseline.profile == m2.baseline.profile

    @PROPS
    @given(st.lists(st.integers(0, 640), min_size=1, max_size=100))
    def test_last_seconds_within_the_line_never_trip_fast(self, fast: list[int]) -> None:
        """A node whose every second stays at or under 8x its 80/s trips no fast rule."""
        seq: Seq = [(800, f, even(f)) for f in fast]
        assert [c for _, c in trips(run(CFG, seq)) if c in FAST_CAUSES] == []

    @PROPS
    @given(st.integers(1, 20))
    def test_sustained_breach_trips_exactly_once(self, ticks: int) -> None:
        """A fast breach that lasts trips once, at its second tick, however long it lasts."""
        seq: Seq = [(800, 2000, even(2000))] * (ticks + 1)
        got = [(t - DAY0 - 1000) // TICK for t, c in trips(run(CFG, seq)) if c == BASELINE_FAST]
        assert got == [1]


def test_slow_rules_untouched_by_the_fast_window() -> None:
    """The slow rules' trips are the same with the fast rules on or off."""
    seq: Seq = [(800, 80, even(80))] * 20 + [(5000, 500, even(500))] * 120
    slow_on = {BASELINE, HOST_SHARE, MAX_ORDERS}
    on = [x for x in trips(run(ALL_ON, seq)) if x[1] in slow_on]
    off = replace(ALL_ON, fast_multiplier=None, fast_host_share=False, max_rate_auto=False)
    assert on == trips(run(off, seq)) != []
