"""A fresh-process `killswitch kill` (to "8/8 confirmed") and `killswitch status` on an armed
eight-host node, side by side with a bare interpreter start in the same run.

Each round runs, in turn, `python -c pass`, `python -m killswitch status` and (after an arm,
which is not timed) `python -m killswitch kill`, so the three share whatever else the machine
is doing. It also takes one `python -X importtime` breakdown of the kill command.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from bench.common import start_fleet, summary
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.testing import Fleet

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
ROUNDS = int(os.environ.get("KS_BENCH_ROUNDS", "30"))
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


def _timed(args: Sequence[str], env: dict[str, str], expect: int = 0) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    if res.returncode != expect:
        raise AssertionError(f"{args[2:]} exited {res.returncode}: {res.stdout} {res.stderr}")
    return elapsed, res.stdout


def import_breakdown(f: Fleet, top: int = 12) -> dict[str, object]:
    """Top-level imports of one `kill` by cumulative microseconds (`python -X importtime`)."""
    f.arm()
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "killswitch", "kill", "--reason", "importtime"],
        capture_output=True, text=True, env=f.env(), check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise AssertionError(f"kill exited {res.returncode}: {res.stdout} {res.stderr}")
    rows: list[tuple[str, int]] = []
    total = 0
    for line in res.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m is None:
            continue
        total += int(m.group(1))
        if len(m.group(3)) == 1:  # imported by the program itself, not by another module
            rows.append((m.group(4), int(m.group(2))))
    rows.sort(key=lambda r: -r[1])
    return {
        "all_imports_ms": round(total / 1000, 1),
        "top_level_ms": {name: round(us / 1000, 1) for name, us in rows[:top]},
        "modules": sorted(n for n in ("redis", "asyncio", "aiohttp", "prometheus_client",
                                      "rich", "structlog") if re.search(
                                          rf"\| +{n}$", res.stderr, re.M)),
    }  # fmt: skip


def run() -> dict[str, object]:
    py = sys.executable
    cli = [py, "-m", "killswitch"]
    bare, status, kill = [], [], []
    with EmbeddedRedis() as server:
        f = start_fleet(server.url, "bench-cold", HOSTS)
        try:
            env = f.env()
            for i in range(ROUNDS):
                f.arm()
                bare.append(_timed([py, "-c", "pass"], env)[0])
                status.append(_timed([*cli, "status"], env)[0])
                t, out = _timed([*cli, "kill", "--reason", f"cold {i}"], env)
                if f"confirmed {len(HOSTS)}/{len(HOSTS)}" not in out:
                    raise AssertionError(f"kill did not report every host confirmed: {out}")
                kill.append(t)
            breakdown = import_breakdown(f)
        finally:
            f.stop()
    p50 = statistics.median
    return {
        "rounds": ROUNDS,
        "python_c_pass_ms": summary(bare, 1000),
        "status_ms": summary(status, 1000),
        "kill_to_8_of_8_ms": summary(kill, 1000),
        "kill_over_bare_p50": round(p50(kill) / p50(bare), 2),
        "status_over_bare_p50": round(p50(status) / p50(bare), 2),
        "kill_importtime": breakdown,
    }
