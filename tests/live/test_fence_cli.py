"""The network fence's flags on the real command line: refused where they cannot mean
anything, before any Redis work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


class TestFlags:
    """The fence's flags are refused where they cannot mean anything (no Redis needed)."""

    @pytest.mark.parametrize(
        ("args", "why"),
        [
            (["kill", "--node", "n1", "--reason", "x", "--fence", "--host", "h1"], "not a scoped kill"),
            (["kill", "--fleet", "--reason", "x", "--fence"], "not --fleet"),
            (["sidecar", "--node", "n1", "--host", "h1", "--listen", "unix:/tmp/x.sock",
              "--fence-on-kill"], "need --fence"),
            (["sidecar", "--node", "n1", "--host", "h1", "--listen", "unix:/tmp/x.sock",
              "--fence", "venue.example:9878"], "not an IP address"),
            (["sidecar", "--node", "n1", "--host", "h1", "--listen", "unix:/tmp/x.sock",
              "--fence", "10.0.0.5:9878", "--fence-allow-uid", "-1"], "fence-allow-uid"),
        ],
    )  # fmt: skip
    def test_refused_with_exit_2(self, args: list[str], why: str) -> None:
        """Each is a usage error (exit 2) whose one line says why."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
        res = subprocess.run(
            [sys.executable, "-m", "killswitch", *args, "--redis", "redis://127.0.0.1:1/0"],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 2, res
        assert why in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
