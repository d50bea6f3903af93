"""The per-layer coverage floors: sums by sub-package and the floor check `./dev test` runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kstest.coverfloor import Layer, check, layer_of, main, totals


def summary(
    statements: int, covered: int, branches: int, covered_branches: int
) -> dict[str, object]:
    return {
        "summary": {
            "num_statements": statements,
            "covered_lines": covered,
            "num_branches": branches,
            "covered_branches": covered_branches,
        }
    }


class TestCoverFloor:
    @pytest.mark.parametrize(
        ("path", "layer"),
        [
            ("killswitch/core/node/state.py", "core"),
            ("/abs/src/killswitch/store/store.py", "store"),
            ("killswitch/inprocess.py", None),
            ("bench/common.py", None),
        ],
    )
    def test_layer_of(self, path: str, layer: str | None) -> None:
        """A file belongs to the sub-package right under `killswitch/`; root modules to none."""
        assert layer_of(path) == layer

    def test_totals_sum_each_layer(self) -> None:
        """Statements and branches of every file of a layer add up; root modules are left out."""
        report = {
            "files": {
                "killswitch/core/a.py": summary(10, 9, 4, 4),
                "killswitch/core/b.py": summary(10, 10, 0, 0),
                "killswitch/store/s.py": summary(20, 10, 10, 5),
                "killswitch/inprocess.py": summary(3, 0, 0, 0),
            }
        }
        layers = totals(report)
        assert set(layers) == {"core", "store"}
        assert layers["core"] == Layer(20, 19, 4, 4)
        assert (layers["core"].lines_pct, layers["core"].branches_pct) == (95.0, 100.0)
        assert (layers["store"].lines_pct, layers["store"].branches_pct) == (50.0, 50.0)

    @pytest.mark.parametrize(
        ("floors", "failures"),
        [
            ({"core": [95, 100]}, []),
            ({"core": [95.1, 0]}, ["core: lines 95.0% < floor 95.1%"]),
            ({"core": [0, 100.1]}, ["core: branches 100.0% < floor 100.1%"]),
            ({"ops": [1, 1]}, ["ops: no coverage data at all (floor 1%)"]),
        ],
        ids=["at-floor", "lines-below", "branches-below", "layer-missing"],
    )
    def test_check(self, floors: dict[str, list[float]], failures: list[str]) -> None:
        """A layer below either floor, or a floored layer with no data, is one failure line."""
        assert check({"core": Layer(20, 19, 4, 4)}, floors) == failures

    def test_empty_layer_counts_as_covered(self) -> None:
        """A layer with no branches at all is at 100 % branches, not a division by zero."""
        assert Layer(0, 0, 0, 0).branches_pct == Layer(0, 0, 0, 0).lines_pct == 100.0

    def test_missing_floor_table_is_a_usage_error(self, tmp_path: Path) -> None:
        """A pyproject without the floors table exits 2 with a message, not a traceback."""
        p = tmp_path / "pyproject.toml"
        p.write_text("[tool.other]\nx = 1\n")
        assert main(["--pyproject", str(p)]) == 2
