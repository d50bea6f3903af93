"""`''` means "none" for the file settings that document it (`--recorder`, `--audit-log`),
from a flag, the environment or the config file alike; not given means the default path."""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.aggregator.settings import AggregatorSettings
from killswitch.cli.main import build_parser, settings_from_args
from killswitch.sidecar.settings import SidecarSettings

OPS = "/etc/killswitch/operators"


def sidecar(tmp_path: Path, extra: list[str], env: dict[str, str]) -> SidecarSettings:
    argv = ["sidecar", "--node", "n", "--host", "h", "--listen", f"unix:{tmp_path}/g.sock",
            "--state-dir", str(tmp_path), "--operators", OPS, *extra]  # fmt: skip
    s = settings_from_args(build_parser().parse_args(argv), env=env)
    assert isinstance(s, SidecarSettings)
    return s


def aggregator(extra: list[str], env: dict[str, str]) -> AggregatorSettings:
    argv = ["aggregator", "--node", "n", "--hosts", "a,b", "--operators", OPS, *extra]
    s = settings_from_args(build_parser().parse_args(argv), env=env)
    assert isinstance(s, AggregatorSettings)
    return s


class TestEmptyMeansNone:
    """Each source of '' turns the file off; nothing given keeps the default."""

    @pytest.mark.parametrize("where", ["flag", "env", "file"])
    def test_audit_log(self, where: str, tmp_path: Path) -> None:
        """--audit-log '' from any source: no local audit copy."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text('[aggregator]\naudit_log = ""\n')
        extra, env = {
            "flag": (["--audit-log", ""], {}),
            "env": ([], {"KILLSWITCH_AUDIT_LOG": ""}),
            "file": (["--config", str(cfg)], {}),
        }[where]
        assert aggregator(extra, env).audit_log == ""
        assert aggregator([], {}).audit_log.endswith("audit-n.jsonl")

    @pytest.mark.parametrize("where", ["flag", "env", "file"])
    def test_recorder(self, where: str, tmp_path: Path) -> None:
        """--recorder '' from any source: no flight recorder; not given: the default path."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text('[sidecar]\nrecorder = ""\n')
        extra, env = {
            "flag": (["--recorder", ""], {}),
            "env": ([], {"KILLSWITCH_RECORDER": ""}),
            "file": (["--config", str(cfg)], {}),
        }[where]
        assert sidecar(tmp_path, extra, env).recorder == ""
        assert sidecar(tmp_path, [], {}).recorder is None
