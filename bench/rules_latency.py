"""Time from a flood's onset to the trip, old rules (the window rules alone) against new
(the fast rules beside them), at production settings: 10 s windows, a 100 ms tick.

Virtual time through `backtest.replay`: the same `SlidingWindow`s and `Monitor` the
aggregator runs, on the same 100 ms grid, so these are the live decisions exactly (the live
equality is tests/live/test_rules_fast_live.py). Eight hosts flush every 100 ms, each at its own
phase, Poisson counts at 10 orders/s per host (a node of 80 orders/s) with a baseline learned
at that level, 20 s of normal flow, then a flood of k x the node's rate: spread evenly (every
host at k x) or on one host (it sends the whole excess). Both configurations run host share
at 0.5, as the simulated days of bench/anomaly.py do. "Let through": orders the node sent
from the onset to the tripping evaluation; the kill's propagation to every host adds its own
(docs/PERFORMANCE.md) at the flood's rate.

Writes the chart to docs/rules-latency.svg (matplotlib, the `bench` extra) and returns the
figures and a Markdown table for docs/ANOMALY.md.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.backtest import FlowEvent, replay
from kstest.baselines import learned_baseline

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
PER_HOST = 10.0
MULTIPLES = (2, 5, 10, 20, 100)
SEEDS = 5
T0 = 1_343_827_800_000  # 09:30 New York on the Knight day
NORMAL_MS, FLOOD_MS = 20_000, 60_000
NEW = MonitorConfig(max_host_share=0.5)
OLD = replace(NEW, fast_multiplier=None, fast_host_share=False, max_rate_auto=False)
CHART = Path(__file__).resolve().parent.parent / "docs" / "rules-latency.svg"


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:
        return max(round(rng.gauss(lam, math.sqrt(lam))), 0)
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k, p = k + 1, p * rng.random()
    return k


def flow(k: float, one_host: bool, seed: int) -> list[FlowEvent]:
    rng = random.Random(seed)
    onset = T0 + NORMAL_MS
    excess = (k - 1) * PER_HOST * len(HOSTS)
    events = []
    for i, h in enumerate(HOSTS):
        for t in range(T0 + 10 * i, onset + FLOOD_MS, 100):
            rate = PER_HOST
            if t >= onset:
                rate = PER_HOST + excess if one_host and h == "or-03" else PER_HOST
                rate = rate if one_host else k * PER_HOST
            events.append(FlowEvent(t, h, _poisson(rng, rate * 0.1)))
    return events


def first_trip(config: MonitorConfig, events: list[FlowEvent]) -> tuple[int, str, int] | None:
    """(ms from onset to the trip, cause, orders sent from onset to it), or None."""
    onset = T0 + NORMAL_MS
    baseline = learned_baseline(config, PER_HOST * len(HOSTS), T0).to_dict()
    result = replay(events, config, rearm_after_ms=None, baseline=baseline)
    trips = [t for t in result.trips if not t.shadow]
    if not trips:
        return None
    at = trips[0].at_ms
    sent = sum(e.count for e in events if onset <= e.ts_ms <= at)
    return at - onset, trips[0].cause, sent


def cell(config: MonitorConfig, k: float, one_host: bool) -> dict[str, Any]:
    runs = [first_trip(config, flow(k, one_host, seed)) for seed in range(SEEDS)]
    tripped = [r for r in runs if r is not None]
    if len(tripped) < len(runs):
        return {"tripped": f"{len(tripped)}/{len(runs)}", "ms": None, "orders": None, "cause": ""}
    return {
        "tripped": f"{len(tripped)}/{len(runs)}",
        "ms": statistics.median(r[0] for r in tripped),
        "max_ms": max(r[0] for r in tripped),
        "orders": round(statistics.median(r[2] for r in tripped)),
        "cause": ",".join(sorted({r[1] for r in tripped})),
    }


def _fmt(c: dict[str, Any]) -> str:
    if c["ms"] is None:
        return f"no trip in {FLOOD_MS // 1000} s ({c['tripped']} tripped)"
    return f"{c['ms'] / 1000:.1f} s, {c['orders']:,} orders (`{c['cause']}`)"


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "killswitch"  # stable ids: the file diffs cleanly
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    ceiling = FLOOD_MS / 1000
    for ax, mode in zip(axes, ("spread", "one_host"), strict=True):
        for name, style in (("old", "o--"), ("new", "s-")):
            ys = [
                (c["ms"] / 1000 if c["ms"] is not None else ceiling)
                for c in (results[mode][name][str(k)] for k in MULTIPLES)
            ]
            label = "window rules only (old)" if name == "old" else "with the fast rules (new)"
            ax.plot(MULTIPLES, ys, style, label=label)
        ax.axhline(ceiling, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(MULTIPLES, [f"{k}x" for k in MULTIPLES])
        ax.set_xlabel("flood, x the node's baseline rate")
        ax.set_title("spread evenly over 8 hosts" if mode == "spread" else "on one host")
        ax.grid(True, which="both", lw=0.3)
    axes[0].set_ylabel(f"onset to trip, s (top line: no trip in {ceiling:g} s)")
    axes[0].legend(loc="lower left")
    fig.suptitle("Time to trip at production settings (10 s window, 80 orders/s baseline)")
    fig.tight_layout()
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)


def run() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for mode in ("spread", "one_host"):
        results[mode] = {
            name: {str(k): cell(cfg, k, mode == "one_host") for k in MULTIPLES}
            for name, cfg in (("old", OLD), ("new", NEW))
        }
    rows = [
        "| flood | spread evenly: old rules | spread evenly: new rules | one host: old rules "
        "| one host: new rules |",
        "|---|---|---|---|---|",
    ]
    for k in MULTIPLES:
        cells = [
            _fmt(results[m][n][str(k)]) for m in ("spread", "one_host") for n in ("old", "new")
        ]
        rows.append(f"| {k}x | " + " | ".join(cells) + " |")
    results["table"] = rows
    chart(results, CHART)
    results["chart"] = str(CHART.relative_to(CHART.parent.parent))
    return results
