"""`killswitch demo` end to end, and the pure pieces it and `backtest` are built from:
the what-if monitors, the rule flags, the rule view and the backtest command.

The demo test runs the real command (its own redis-server, eight sidecars, the aggregator);
everything else here needs no server.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from killswitch.cli.rulecli import counts_csv, rule_config
from killswitch.core.enforce.recfmt import Entry
from killswitch.core.rules.anomaly import BASELINE, HOST_SHARE, Monitor, MonitorConfig
from killswitch.core.rules.backtest import FlowEvent
from killswitch.runtime.config import ConfigError, Resolver
from killswitch.sim.demo import COMPRESSED, REALTIME, Scenario
from killswitch.sim.demoreport import render_table
from killswitch.sim.fixsession import FixStats, outcome
from killswitch.sim.whatif import orders_after, per_host_limit, prometheus_alert
from killswitch.view.ruleview import EventLog, decode_view, rule_lines, shadow_banner, view_fields

T0 = 1_343_827_800_000  # 2012-08-01 13:30:00 UTC


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip


def command_lines() -> list[bytes]:
    """Every running process's command line, from /proc (no `ps`: procps is not on every
    fresh Debian)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                out.append((entry / "cmdline").read_bytes())
    return out


class TestDemo:
    @pytest.mark.slow
    def test_demo_json_killswitch_trips_fast_and_per_host_limit_never(self, tmp_path: Path) -> None:
        """`demo --json` exits 0 with one JSON table: killswitch trips within seconds of the
        onset with every host confirming, the per-host limit never trips, the attested open is
        refused naming or-08, the routers cancel their resting orders and report FLAT (none
        left, while the other monitors leave some working), nothing is left running, and
        `--plot` wrote the chart (an SVG with the trip marked and every monitor's bar)."""
        chart = tmp_path / "knight.svg"
        res = run("demo", "--json", "--plot", str(chart))
        assert res.returncode == 0, res.stderr[-3000:]
        doc = json.loads(res.stdout)
        by = {m["monitor"]: m for m in doc["monitors"]}
        assert set(by) == {"per_host_limit", "prometheus_alert", "killswitch"}
        ks = by["killswitch"]
        assert ks["tripped"] and ks["cause"] in (BASELINE, HOST_SHARE)
        assert 0 < ks["acted_after_s"] <= 3.0
        assert ks["confirmed"] == 8 and ks["all_confirmed_after_s"] is not None
        assert by["per_host_limit"]["tripped"] is False
        assert by["per_host_limit"]["orders_after_onset"] == doc["orders_attempted_after_onset"]
        assert ks["orders_after_onset"] < by["per_host_limit"]["orders_after_onset"] / 10
        alert = by["prometheus_alert"]
        assert alert["acted_after_s"] is None or alert["acted_after_s"] > ks["acted_after_s"]
        assert doc["knight"]["minutes"] == 45 and doc["knight"]["parent_orders"] == 212
        assert doc["final_state"] == "KILLED"
        att = doc["attestation"]  # the deploy: or-08 kept the old binary, the open is refused
        assert att["code"] == 4 and list(att["refused"]) == ["or-08"]
        assert att["split"]["odd"]["or-08"] != att["split"]["majority"]
        routers = doc["routers"]
        assert all(r["blocked"] > 0 for r in routers.values())  # every host was stopped
        # Flatten on kill: every router was told, cancelled through the gate and was flat.
        assert ks["flat_hosts"] == 8 and ks["resting_left"] == 0
        assert ks["resting_cancelled"] == sum(r["cancels_sent"] for r in routers.values()) > 0
        assert all(r["flat_epoch"] == ks_epoch(doc) for r in routers.values())
        assert by["per_host_limit"]["resting_left"] > 0 and ks["isolated"] == []
        # or-08's legacy code sends on its FIX session, never asking the gate: its sidecar's
        # gateway let it trade while armed and blocked it after the kill, and no order of it
        # reached the venue that the gate had not allowed before the kill was confirmed.
        fix = doc["fix"]
        assert fix["host"] == "or-08" and fix["logged_on"] and fix["reached_venue"] > 0
        assert fix["blocked"] >= fix["reasons"].get("killed", 0) > 0
        assert fix["reached_venue_after_kill"] == 0 and fix["never_allowed_at_venue"] == 0
        assert fix["reached_venue"] + fix["blocked"] <= fix["sent"]
        # Nothing left behind: no sidecar or redis-server of the demo still runs.
        assert not [c for c in command_lines() if b"ks-demo-" in c]
        # Within 120 columns: the progress lines (stderr with --json) and the table.
        from killswitch.sim.demoreport import render_table

        text = res.stderr.splitlines() + render_table(doc).splitlines()
        assert max(len(line) for line in text) <= 120, max(text, key=len)
        # the attested open's refusal names the odd host (it once ended in a bare colon)
        refusal = next(line for line in res.stderr.splitlines() if "09:30 open" in line)
        assert refusal.endswith("or-08 runs another release"), refusal
        svg = chart.read_text()
        assert svg.lstrip().startswith("<?xml") and "</svg>" in svg
        for text in ("killswitch trips (+", "per-host limit", "Prometheus-style alert",
                     "or-08 (legacy path)", "orders let through after the onset"):  # fmt: skip
            assert text in svg, text
        series = doc["series"]
        assert series["trip_s"] is not None and set(series["attempted_per_s"]) == set(
            doc["routers"]
        )

    @pytest.mark.slow
    def test_demo_on_haunted_isolate_kills_the_haunted_host_alone_first(self) -> None:
        """`demo --on-haunted isolate` isolates or-08 alone (a scoped kill) before anything
        else happens to the node, and its router is told, cancels and is blocked `killed`."""
        res = run("demo", "--json", "--on-haunted", "isolate")
        assert res.returncode == 0, res.stderr[-3000:]
        doc = json.loads(res.stdout)
        ks = {m["monitor"]: m for m in doc["monitors"]}["killswitch"]
        assert doc["scenario"]["on_haunted"] == "isolate"
        assert ks["isolated"] == ["or-08"] and 0 < ks["isolated_after_s"] <= 3.0
        if ks["tripped"]:  # the rollback may still trip the node rules later
            assert ks["acted_after_s"] > ks["isolated_after_s"]
        r8 = doc["routers"]["or-08"]
        assert r8["resting_at_kill"] is not None and r8["cancels_sent"] >= r8["resting_at_kill"]
        assert r8["blocked"] > 0
        fix = doc["fix"]  # its FIX session is blocked by the host's own gateway as well
        assert fix["blocked"] > 0 and fix["reached_venue_after_kill"] == 0


def ks_epoch(doc: dict[str, Any]) -> int:
    """The node's epoch after the demo's one kill: the arm's epoch plus one."""
    return int(doc["armed_epoch"]) + 1


class TestScenario:
    def test_legacy_host_stays_under_its_own_cap_and_open_is_3x(self) -> None:
        """The haunted host never exceeds the per-host cap; the open peaks at 3x pre-open."""
        s = Scenario()
        rates = [s.rate("or-08", t / 10) for t in range(int(s.end * 10))]
        assert max(rates) * 1.1 < 100  # one extra flush in a window still fits the cap
        assert max(s.rate("or-01", t / 10) for t in range(int(s.legacy_at * 10))) == 3 * s.pre

    def test_only_the_haunted_host_sends_on_fix_and_only_on_the_legacy_path(self) -> None:
        """The FIX session carries or-08's legacy flow alone, from the onset on; what goes
        through the gate and over FIX adds up to the scenario's rate for every host."""
        s = Scenario()
        for t in (x / 10 for x in range(int(s.end * 10))):
            for h in ("or-01", "or-08"):
                assert s.gate_rate(h, t) + s.fix_rate(h, t) == s.rate(h, t)
                assert s.gate_rate(h, t) > 0  # the normal flow never stops asking the gate
            assert s.fix_rate("or-01", t) == 0
            assert (s.fix_rate("or-08", t) > 0) == (t >= s.legacy_at)

    def test_realtime_is_the_same_day_four_times_as_long_at_production_windows(self) -> None:
        """`--realtime` runs the same rates on a 4x timeline (about two minutes) with 10 s
        windows and the fast rules on; the default run is the compressed one."""
        s, r = COMPRESSED.scenario, REALTIME.scenario
        assert 100 <= r.end <= 150
        assert [r.rate("or-08", 4 * t / 10) for t in range(290)] == [
            s.rate("or-08", t / 10) for t in range(290)
        ]
        assert (COMPRESSED.rules.window_ms, REALTIME.rules.window_ms) == (1000, 10_000)
        assert "baseline_fast" in REALTIME.rules.causes
        assert "baseline_fast" not in COMPRESSED.rules.causes
        assert (COMPRESSED.compression, REALTIME.compression) == (10.0, 1.0)


def _doc(compression: float, on_haunted: str = "kill") -> dict[str, Any]:
    monitor = {"acted_after_s": 1.5, "orders_after_onset": 10, "detail": "d", "tripped": True,
               "resting_left": 1234}  # fmt: skip
    return {
        "scenario": {
            "compression": compression, "window_s": 1.0 if compression > 1 else 10.0,
            "fast_window_s": None if compression > 1 else 1.0, "hosts": ["a", "b"],
            "haunted": "b", "onset_s": 10, "rollback_s": 17, "baseline_seed": "seed",
            "per_host_cap": 100, "rest_s": 2.0, "on_haunted": on_haunted,
        },
        "monitors": [
            {**monitor, "monitor": "per_host_limit"},
            {**monitor, "monitor": "prometheus_alert"},
            {**monitor, "monitor": "killswitch", "cause": "host_share", "confirmed": 8,
             "kill_to_all_confirmed_ms": 3, "resting_left": 0, "resting_cancelled": 260,
             "flat_hosts": 2,
             "isolated": ["b"] if on_haunted == "isolate" else [], "isolated_after_s": 1.25},
        ],
        "knight": {"minutes": 45, "orders": "over 4,000,000", "parent_orders": 212,
                   "shares": 397_000_000, "loss_usd": "over $440 million"},
        "orders_attempted_after_onset": 100,
    }  # fmt: skip


class TestDemoReport:
    def test_compressed_table_says_so_and_what_it_means_in_real_time(self) -> None:
        """The default table names the compression and scales its figures to production."""
        text = " ".join(render_table(_doc(10.0)).split())  # wrapped within 120 columns
        assert "TIME-COMPRESSED 10x" in text
        assert "stand for production's 10 s" in text and "about 15 s" in text
        assert "--realtime" in text

    def test_realtime_table_says_real_time(self) -> None:
        """The --realtime table says its figures are real time and claims no compression."""
        text = render_table(_doc(1.0))
        assert "REAL TIME" in text and "COMPRESSED" not in text

    def test_table_shows_resting_orders_left_and_the_flat_proof(self) -> None:
        """The table has a resting-left column per monitor and says how many resting orders
        the routers cancelled and how many hosts reported FLAT."""
        lines = render_table(_doc(10.0)).splitlines()
        header = next(line for line in lines if line.startswith("monitor"))
        assert "resting left" in header
        assert sum("1,234" in line for line in lines) == 2  # the two monitors that only watch
        ks = next(line for line in lines if line.startswith("killswitch (node-wide)"))
        columns = len(header) - len("what happened")
        assert ks[:columns].split()[-1] == "0"  # killswitch's routers left nothing resting
        flat = " ".join(" ".join(lines).split())  # the detail column wraps within 120 columns
        assert "cancelled 260 resting orders" in flat and "2/2 reported FLAT" in flat
        assert max(len(line) for line in lines) <= 120

    def test_isolate_table_names_the_option_and_the_isolated_host(self) -> None:
        """With --on-haunted isolate the killswitch row says so and names the isolated host
        and when; the default run names neither."""
        text = " ".join(render_table(_doc(10.0, "isolate")).split())  # the detail column wraps
        assert "killswitch (--on-haunted isolate)" in text
        assert "isolated b at +1.25 s (a scoped kill)" in text
        plain = render_table(_doc(10.0))
        assert "isolate" not in plain
        doc = _doc(10.0, "isolate")
        doc["monitors"][-1]["tripped"] = False  # isolated, the node never killed
        text = " ".join(render_table(doc).split())  # the detail column wraps
        assert "the other hosts traded on" in text and "cancelled 260 resting orders" in text
        assert "reported FLAT" not in text  # the flat proof is a node kill's


class TestFixOutcome:
    def test_an_order_at_the_venue_counts_late_unless_allowed_before_the_confirmation(
        self,
    ) -> None:
        """Only an order the gate allowed before the host confirmed the kill may be at the
        venue: one allowed at or after it, or never allowed at all, counts as late."""
        ms = 1_000
        entries = [
            _rec("pp-1", "allow", ms - 1), _rec("pp-2", "allow", ms), _rec("pp-3", "block", ms + 1),
            _rec("or-08-1", "allow", ms - 5, source="line"),
        ]  # fmt: skip
        stats = FixStats(sent=4, acked=1, blocked=1, reasons={"killed": 1}, logged_on=True)
        venue = [(0, b"pp-1")]
        ok = outcome(stats, venue, entries, ms)
        assert ok["reached_venue_after_kill"] == 0 and ok["never_allowed_at_venue"] == 0
        late = outcome(stats, [*venue, (0, b"pp-2"), (0, b"pp-3"), (0, b"or-08-1")], entries, ms)
        assert late["reached_venue_after_kill"] == 3 and late["never_allowed_at_venue"] == 2
        assert outcome(stats, venue, entries, None)["reached_venue_after_kill"] is None

    def test_table_has_the_gateway_row(self) -> None:
        """The killswitch rows say what the FIX gateway blocked of the legacy session."""
        doc = _doc(10.0)
        doc["fix"] = {"host": "b", "sent": 1_354, "reached_venue": 121, "blocked": 1_232,
                      "reached_venue_after_kill": 0}  # fmt: skip
        lines = render_table(doc).splitlines()
        text = " ".join(" ".join(lines).split())
        assert "b's legacy code on its FIX session (it never asks the gate): 1,354 orders" in text
        assert "1,232 blocked by the sidecar's FIX gateway; 0 reached the venue after" in text
        assert max(len(line) for line in lines) <= 120


def _rec(oid: str, decision: str, ms: int, source: str = "fix") -> Entry:
    return Entry(t_ns=ms * 1_000_000, node="n", host="b", seq=1, source=source, order_id=oid,
                 symbol="KCG", side="BUY", qty=100, price=0.0, decision=decision, reason="",
                 epoch=1, release="", limits="")  # fmt: skip


def steady(host: str, per_100ms: int, start: int, end: int) -> list[FlowEvent]:
    return [FlowEvent(t, host, per_100ms) for t in range(start, end, 100)]


class TestWhatIf:
    def test_per_host_limit_stops_only_the_host_over_its_cap(self) -> None:
        """A host over its own cap is stopped at the first tick over it; its peers go on."""
        ev = steady("a", 5, T0, T0 + 5000) + steady("b", 20, T0 + 2000, T0 + 5000)
        v = per_host_limit(ev, cap=100, window_ms=1000, onset_ms=T0 + 2000)
        assert v.acted_ms == T0 + 2500  # b: 6 flushes of 20 = 120 > 100 in (1500, 2500]
        assert v.orders_after_onset == 5 * 30 + 20 * 6
        assert "stopped b" in v.detail

    def test_per_host_limit_never_trips_under_the_cap(self) -> None:
        """Everything after the onset counts when no host ever exceeds its cap."""
        ev = steady("a", 9, T0, T0 + 3000) + steady("b", 9, T0, T0 + 3000)
        v = per_host_limit(ev, cap=100, window_ms=1000, onset_ms=T0 + 1000)
        assert v.acted_ms is None and v.orders_after_onset == orders_after(ev, T0 + 1000)

    def test_alert_needs_its_for_duration(self) -> None:
        """The alert fires `for` after the first evaluation over the threshold, not before."""
        ev = steady("a", 1, T0, T0 + 10_000) + steady("a", 100, T0 + 10_000, T0 + 30_000)
        v = prometheus_alert(ev, 500.0, T0 + 10_000, scrape_ms=1000, range_ms=2000, for_ms=3000)
        assert v.acted_ms == T0 + 11_000 + 3000
        assert v.orders_after_onset == 100 * 41  # flushes at +10.0 s .. +14.0 s, inclusive
        quiet = prometheus_alert(ev, 5000.0, T0, scrape_ms=1000, range_ms=2000, for_ms=0)
        assert quiet.acted_ms is None and "never fired" in quiet.detail


class TestRuleFlags:
    @pytest.mark.parametrize(
        ("flags", "env", "field"),
        [
            ({"max_host_share": 1.5}, {}, "max-host-share"),
            ({"shadow": "baseline,bogus"}, {}, "shadow"),
            ({"warmup": -1}, {}, "warmup"),
            ({"baseline_multiplier": "1"}, {}, "baseline-multiplier"),
            ({}, {"KILLSWITCH_BREACH_WINDOWS": "0"}, "breach-windows"),
            ({}, {"KILLSWITCH_HAUNTED_RATIO": "0.5"}, "haunted-ratio"),
            ({"half_life": 0}, {}, "half-life"),
            ({"min_orders": -3}, {}, "min-orders"),
            ({"fast_multiplier": "0.5"}, {}, "fast-multiplier"),
            ({"fast_window": 0}, {}, "fast-window"),
            ({}, {"KILLSWITCH_FAST_BREACH": "-1"}, "fast-breach"),
            ({"fast_min_orders": -1}, {}, "fast-min-orders"),
            ({"fast_host_share": "maybe"}, {}, "fast-host-share"),
            ({"max_rate": "fast"}, {}, "max-rate"),
            ({}, {"KILLSWITCH_MAX_RATE": "-5"}, "max-rate"),
            ({"shadow": "baseline_fast,nope"}, {}, "shadow"),
        ],
    )
    def test_bad_values_name_the_field(
        self, flags: dict[str, Any], env: dict[str, str], field: str
    ) -> None:
        """A bad rule setting, from a flag or the environment, is refused naming its flag."""
        with pytest.raises(ConfigError, match=f"^{field}: "):
            rule_config(Resolver(flags, env=env))

    def test_precedence_and_conversions(self) -> None:
        """Flag over environment over config file; seconds become ms; 'all' and 'off' work."""
        r = Resolver(
            {"window": 2.0, "warmup": None},
            env={"KILLSWITCH_WARMUP": "7", "KILLSWITCH_WINDOW": "9"},
            config={"aggregator": {"warmup": 99, "shadow": "all", "baseline_multiplier": "off"}},
            section="aggregator",
        )
        c = rule_config(r)
        assert (c.window_ms, c.warmup_ms, c.shadow, c.baseline_multiplier) == (
            2000, 7000, True, None,
        )  # fmt: skip

    @pytest.mark.parametrize(
        ("flags", "want"),
        [
            ({}, (8.0, 1000, 100, None, False, True)),
            ({"max_rate": "auto"}, (8.0, 1000, 100, None, True, True)),
            (
                {
                    "fast_multiplier": "off",
                    "fast_window": 0.5,
                    "fast_breach": 0,
                    "max_rate": "off",
                    "fast_host_share": "off",
                },
                (None, 500, 0, None, False, False),
            ),
            ({"max_rate": "1200", "fast_multiplier": "12"}, (12.0, 1000, 100, 1200.0, False, True)),
        ],
    )
    def test_fast_rule_flags(self, flags: dict[str, Any], want: tuple[Any, ...]) -> None:
        """The fast rules' flags resolve to the config: off, numbers, auto and on/off."""
        c = rule_config(Resolver(flags, env={}))
        got = (c.fast_multiplier, c.fast_window_ms, c.fast_breach_ms, c.max_rate,
               c.max_rate_auto, c.fast_host_share)  # fmt: skip
        assert got == want


class TestRuleView:
    def test_share_rules_spelled_out_for_status_match_the_rules(self) -> None:
        """`status` formats the share rules as percentages without importing the rules."""
        from killswitch.core.rules.config import SHARE_CAUSES
        from killswitch.view.ruleview import SHARE_RULES

        assert SHARE_RULES == SHARE_CAUSES

    def test_fast_rules_in_view_and_status_lines(self) -> None:
        """The view names the fast window and each rule's window; status shows both lines."""
        cfg = MonitorConfig(max_orders=5000, max_host_share=0.5, max_rate_auto=True)
        m = Monitor(cfg, roster=["a", "b"])
        ev = m.observe(T0, 800, {"a": 400, "b": 400}, fast_total=90, fast_hosts={"a": 45, "b": 45})
        view = decode_view({"node_orders": "800", "fast_orders": "90", **view_fields(cfg, ev)})
        assert (view["fast_window_s"], view["max_rate"]) == (1.0, 1500.0)
        windows = {r["rule"]: r["window_s"] for r in view["rules"]}
        assert windows == {"max_orders": 10, "baseline": 10, "host_share": 10, "max_rate": 1,
                           "baseline_fast": 1, "host_share_fast": 1, "runaway": 10}  # fmt: skip
        text = "\n".join(rule_lines(view))
        assert "fast window 1s: node 90 orders" in text
        assert re.search(r"host_share_fast +1s", text) and "top host 50%" in text

    def test_view_round_trips_and_status_lines_are_loud_about_shadow(self) -> None:
        """The published view decodes to rules and haunted hosts; shadow gets a loud banner."""
        cfg = MonitorConfig(
            window_ms=1000, warmup_ms=0, min_orders=10, shadow=True, runaway_growth=None
        )
        m = Monitor(cfg, roster=["a", "b", "c"])
        for i in range(20):
            m.observe(T0 + i * 100, 30, {"a": 10, "b": 10, "c": 10})
        ev = m.observe(T0 + 2000, 500, {"a": 480, "b": 10, "c": 10})
        view = decode_view({"node_orders": "500", **view_fields(cfg, ev)})
        assert view["shadow"] == "baseline"
        assert [r["rule"] for r in view["rules"]] == ["baseline"]
        assert view["haunted"][0]["host"] == "a"
        text = "\n".join(shadow_banner(view) + rule_lines(view))
        assert "SHADOW MODE" in text and "NOT ENFORCING" in text and "HAUNTED HOST a" in text

    def test_events_once_per_crossing(self) -> None:
        """HAUNTED_HOST is logged when a host becomes haunted, not on every tick it stays so."""
        cfg = MonitorConfig(window_ms=1000, warmup_ms=0, min_orders=10)
        m, log = Monitor(cfg), EventLog(cfg.window_ms)
        names = []
        for i in range(30):
            ev = m.observe(T0 + i * 100, 500, {"a": 480, "b": 10, "c": 10})
            names += [e for _, e, _ in log.events(ev)]
        assert names.count("HAUNTED_HOST") == 1

    def test_accepted_baseline_is_logged_on_rearm(self) -> None:
        """BASELINE_ACCEPTED is logged once, at the first armed tick after a re-arm that taught the baseline."""
        cfg = MonitorConfig(window_ms=1000, warmup_ms=0, min_orders=10, half_life_ms=4500)
        m, log = Monitor(cfg), EventLog(cfg.window_ms)
        events, killed_at = [], None
        for i in range(80):
            now = T0 + i * 100
            if killed_at is not None and i == killed_at + 10:
                m.reset(now)  # two approvers re-arm it a second later
                killed_at = None
            ev = m.observe(now, 30 if i < 30 else 600, {}, armed=killed_at is None)
            events += [(i, name, fields) for _, name, fields in log.events(ev)]
            if ev.trips:
                assert killed_at is None and i == 40  # the breach must hold one window
                killed_at = i
        [(i, _, fields)] = [e for e in events if e[1] == "BASELINE_ACCEPTED"]
        assert i == 50 and fields["value"] == 600 and fields["trip_at_ms"] == T0 + 4000
        assert "600 orders per window is now normal" in fields["reason"]


class TestBacktestCommand:
    def test_backtest_reports_trips_as_text_and_json(self, tmp_path: Path) -> None:
        """`backtest --counts` prints every trip; `--json` gives the same as one object."""
        flows = {
            "or-01": [(f"{t}-0", {"a": "1", "b": "0"}) for t in range(T0, T0 + 10_000, 100)],
            "or-02": [(f"{t}-0", {"a": "1", "b": "0"}) for t in range(T0, T0 + 6000, 100)]
            + [(f"{t}-0", {"a": "90", "b": "5"}) for t in range(T0 + 6000, T0 + 10_000, 100)],
        }
        csv = tmp_path / "counts.csv"
        csv.write_text(counts_csv(flows, attempted=False))
        flags = ["--window", "1", "--warmup", "2", "--half-life", "4.5", "--min-orders", "20"]
        text = run("backtest", "--counts", str(csv), *flags)
        assert text.returncode == 0, text.stderr
        assert "TRIP" in text.stdout and "baseline" in text.stdout
        res = run("backtest", "--counts", str(csv), "--json", *flags)
        doc = json.loads(res.stdout)
        assert [t["cause"] for t in doc["trips"]] == ["baseline"]
        assert T0 + 6000 < doc["trips"][0]["at_ms"] <= T0 + 8000
        bad = run("backtest", "--counts", str(csv), "--max-host-share", "2")
        assert bad.returncode == 2 and "max-host-share" in bad.stderr
        missing = run("backtest", "--counts", str(tmp_path / "nope.csv"))
        assert missing.returncode == 2 and "counts" in missing.stderr

    def test_backtest_from_a_stored_baseline(self, tmp_path: Path) -> None:
        """`--baseline FILE.json` starts the replay warm (a flood trips with no warm-up); a
        missing, non-JSON or malformed file exits 2 naming `baseline`, with no traceback."""
        from kstest.baselines import learned_baseline

        cfg = MonitorConfig()
        flows = {
            h: [(f"{t}-0", {"a": "1" if t < T0 + 20_000 else "20"}) for t in range(T0, T0 + 25_000, 100)]
            for h in ("or-01", "or-02")
        }  # fmt: skip
        csv = tmp_path / "counts.csv"
        csv.write_text(counts_csv(flows, attempted=False))
        base = tmp_path / "base.json"
        base.write_text(json.dumps(learned_baseline(cfg, 20.0, T0).to_dict()))
        cold = json.loads(run("backtest", "--counts", str(csv), "--json").stdout)
        assert cold["trips"] == []  # still warming up
        warm = run("backtest", "--counts", str(csv), "--baseline", str(base), "--json")
        assert warm.returncode == 0, warm.stderr
        [trip] = [t for t in json.loads(warm.stdout)["trips"] if t["cause"] == "baseline_fast"][:1]
        assert T0 + 20_000 < trip["at_ms"] <= T0 + 21_100
        (tmp_path / "bad.json").write_text("{not json")
        (tmp_path / "list.json").write_text("[1, 2]")
        (tmp_path / "fmt.json").write_text('{"format": "v0"}')
        for name in ("nope.json", "bad.json", "list.json", "fmt.json"):
            res = run("backtest", "--counts", str(csv), "--baseline", str(tmp_path / name))
            assert res.returncode == 2 and "baseline" in res.stderr, (name, res.stderr)
            assert "Traceback" not in res.stderr

    def test_help_lists_the_shared_rule_flags(self) -> None:
        """`aggregator --help` and `backtest --help` document the same trip-rule flags."""
        for verb in ("aggregator", "backtest"):
            out = run(verb, "--help").stdout
            for flag in ("--baseline-multiplier", "--breach-windows", "--min-orders",
                         "--warmup", "--max-host-share", "--haunted-ratio", "--shadow",
                         "--max-rate", "--fast-window", "--fast-multiplier", "--fast-breach",
                         "--fast-min-orders", "--fast-host-share"):  # fmt: skip
                assert flag in out, (verb, flag)
