"""One `Monitor.observe()`: microseconds per evaluation at 8 hosts, with every trip rule of
the registry on and with only the static cap, in virtual time (no server, no clock but the
stopwatch, in CPU time: the machine may be shared). The aggregator makes one per tick (10 a
second)."""

from __future__ import annotations

import random
import time
from typing import Any

from killswitch.core.rules.anomaly import Monitor, MonitorConfig

HOSTS = [f"h{i}" for i in range(8)]
TICKS = 3000
REPEATS = 7
ALL_ON = MonitorConfig(max_orders=100_000, max_host_share=0.5, max_rate_auto=True, warmup_ms=0)
CAP_ONLY = MonitorConfig(
    max_orders=100_000, baseline_multiplier=None, fast_multiplier=None, runaway_growth=None
)


def _per_eval_us(config: MonitorConfig) -> dict[str, float]:
    rnd = random.Random(1)
    flows = [{h: rnd.randint(80, 120) for h in HOSTS} for _ in range(TICKS)]
    fast = [{h: v // 10 for h, v in f.items()} for f in flows]
    runs = []
    for _ in range(REPEATS):
        monitor = Monitor(config, roster=HOSTS)
        now = 1_700_000_000_000
        t0 = time.process_time()
        for f, ff in zip(flows, fast, strict=True):
            now += 100
            monitor.observe(now, sum(f.values()), f, fast_total=sum(ff.values()), fast_hosts=ff)
        runs.append((time.process_time() - t0) / TICKS * 1e6)
    runs.sort()
    return {"best_us": round(runs[0], 1), "median_us": round(runs[len(runs) // 2], 1)}


def run() -> dict[str, Any]:
    return {
        "rules_on": {"all": list(ALL_ON.causes), "cap_only": list(CAP_ONLY.causes)},
        "all_rules": _per_eval_us(ALL_ON),
        "cap_only": _per_eval_us(CAP_ONLY),
    }
