"""Shared set-up for benchmarks: a real redis-server and real sidecar processes."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Sequence

from kstest import Fleet


def start_fleet(redis_url: str, node: str, hosts: Sequence[str], *agg_args: str) -> Fleet:
    f = Fleet(redis_url, node, hosts)
    try:
        f.start()
        f.start_aggregator("--tick", "0.05", *agg_args)
        f.wait_ready(120)  # a deadline, not a wait: a loaded machine starts processes slowly
    except BaseException:
        f.stop()  # never leave sidecars running after a failed start
        raise
    return f


def percentile(xs: Sequence[float], p: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


def summary(xs: Sequence[float], unit_scale: float = 1.0) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50": round(percentile(xs, 50) * unit_scale, 3),
        "p90": round(percentile(xs, 90) * unit_scale, 3),
        "p99": round(percentile(xs, 99) * unit_scale, 3),
        "max": round(max(xs) * unit_scale, 3),
        "mean": round(statistics.fmean(xs) * unit_scale, 3),
    }


def run_async(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]
