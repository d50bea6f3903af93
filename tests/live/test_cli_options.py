"""The refusals the table of options makes on the command line: a misspelled config key, an
abbreviated flag, a misspelled verb, each exit 2 naming the closest known name; `config
--check` and the sources it reports; `backtest` with the aggregator's defaults. No Redis:
every command here is refused, or checks, before it would connect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.core.rules.config import default_cap
from killswitch.core.settings.options import VERBS, options_of
from killswitch.sim.embedded import free_port


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True, text=True, env=base, timeout=60, check=False,
    )  # fmt: skip


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 2, res
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def typo(tmp_path: Path) -> Path:
    cfg = tmp_path / "ks.toml"
    cfg.write_text("max_ordrs = 5\n")
    return cfg


class TestRefusals:
    def test_config_check_names_the_closest_key(self, typo: Path) -> None:
        """`config --check` on `max_ordrs = 5` exits 2 naming `max_orders`."""
        line = one_line(run("config", "--check", "--config", str(typo)))
        assert "max_ordrs" in line and "max_orders" in line

    @pytest.mark.parametrize("verb", ["status", "kill", "sidecar", "aggregator", "backtest"])
    def test_every_verb_refuses_an_unknown_key(self, typo: Path, verb: str) -> None:
        """An unknown key is never ignored: every verb exits 2 naming the closest known key."""
        url = f"redis://127.0.0.1:{free_port()}/0"  # never contacted
        line = one_line(run(verb, "--node", "smars", "--redis", url, "--config", str(typo)))
        assert "max_ordrs" in line and "did you mean max_orders" in line

    def test_a_key_in_the_wrong_verbs_table_is_refused(self, tmp_path: Path) -> None:
        """`[sidecar] max_orders` names the verbs that do take it."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text("[sidecar]\nmax_orders = 5\n")
        line = one_line(run("config", "--check", "--config", str(cfg), "sidecar"))
        assert "[sidecar] max_orders" in line and "aggregator, backtest" in line

    def test_abbreviated_flag_is_refused_naming_the_flag(self) -> None:
        """`kill --rea x` exits 2 naming `--reason` (never taken as it)."""
        line = one_line(run("kill", "--node", "smars", "--rea", "x"))
        assert "--rea" in line and "--reason" in line

    def test_misspelled_flag_names_the_closest(self) -> None:
        """`status --jsno` names `--json`."""
        line = one_line(run("status", "--node", "smars", "--jsno"))
        assert "did you mean --json" in line

    def test_misspelled_verb_names_the_closest(self) -> None:
        """`killswitch stauts` names `status`."""
        line = one_line(run("stauts"))
        assert "'status'" in line

    def test_bad_value_in_the_file_is_one_line_per_problem(self, tmp_path: Path) -> None:
        """`config --check` lists every bad value and unknown key, one line each, exit 2."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text('stale_after = 30\nwidnow = 5\n[aggregator]\ntick = "fast"\n')
        res = run("config", "--check", "--config", str(cfg))
        assert res.returncode == 2 and res.stdout == ""
        lines = res.stderr.strip().splitlines()
        assert any("widnow" in x and "window" in x for x in lines)
        assert any("[aggregator] tick: bad value 'fast'" in x for x in lines)
        takers = [v for v in VERBS if any(o.name == "stale-after" for o in options_of(v))]
        assert sum("stale-after: bad value 30" in x and "0.2..10 s" in x for x in lines) == len(
            takers
        )  # one line for each verb that takes it


class TestConfigCheck:
    def test_prints_each_setting_with_its_source(self, tmp_path: Path) -> None:
        """Each resolved setting is printed with where it came from: flag, env, file, default."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text("max_orders = 5000\n[aggregator]\nwindow = 2\n")
        res = run(
            "config", "--check", "--config", str(cfg), "--node", "smars", "aggregator",
            env={"KILLSWITCH_TICK": "0.2"},
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = res.stdout
        assert '[aggregator] node = "smars"  (flag --node)' in out
        assert "[aggregator] tick = 0.2  (env KILLSWITCH_TICK)" in out
        assert "[aggregator] max-orders = 5000  (file config [max_orders])" in out
        assert "[aggregator] window = 2.0  (file config [window])" in out
        assert "[aggregator] lease-ttl = 2.0  (default)" in out
        assert "[sidecar]" not in out

    def test_a_clean_file_checks_for_every_verb(self, tmp_path: Path) -> None:
        """Without VERB every verb's settings are checked and printed."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text('node = "smars"\n[sidecar]\nstale_after = 2\n')
        res = run("config", "--check", "--config", str(cfg))
        assert res.returncode == 0, res.stderr
        assert "[sidecar] stale-after = 2.0  (file config [stale_after])" in res.stdout
        assert "[kill] stale-after = 1.0  (default)" in res.stdout


class TestBacktestDefaults:
    def test_backtest_replays_with_the_aggregators_derived_cap(self, tmp_path: Path) -> None:
        """Without --max-orders, backtest enforces the cap the aggregator derives for the
        hosts in the counts (1,000 orders/s per host over the window), and trips on it."""
        rows = "".join(f"{1.0 + i / 10:.1f},or-0{1 + i % 2},4000\n" for i in range(30))
        csv = tmp_path / "c.csv"
        csv.write_text("timestamp,host,count\n" + rows)
        res = run("backtest", "--counts", str(csv), "--json", "--rearm-after", "never")
        assert res.returncode == 0, res.stderr
        doc = json.loads(res.stdout)
        assert doc["config"]["max_orders"] == default_cap(10_000, 2) == 20_000
        assert [t["cause"] for t in doc["trips"] if not t["shadow"]][:1] == ["max_orders"]

    def test_never_prints_a_password(self, tmp_path: Path) -> None:
        """A Redis URL's password from the file is shown masked."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text('redis = "redis://alice:hunter2@10.0.0.5:6379/0"\n')
        res = run("config", "--check", "--config", str(cfg), "status")
        assert res.returncode == 0, res.stderr
        assert "hunter2" not in res.stdout and "alice:***@10.0.0.5" in res.stdout

    def test_the_shipped_example_config_checks_clean(self) -> None:
        """deploy/killswitch.example.toml holds only known keys and good values for every verb."""
        example = Path(__file__).resolve().parents[2] / "deploy" / "killswitch.example.toml"
        res = run("config", "--check", "--config", str(example))
        assert res.returncode == 0, res.stderr

    def test_settings_checked_together(self, tmp_path: Path) -> None:
        """A flush interval at or above stale-after is refused by `config --check` as the
        sidecar would refuse it."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text("[sidecar]\nflush_interval = 2\nstale_after = 1\n")
        line = one_line(run("config", "--check", "--config", str(cfg), "sidecar"))
        assert "[sidecar] flush-interval must be shorter than stale-after" in line
