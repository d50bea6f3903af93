"""The CLI's contract: exit codes, name validation before Redis, settings precedence."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.sim.embedded import free_port


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True, text=True, env=base, timeout=60, check=False,
    )  # fmt: skip


class TestExitCodes:
    """Exit codes are part of the interface: 1 could not do it, 2 usage or configuration."""

    def test_redis_unreachable_exits_1_and_says_what_to_do(self) -> None:
        """`status` against a port nothing listens on exits 1 and tells the operator what to do."""
        url = f"redis://127.0.0.1:{free_port()}/0"
        res = run("status", "--node", "smars", "--redis", url)
        assert res.returncode == 1, res
        assert "cannot reach Redis" in res.stderr
        assert "blocks all orders by itself" in res.stderr

    def test_kill_with_redis_unreachable_exits_1(self) -> None:
        """A kill that cannot be recorded is not reported as done: exit 1."""
        url = f"redis://127.0.0.1:{free_port()}/0"
        res = run("kill", "--node", "smars", "--redis", url, "--reason", "x", "--json")
        assert res.returncode == 1, res
        assert res.stdout == ""

    @pytest.mark.parametrize(
        "node", ["SMARS", "-smars", "sm ars", "sm{a}rs", "s" * 64, "smärs", ".x"]
    )
    def test_invalid_node_name_is_refused_before_redis(self, node: str) -> None:
        """A node name outside [a-z0-9][a-z0-9._-]{0,62} exits 2 naming the rule."""
        url = f"redis://127.0.0.1:{free_port()}/0"  # never contacted
        res = run("status", f"--node={node}", "--redis", url)
        assert res.returncode == 2, res
        assert "node" in res.stderr and "[a-z0-9]" in res.stderr

    def test_invalid_host_on_roster_is_refused(self) -> None:
        """An aggregator roster with a bad host name exits 2 before touching Redis."""
        res = run("aggregator", "--node", "smars", "--hosts", "or-01,OR_02")
        assert res.returncode == 2, res
        assert "OR_02" in res.stderr

    def test_missing_node_exits_2(self) -> None:
        """Without --node or KILLSWITCH_NODE a command exits 2 naming both."""
        res = run("status")
        assert res.returncode == 2
        assert "--node" in res.stderr and "KILLSWITCH_NODE" in res.stderr

    def test_unknown_flag_exits_2(self) -> None:
        """argparse errors are usage errors: exit 2."""
        assert run("status", "--node", "smars", "--bogus").returncode == 2

    def test_kill_without_reason_exits_2(self) -> None:
        """A kill must say why (it is audited)."""
        res = run("kill", "--node", "smars")
        assert res.returncode == 2
        assert "reason" in res.stderr

    def test_bad_numbers_exit_2(self) -> None:
        """A non-positive stale-after is a configuration error naming the field."""
        res = run("sidecar", "--node", "smars", "--host", "h", "--listen", "tcp:127.0.0.1:1",
                  "--stale-after", "0")  # fmt: skip
        assert res.returncode == 2
        assert "stale-after" in res.stderr

    def test_flush_interval_must_be_below_stale_after(self) -> None:
        """A flush interval at or above stale-after would make every gate stale: exit 2."""
        res = run("sidecar", "--node", "smars", "--host", "h", "--listen", "tcp:127.0.0.1:1",
                  "--flush-interval", "2", "--stale-after", "1")  # fmt: skip
        assert res.returncode == 2
        assert "flush-interval" in res.stderr

    @pytest.mark.parametrize(
        "verb", ["sidecar", "aggregator", "arm", "resume", "kill", "status", "audit", "demo"]
    )
    def test_every_verb_has_help(self, verb: str) -> None:
        """Every CONTRACT verb answers --help with its common options and the exit codes."""
        res = run(verb, "--help")
        assert res.returncode == 0
        assert "--redis" in res.stdout and "--node" in res.stdout and "exit codes" in res.stdout


class TestSettingsPrecedence:
    """Flag beats environment beats config file beats default."""

    def test_config_file_supplies_node_and_redis(self, tmp_path: Path, redis_url: str) -> None:
        """A TOML config file alone is enough to find the node and Redis."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text(f'redis = "{redis_url}"\nnode = "cfgnode"\n')
        res = run("status", "--json", "--config", str(cfg))
        assert res.returncode == 0, res
        assert '"node": "cfgnode"' in res.stdout

    def test_env_beats_config_and_flag_beats_env(self, tmp_path: Path, redis_url: str) -> None:
        """KILLSWITCH_NODE overrides the file; --node overrides both."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text(f'redis = "{redis_url}"\nnode = "fromfile"\n')
        env = {"KILLSWITCH_CONFIG": str(cfg), "KILLSWITCH_NODE": "fromenv"}
        res = run("status", "--json", env=env)
        assert res.returncode == 0, res
        assert '"node": "fromenv"' in res.stdout
        res = run("status", "--json", "--node", "fromflag", env=env)
        assert '"node": "fromflag"' in res.stdout

    def test_env_redis_url_is_used(self, redis_url: str) -> None:
        """KILLSWITCH_REDIS_URL is read when --redis is not given."""
        res = run("status", "--node", "envredis", "--json", env={"KILLSWITCH_REDIS_URL": redis_url})
        assert res.returncode == 0, res

    def test_bad_toml_exits_2(self, tmp_path: Path) -> None:
        """A config file that is not TOML is a configuration error naming the file."""
        cfg = tmp_path / "bad.toml"
        cfg.write_text("node = [unclosed\n")
        res = run("status", "--config", str(cfg))
        assert res.returncode == 2
        assert "bad.toml" in res.stderr

    def test_unarmed_node_status(self, redis_url: str, node: str) -> None:
        """A node nobody ever armed is UNARMED at epoch 0 with an empty roster."""
        res = run("status", "--node", node, "--redis", redis_url, "--json")
        assert res.returncode == 0
        assert '"state": "UNARMED"' in res.stdout and '"epoch": 0' in res.stdout
