"""Per-layer coverage floors: sums the combined coverage data by sub-package and fails under a floor.

coverage.py has one `fail_under` for everything; this checks each layer (core, store, ...)
against the `[tool.killswitch.coverage-floors]` table of pyproject.toml, so a well-tested
core cannot hide an untested service. Run after `coverage combine`; it never changes the data.

    python -m kstest.coverfloor [--pyproject PATH] [--data PATH]

Exit 0 when every layer is at or above its floors, 1 when one is below, 2 on a usage problem.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Layer:
    """Statement and branch totals of one sub-package."""

    statements: int = 0
    covered_lines: int = 0
    branches: int = 0
    covered_branches: int = 0

    @property
    def lines_pct(self) -> float:
        return 100.0 * self.covered_lines / self.statements if self.statements else 100.0

    @property
    def branches_pct(self) -> float:
        return 100.0 * self.covered_branches / self.branches if self.branches else 100.0


def layer_of(path: str) -> str | None:
    """`killswitch/core/node/state.py` -> `core`; a module at the package root has no layer."""
    parts = Path(path).parts
    if "killswitch" not in parts:
        return None
    rest = parts[parts.index("killswitch") + 1 :]
    return rest[0] if len(rest) > 1 else None


def totals(report: dict[str, Any]) -> dict[str, Layer]:
    """Sum a `coverage json` report per layer."""
    layers: dict[str, Layer] = {}
    for path, f in report["files"].items():
        name = layer_of(path)
        if name is None:
            continue
        s = f["summary"]
        layer = layers.setdefault(name, Layer())
        layer.statements += s["num_statements"]
        layer.covered_lines += s["covered_lines"]
        layer.branches += s.get("num_branches", 0)
        layer.covered_branches += s.get("covered_branches", 0)
    return layers


def check(layers: dict[str, Layer], floors: dict[str, list[float]]) -> list[str]:
    """One line per layer below a floor (or named in the floors but never measured)."""
    problems: list[str] = []
    for name, (line_floor, branch_floor) in sorted(floors.items()):
        layer = layers.get(name)
        if layer is None:
            problems.append(f"{name}: no coverage data at all (floor {line_floor}%)")
            continue
        if layer.lines_pct < line_floor:
            problems.append(f"{name}: lines {layer.lines_pct:.1f}% < floor {line_floor}%")
        if layer.branches_pct < branch_floor:
            problems.append(f"{name}: branches {layer.branches_pct:.1f}% < floor {branch_floor}%")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="coverfloor", description=__doc__.splitlines()[0])
    p.add_argument("--pyproject", default="pyproject.toml")
    p.add_argument("--data", default=None, help="coverage data file (default: coverage's own)")
    a = p.parse_args(argv)
    try:
        floors = tomllib.loads(Path(a.pyproject).read_text("utf-8"))["tool"]["killswitch"][
            "coverage-floors"
        ]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        print(f"coverfloor: no [tool.killswitch.coverage-floors] in {a.pyproject}: {e}")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cmd = [sys.executable, "-m", "coverage", "json", "-q", "-o", str(out)]
        if a.data:
            cmd += ["--data-file", a.data]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"coverfloor: coverage json failed: {done.stderr.strip() or done.stdout.strip()}")
            return 2
        layers = totals(json.loads(out.read_text("utf-8")))
    print(f"{'layer':<12}{'lines':>9}{'floor':>8}{'branches':>11}{'floor':>8}")
    for name, layer in sorted(layers.items()):
        lf, bf = floors.get(name, ["-", "-"])
        print(f"{name:<12}{layer.lines_pct:>8.1f}%{lf!s:>8}{layer.branches_pct:>10.1f}%{bf!s:>8}")
    problems = check(layers, floors)
    for line in problems:
        print(f"coverfloor: FAIL {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
