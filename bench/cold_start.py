"""A fresh-process `killswitch kill` (to "8/8 confirmed") and `killswitch status` on an armed
eight-host node, side by side with a bare interpreter start in the same run.

Each round runs, in turn, `python -c pass`, `python -m killswitch status` and (after an arm,
which is not timed) `python -m killswitch kill`, so the three share whatever else the machine
is doing. Besides wall time it records each process's own CPU time (user + system), which
other work on the machine disturbs far less. It also takes one `python -X importtime`
breakdown of the kill command.

`KS_BENCH_COMPARE=DIR` (another checkout, e.g. `git worktree add ../ks-main main`) also runs
that tree's `status` and `kill` in every round, against the same fleet: a before/after in one
run, under the same load.
"""

from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

from bench.common import start_fleet, summary
from killswitch.sim.embedded import EmbeddedRedis
from kstest import Fleet

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
ROUNDS = int(os.environ.get("KS_BENCH_ROUNDS", "30"))
_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _timed(
    args: Sequence[str], env: dict[str, str], cwd: str | None = None
) -> tuple[float, float, str]:
    """Wall seconds, the process's CPU seconds, and its stdout."""
    c0, t0 = _cpu(), time.perf_counter()
    res = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    elapsed, cpu = time.perf_counter() - t0, _cpu() - c0
    if res.returncode != 0:
        raise AssertionError(f"{args[2:]} exited {res.returncode}: {res.stdout} {res.stderr}")
    return elapsed, cpu, res.stdout


class _Series:
    """Wall and CPU times of one command over the rounds."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)

    def report(self, bare: _Series | None = None) -> dict[str, object]:
        out: dict[str, object] = {
            "wall_ms": summary(self.wall, 1000),
            "cpu_ms": summary(self.cpu, 1000),
        }
        if bare is not None:
            p50 = statistics.median
            out["wall_over_bare_p50"] = round(p50(self.wall) / p50(bare.wall), 2)
            out["cpu_over_bare_p50"] = round(p50(self.cpu) / p50(bare.cpu), 2)
        return out


def _kill(cli: list[str], env: dict[str, str], cwd: str | None, i: int) -> tuple[float, float]:
    wall, cpu, out = _timed([*cli, "kill", "--reason", f"cold {i}"], env, cwd)
    if f"confirmed {len(HOSTS)}/{len(HOSTS)}" not in out:
        raise AssertionError(f"kill did not report every host confirmed: {out}")
    return wall, cpu


def import_breakdown(
    f: Fleet, env: dict[str, str], cwd: str | None = None, top: int = 12
) -> dict[str, object]:
    """Top-level imports of one `kill` by cumulative microseconds (`python -X importtime`)."""
    f.arm()
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "killswitch", "kill", "--reason", "importtime"],
        capture_output=True, text=True, env=env, cwd=cwd, check=False,
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
    other = os.environ.get("KS_BENCH_COMPARE")
    bare, status, kill, o_status, o_kill = (_Series() for _ in range(5))
    with EmbeddedRedis() as server:
        f = start_fleet(server.url, "bench-cold", HOSTS)
        try:
            # Bytecode caching on, as after any install (PYTHONDONTWRITEBYTECODE would make
            # every start compile the package again), and one untimed run to fill the cache.
            env = f.env()
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            o_env = dict(env, PYTHONPATH=other) if other else env
            for e, cwd in ((env, None), (o_env, other)):
                f.arm()
                _kill(cli, e, cwd, -1)
            for i in range(ROUNDS):
                f.arm()
                bare.add(*_timed([py, "-c", "pass"], env)[:2])
                status.add(*_timed([*cli, "status"], env)[:2])
                kill.add(*_kill(cli, env, None, i))
                if other:
                    f.arm()
                    o_status.add(*_timed([*cli, "status"], o_env, other)[:2])
                    o_kill.add(*_kill(cli, o_env, other, i))
            breakdown = import_breakdown(f, env)
            o_breakdown = import_breakdown(f, o_env, other) if other else {}
        finally:
            f.stop()
    out: dict[str, object] = {
        "rounds": ROUNDS,
        "python_c_pass": bare.report(),
        "status": status.report(bare),
        "kill_to_8_of_8": kill.report(bare),
        "kill_importtime": breakdown,
    }
    if other:
        out["compare_status"] = o_status.report(bare)
        out["compare_kill_to_8_of_8"] = o_kill.report(bare)
        out["compare_kill_importtime"] = o_breakdown
    return out
