"""The files a service reads once at start (`--limits`, `--operators`): every way they can be
wrong is one `ConfigError` naming the file and the problem, never a traceback."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from killswitch.runtime.config import ConfigError
from killswitch.runtime.limitsfile import load_limits
from killswitch.runtime.operators import MAX_FILE_BYTES, load_operators
from killswitch.sim.operators import OperatorKeys

Make = Callable[[Path], Path]


def _file(data: bytes) -> Make:
    def make(d: Path) -> Path:
        p = d / "f"
        p.write_bytes(data)
        return p

    return make


def _missing(d: Path) -> Path:
    return d / "absent"


def _directory(d: Path) -> Path:
    (d / "dir").mkdir()
    return d / "dir"


class TestLimitsFile:
    """`--limits PATH`: read once; its digest is the exact bytes' SHA-256."""

    def test_good_file_and_its_digest(self, tmp_path: Path) -> None:
        """A valid file gives its limits and the SHA-256 of its bytes."""
        raw = b'max_qty = 500\n[symbols."AAPL"]\nmax_qty = 50\n'
        path = _file(raw)(tmp_path)
        limits, digest = load_limits(str(path))
        assert digest == hashlib.sha256(raw).hexdigest()
        assert limits.default.max_qty == 500

    @pytest.mark.parametrize(
        ("make", "says"),
        [
            (_missing, "does not exist"),
            (_directory, "cannot read"),
            (_file(b"max_qty = \xff\n"), "not valid UTF-8 TOML"),
            (_file(b"max_qty = = 1\n"), "not valid TOML"),
            (_file(b"max_qty = -5\n"), "limits: "),
            (_file(b"nonsense = 1\n"), "limits: "),
        ],
    )
    def test_bad_files(self, tmp_path: Path, make: Make, says: str) -> None:
        """Each problem is a ConfigError that names the file and says what is wrong."""
        path = make(tmp_path)
        with pytest.raises(ConfigError, match=says) as e:
            load_limits(str(path))
        assert str(path) in str(e.value)


class TestOperatorsFile:
    """`--operators PATH`: the allowed-signers file every gate verifies arms against."""

    def test_good_file(self, operator_keys: OperatorKeys) -> None:
        """The test operators' file loads with both principals' keys."""
        ops = load_operators(str(operator_keys.file))
        assert ops.principals == ("alice", "bob")

    @pytest.mark.parametrize(
        ("make", "says"),
        [
            (_missing, "does not exist"),
            (_directory, "cannot read"),
            (_file(b"x" * (MAX_FILE_BYTES + 1)), "larger than"),
            (_file(b"alice \xff\n"), "not UTF-8"),
            (_file(b'alice namespaces="killswitch" ssh-ed25519 !!notbase64!!\n'), "operators: "),
            (_file(b"# nobody yet\n"), "lists no key"),
        ],
    )
    def test_bad_files(self, tmp_path: Path, make: Make, says: str) -> None:
        """Each problem is a ConfigError that names the file and says what is wrong."""
        path = make(tmp_path)
        with pytest.raises(ConfigError, match=says) as e:
            load_operators(str(path))
        assert str(path) in str(e.value)
