"""The wheel ships the product and nothing else: no test kit, no tests, no benches."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_no_test_code(tmp_path: Path) -> None:
    """A wheel built from the tree holds `killswitch/` (its Lua included) and no test kit,
    test or bench module. Built from a copy of the tree, so no `build/` left by an earlier
    build can add or hide anything (and the tree is left untouched)."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info", "mutants")
    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    [wheel] = tmp_path.glob("killswitch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    code = [n for n in names if n.endswith((".py", ".lua"))]
    assert "killswitch/cli/main.py" in code and "killswitch/store/lua/kill.lua" in code
    assert [n for n in code if not n.startswith("killswitch/")] == []
    test_code = [
        n
        for n in code
        if n.startswith(("killswitch/testing/", "kstest/", "tests/", "bench/"))
        or Path(n).name.startswith(("test_", "conftest"))
    ]
    assert test_code == []
    assert not any("kstest" in n or "/testing/" in n for n in names)
