"""The wheel ships the product and nothing else (no test kit, no tests, no benches), and,
installed alone into a clean virtual environment as `pipx install` would, it runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

# Building and installing a wheel with every dependency takes minutes on a loaded machine;
# the subprocess timeouts below bound each step, so the suite's 120 s default does not apply.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the tree, so no `build/` left by an earlier build can
    add or hide anything (and the tree is left untouched)."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    src = tmp_path / "src"
    skip = shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info", "mutants", "*.so")
    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    [built] = tmp_path.glob("killswitch-*.whl")
    return built


def test_wheel_ships_no_test_code(wheel: Path) -> None:
    """The wheel holds `killswitch/` (its Lua included) and no test kit, test or bench module."""
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


def test_wheel_carries_the_recorders_c_writer(wheel: Path) -> None:
    """The flight recorder's C writer is compiled into the wheel with its type stub, its
    source left out (unless this machine is allowed to build without it)."""
    names = zipfile.ZipFile(wheel).namelist()
    assert "killswitch/runtime/_ringwrite.pyi" in names
    assert not [n for n in names if n.endswith(".c")]
    built = [n for n in names if re.fullmatch(r"killswitch/runtime/_ringwrite\..*\.so", n)]
    assert len(built) == 1 or os.environ.get("KILLSWITCH_ALLOW_PURE_RECORDER") == "1", names


def locked_pins() -> str:
    """The lock's `name==version ; marker` lines without hashes: pip constraints."""
    lines = (ROOT / "requirements" / "dev.lock").read_text().splitlines()
    return "\n".join(m[1] for ln in lines if (m := re.match(r"^([A-Za-z0-9].*?)\s*\\?$", ln)))


def test_wheel_installed_alone_runs(wheel: Path, tmp_path: Path, redis_url: str) -> None:
    """In a fresh venv, the wheel and its declared dependencies (at the locked versions) give
    a `killswitch` that answers --version and talks to a real Redis (`status`, exit 0 for a
    node with no roster), with nothing from the checkout on its path."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(locked_pins())
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "-c", str(constraints), str(wheel)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    exe = env_dir / "bin" / "killswitch"
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    version = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, env=clean, cwd=tmp_path,
        timeout=60, check=False,
    )  # fmt: skip
    assert version.returncode == 0 and version.stdout.strip(), version
    status = subprocess.run(
        [str(exe), "status", "--json", "--node", "wheelcheck", "--redis", redis_url],
        capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=60, check=False,
    )  # fmt: skip
    assert status.returncode == 0, status
    assert json.loads(status.stdout)["node"] == "wheelcheck"
    where = subprocess.run(
        [str(py), "-c", "import killswitch, sys; print(killswitch.__file__)"],
        capture_output=True, text=True, env=clean, cwd=tmp_path, timeout=60, check=True,
    )  # fmt: skip
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout
