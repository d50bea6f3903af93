"""Whole-number settings written in a TOML config file as TOML's own types: a float that is
a whole number (9100.0) is that number; a boolean or a fractional float is refused, naming
the setting and the file entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from killswitch.runtime.config import ConfigError, Resolver, load_config_file
from killswitch.runtime.validate import bounded_int


def resolver(tmp_path: Path, toml: str) -> Resolver:
    path = tmp_path / "killswitch.toml"
    path.write_text(toml)
    return Resolver({}, env={}, config=load_config_file(str(path)), section="sidecar")


class TestTomlWholeNumbers:
    """`metrics_port` as TOML integer, float and boolean."""

    @pytest.mark.parametrize(
        ("toml", "port"),
        [
            ("[sidecar]\nmetrics_port = 9100\n", 9100),
            ("[sidecar]\nmetrics_port = 9100.0\n", 9100),
            ("metrics_port = 9.1e3\n", 9100),
        ],
        ids=["integer", "whole-float", "exponent-at-top-level"],
    )
    def test_whole_numbers_are_accepted_as_integers(
        self, tmp_path: Path, toml: str, port: int
    ) -> None:
        """An integral value of either TOML number type reads as that int."""
        got = resolver(tmp_path, toml).get("metrics-port", None, bounded_int("metrics-port"))
        assert got == port and type(got) is int

    @pytest.mark.parametrize(
        ("toml", "shown"),
        [
            ("[sidecar]\nmetrics_port = true\n", "True"),
            ("[sidecar]\nmetrics_port = 9100.5\n", "9100.5"),
            ("[sidecar]\nmetrics_port = inf\n", "inf"),
            ("[sidecar]\nmetrics_port = nan\n", "nan"),
            ("[sidecar]\nmetrics_port = 70000.0\n", "70000.0"),
        ],
        ids=["boolean", "fraction", "infinity", "nan", "out-of-range"],
    )
    def test_other_values_are_refused_naming_the_entry(
        self, tmp_path: Path, toml: str, shown: str
    ) -> None:
        """A boolean, a fraction, a non-finite or an out-of-range value is a ConfigError that
        names the setting, the value and the config entry it came from."""
        r = resolver(tmp_path, toml)
        with pytest.raises(ConfigError) as refused:
            r.get("metrics-port", None, bounded_int("metrics-port"))
        assert str(refused.value).startswith(
            f"metrics-port: bad value {shown} from config [metrics_port]: "
        )
