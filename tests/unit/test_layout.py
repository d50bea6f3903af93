"""The package layout rule a reviewer would otherwise have to count: no module over 400 lines."""

from __future__ import annotations

from pathlib import Path

import killswitch

# The house rule is "no module over ~400 lines: split by job when you grow one". A test needs
# a number: 400 is the rule as written, and the longest modules today stand just under it, so
# the next one to grow is split by job instead of drifting past it a few lines at a time.
MAX_MODULE_LINES = 400

PACKAGE = Path(killswitch.__file__).resolve().parent
KIT = PACKAGE.parent / "kstest"  # the test kit, beside the package


def long_modules(root: Path, limit: int) -> list[str]:
    """Every `.py` file under `root` longer than `limit` lines, as "path: N lines"."""
    found = []
    for path in sorted(root.rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            found.append(f"{path.relative_to(root.parent)}: {n} lines")
    return found


class TestModuleSize:
    def test_no_module_over_the_limit(self) -> None:
        """No module of the package or the test kit is over MAX_MODULE_LINES lines (split it
        by job)."""
        assert long_modules(PACKAGE, MAX_MODULE_LINES) + long_modules(KIT, MAX_MODULE_LINES) == []

    def test_the_check_names_a_long_module(self, tmp_path: Path) -> None:
        """The check names a module over the limit, with its length, and passes one at it."""
        pkg = tmp_path / "pkg"
        (pkg / "sub").mkdir(parents=True)
        (pkg / "sub" / "long.py").write_text("x = 1\n" * 401, encoding="utf-8")
        (pkg / "ok.py").write_text("x = 1\n" * 400, encoding="utf-8")
        assert long_modules(pkg, 400) == ["pkg/sub/long.py: 401 lines"]
