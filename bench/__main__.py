"""Run the benchmarks named on the command line (default: all) and print their figures."""

from __future__ import annotations

import importlib
import json
import sys

ALL = [
    "gate_check",
    "subscribe_latency",
    "protocol_throughput",
    "redis_cost",
    "kill_confirm",
    "cold_start",
    "anomaly",
    "rules_latency",
    "monitor_eval",
    "faults",
    "scale",
    "blocked_flood",
    "gate_flood",
    "audit_cost",
    "attest_hash",
    "fix_gateway",
    "fence",
    "split_kill",
    "functions_cost",
]


def main(argv: list[str]) -> int:
    names = argv or ALL
    results = {}
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        results[name] = mod.run()
        print(json.dumps(results[name], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
