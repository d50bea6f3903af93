"""The registry of trip rules: a rule is one object in one module and one entry in a tuple.

A rule defined here, in the test only, is passed to a `Monitor` in a registry of its own and
trips, holds, shadows and shows with no edit to the product; and every registered rule has
what the rest of the product needs of it (a cause, its settings, a view).
"""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from killswitch.core.rules import readings
from killswitch.core.rules.anomaly import Monitor
from killswitch.core.rules.config import (
    BASELINE,
    BASELINE_FAST,
    CAUSES,
    FAST_CAUSES,
    HOST_SHARE,
    RUNAWAY,
    SETTINGS,
    MonitorConfig,
)
from killswitch.core.rules.registry import RULES, by_cause
from killswitch.core.rules.rule import UNITS, Instant, Reading, Rule
from killswitch.core.settings.options import RULE_GROUP, RULE_VERBS, option, options_of
from killswitch.view.ruleview import decode_view, rule_lines, view_fields

T0 = 1_700_000_000_000
TICK = 100
CROWD = "crowd"


class Crowd(Rule):
    """A toy rule: more than `most` hosts sending in the window, held for two windows."""

    cause = CROWD
    options = ("window",)

    def __init__(self, most: int = 3) -> None:
        self.most = most

    def enabled(self, cfg: MonitorConfig) -> bool:
        return True

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        sending = sum(1 for v in at.hosts.values() if v > 0)
        reading = Reading(CROWD, True, sending > self.most, float(sending), float(self.most))
        if reading.breach:
            reading.detail = f"{sending} hosts sent orders, at most {self.most} may"
        return reading

    def hold(self, cfg: MonitorConfig) -> tuple[int, int]:
        return cfg.window_ms, 2

    def view(self, cfg: MonitorConfig) -> dict[str, str]:
        return {"crowd_most": str(self.most)}


# Only the toy rule: the product's rules are off unless a test registers them too.
QUIET = MonitorConfig(max_orders=None, baseline_multiplier=None, runaway_growth=None)
# Every product rule on.
ALL_ON = MonitorConfig(max_orders=1000, max_host_share=0.5, max_rate=100.0)


def hosts(n: int) -> dict[str, int]:
    return {f"h{i}": 10 for i in range(n)}


def run(monitor: Monitor, counts: list[int]) -> list[tuple[int, list[str], list[str]]]:
    """Observe one tick per entry (that many hosts sending); (tick, trips, shadow trips)."""
    out = []
    for i, n in enumerate(counts):
        ev = monitor.observe(T0 + i * TICK, 10 * n, hosts(n))
        out.append((i, [t.cause for t in ev.trips], [t.cause for t in ev.shadow_trips]))
    return out


def tripped(rows: list[tuple[int, list[str], list[str]]]) -> list[int]:
    return [i for i, trips, _ in rows if CROWD in trips]


class TestARuleOfTheTestsOwn:
    def test_trips_with_its_own_cause(self) -> None:
        """Registered in a registry passed to the Monitor, the toy rule trips naming itself."""
        monitor = Monitor(QUIET, rules=(Crowd(),))
        ev = None
        for i in range(150):  # 15 s of four hosts against a 10 s window held for two
            ev = monitor.observe(T0 + i * TICK, 40, hosts(4))
            if ev.trips:
                break
        assert ev is not None and ev.trip is not None
        assert ev.trip.cause == CROWD
        assert ev.trip.detail == "4 hosts sent orders, at most 3 may"
        assert (ev.trip.value, ev.trip.limit) == (4.0, 3.0)

    def test_its_hold_is_honoured(self) -> None:
        """It trips once its breach lasted its own hold (a window), once per breach."""
        rows = run(Monitor(QUIET, rules=(Crowd(),)), [4] * 250)
        window_ticks = QUIET.window_ms // TICK
        assert tripped(rows) == [window_ticks]

    def test_a_calm_tick_resets_it(self) -> None:
        """A breach broken by a calm evaluation starts over, as for any held rule."""
        half = QUIET.window_ms // TICK // 2
        rows = run(Monitor(QUIET, rules=(Crowd(),)), ([4] * half + [2]) * 6)
        assert tripped(rows) == []

    def test_beside_the_product_rules_in_registry_order(self) -> None:
        """Appended to the product's registry, it is judged after their rules, in order."""
        cfg = MonitorConfig(max_orders=30, baseline_multiplier=None, runaway_growth=None)
        monitor = Monitor(cfg, rules=(*RULES, Crowd()))
        ev = monitor.observe(T0, 40, hosts(4))
        assert [r.cause for r in ev.rules] == [*cfg.causes, CROWD]
        assert [t.cause for t in ev.trips] == ["max_orders"]  # the cap trips at once

    def test_the_product_registry_does_not_know_it(self) -> None:
        """The default Monitor judges only the registered rules: the toy one is the test's."""
        assert CROWD not in {r.cause for r in Monitor(QUIET).rules}
        rows = run(Monitor(QUIET), [4] * 250)
        assert all(not trips and not shadow for _, trips, shadow in rows)

    def test_shadow_all_shadows_it(self) -> None:
        """`shadow=True` makes it report only, like every other rule."""
        rows = run(Monitor(replace(QUIET, shadow=True), rules=(Crowd(),)), [4] * 250)
        assert tripped(rows) == []
        assert [i for i, _, shadow in rows if CROWD in shadow] == [QUIET.window_ms // TICK]

    def test_warning_levels_and_status(self) -> None:
        """Its value against its limit drives the warning levels and its published status."""
        monitor = Monitor(QUIET, rules=(Crowd(most=4),))
        ev = monitor.observe(T0, 30, hosts(3))
        status = ev.rule(CROWD)
        assert status is not None
        assert (status.value, status.limit, status.level) == (3.0, 4.0, 75)
        assert status.window_ms == QUIET.window_ms
        assert [w.new for w in ev.warnings] == [75]

    def test_view_and_status_show_it(self) -> None:
        """The view lists it as enforcing with its own field, and `status` shows its line."""
        rules = (Crowd(),)
        ev = Monitor(QUIET, rules=rules).observe(T0, 40, hosts(4))
        fields_ = view_fields(QUIET, ev, rules)
        assert fields_["enforcing"] == CROWD and fields_["shadow"] == ""
        assert fields_["crowd_most"] == "3"
        assert json.loads(fields_["rules"])[0]["unit"] == "orders"
        text = "\n".join(rule_lines(decode_view(fields_)))
        assert "crowd" in text and "value 4" in text and "limit 3" in text

    def test_a_cause_twice_is_refused(self) -> None:
        """A registry naming one cause twice is refused before anything is judged."""
        with pytest.raises(ValueError, match="two rules share a cause"):
            Monitor(QUIET, rules=(Crowd(), Crowd(most=5)))


class TestEveryRegisteredRule:
    def test_its_cause_is_known_in_order(self) -> None:
        """The registry is `CAUSES`, in the same (evaluation) order: a metric label each."""
        assert tuple(r.cause for r in RULES) == CAUSES
        assert by_cause().keys() == set(CAUSES)

    @pytest.mark.parametrize("rule", RULES, ids=lambda r: r.cause)
    def test_its_settings_are_options_of_the_trip_rules(self, rule: Rule) -> None:
        """Each rule names its settings, and each is an option of both rule verbs."""
        assert rule.options
        for name in rule.options:
            o = option(name)
            assert o.group == RULE_GROUP and o.verbs == RULE_VERBS, name
            assert o in options_of("aggregator") and o in options_of("backtest")

    @pytest.mark.parametrize("rule", RULES, ids=lambda r: r.cause)
    def test_it_has_a_view(self, rule: Rule) -> None:
        """Each rule's own view fields are strings, and `status` knows its unit."""
        assert rule.unit in UNITS
        assert rule.enabled(ALL_ON)
        assert all(isinstance(v, str) for v in rule.view(ALL_ON).values())
        ev = Monitor(ALL_ON, rules=(rule,)).observe(T0, 0, {})
        published = json.loads(view_fields(ALL_ON, ev, (rule,))["rules"])
        assert [(e["rule"], e["unit"]) for e in published] == [(rule.cause, rule.unit)]

    def test_the_fast_ones_are_the_configs(self) -> None:
        """The rules that judge the fast window are those the config keeps it for."""
        assert tuple(r.cause for r in RULES if r.fast) == FAST_CAUSES

    def test_what_they_say_of_themselves(self) -> None:
        """The slow rules count breach time over a span; a re-arm after a baseline rule's
        trip teaches the window level (a fast one's rate scaled to the window; runaway's
        window itself), after any other teaches nothing."""
        cfg = MonitorConfig()
        assert [r.cause for r in RULES if r.spans] == [BASELINE, HOST_SHARE]
        taught = {r.cause: r.teaches(cfg, 7.0, 900) for r in RULES}
        assert {c: v for c, v in taught.items() if v is not None} == {
            BASELINE: 7.0,
            BASELINE_FAST: 7.0 * cfg.fast_scale,
            RUNAWAY: 900.0,
        }

    @pytest.mark.parametrize("rule", RULES, ids=lambda r: r.cause)
    def test_readings_hold_is_the_rules(self, rule: Rule) -> None:
        """`readings.hold` by name is the rule's own hold."""
        for cfg in (MonitorConfig(), MonitorConfig(fast_breach_ms=0, breach_windows=3)):
            assert readings.hold(cfg, rule.cause) == rule.hold(cfg)

    def test_each_setting_is_a_config_field(self) -> None:
        """Every option of the trip rules sets the `MonitorConfig` field of its name (`_ms`
        for a duration), and every field but the derived rate switch is one of them."""
        names = {f.name for f in fields(MonitorConfig)}
        assert set(SETTINGS) <= names
        assert names - set(SETTINGS) == {"max_rate_auto"}
        for field, (name, per) in SETTINGS.items():
            assert per == (1000 if field.endswith("_ms") else 1), (field, name)


class TestAViewPublishedBeforeUnits:
    @pytest.mark.parametrize(
        ("rule", "value", "limit", "shown"),
        [
            ("host_share", 0.6, 0.5, "value top host 60%"),
            ("runaway", 0.2, 0.15, "value +20%/step"),
            ("max_orders", 40.0, 30.0, "value 40 "),
        ],
    )
    def test_shows_as_before(self, rule: str, value: float, limit: float, shown: str) -> None:
        """A rule entry without a unit (an earlier aggregator's view) is shown as it was."""
        entry = {"rule": rule, "active": True, "value": value, "limit": limit, "level": 0}
        view = decode_view({"node_orders": "40", "rules": json.dumps([entry])})
        assert shown in "\n".join(rule_lines(view))
