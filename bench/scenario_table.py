"""The scenario library against three rule sets, at production settings in virtual time:
the static cap alone, the baseline as earlier releases learned it, and the guarded one.

Every scenario of `killswitch.core.rules.scenarios` is replayed through `backtest.replay` (the
aggregator's `Monitor` on its 100 ms grid, 10 s windows), seed 0, flushes every 100 ms.
For an incident: onset to the first trip, the orders the node sent from the onset to it,
and the node's rate then as a multiple of its normal. For normal days: a month (21 trading
days, each starting from the previous day's baseline, re-armed a minute after a trip) at a
1 s tick with counts per second, and the false trips per day. The rule sets all carry the
aggregator's derived backstop cap (1,000 orders/s per host: 80,000 per window) and, for
the baseline rule sets, `--max-host-share 0.5`, as the other anomaly figures do.

`./dev bench anomaly` prints this table (docs/ANOMALY.md holds its last run);
`.venv/bin/python -m bench scenario_table` runs it alone (a few minutes on two cores).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from killswitch.core.rules import scenarios as sc
from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.backtest import replay

CAP = 80_000
NEW = MonitorConfig(max_orders=CAP, max_host_share=0.5)
RULE_SETS = {
    "static cap": MonitorConfig(
        max_orders=CAP, baseline_multiplier=None, fast_multiplier=None, runaway_growth=None
    ),
    "earlier baseline": NEW.unguarded(),
    "guarded baseline": NEW,
}
MONTH = 21


def _cell(s: sc.Scenario, o: sc.Outcome, flow: list[Any]) -> str:
    if s.onset_s is None:
        return ""
    if o.detected_s is None:
        onset = s.start_ms + round(s.onset_s * 1000)
        sent = sum(e.count for e in flow if e.ts_ms >= onset)
        minutes = (s.duration_s - s.onset_s) / 60
        return f"no trip in {minutes:g} min ({sent:,} orders)"
    text = f"{o.detected_s:g} s, {o.let_through:,} orders, at {o.multiple:g}x (`{o.cause}`)"
    if s.accepted:
        text += f"; {o.after_accept} after the re-arm"
    return text


def incidents() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for s in sc.incidents():
        flow = sc.events(s, 0)
        out[s.title] = {
            name: _cell(s, sc.run(s, cfg, flow=flow), flow) for name, cfg in RULE_SETS.items()
        }
    return out


def month(config: MonitorConfig) -> list[int]:
    """False trips on each of a month of normal days, each day from the day before's
    baseline (so the time-of-day profile warms up as it would live)."""
    baseline = None
    trips = []
    for day in range(MONTH):
        s = sc.normal_day(day)
        flow = sc.events(s, day, flush_ms=1000)
        result = replay(
            flow,
            config,
            tick_ms=1000,
            baseline=baseline or sc.start_baseline(s, config),
            roster=sc.HOSTS,
        )
        baseline = result.baseline
        trips.append(sum(1 for t in result.trips if not t.shadow))
    return trips


def run() -> dict[str, Any]:
    started = time.perf_counter()
    rows = incidents()
    days = {name: month(cfg) for name, cfg in RULE_SETS.items()}
    names = list(RULE_SETS)
    table = [
        "| scenario | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for title, cells in rows.items():
        table.append(f"| {title} | " + " | ".join(cells[n] for n in names) + " |")
    table.append(
        f"| normal days: false trips per day ({MONTH} days) | "
        + " | ".join(
            f"{statistics.mean(days[n]):.2f} (max {max(days[n])}, {sum(1 for d in days[n] if d)} days with one)"
            for n in names
        )
        + " |"
    )
    for line in table:
        print(line, flush=True)
    return {
        "rule_sets": {n: repr(c) for n, c in RULE_SETS.items()},
        "incidents": rows,
        "normal_days_false_trips": days,
        "table": table,
        "seconds": round(time.perf_counter() - started, 1),
    }
