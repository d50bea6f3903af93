"""The systemd units in deploy/systemd pass `systemd-analyze verify`, start the verb with
flags it has, and give a stop the time an `--on-kill` command may take."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from killswitch.runtime.validate import BOUNDS

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
KILLSWITCH = Path(sys.executable).with_name("killswitch")


def unit(name: str) -> str:
    return (UNITS / name).read_text()


def exec_start(text: str) -> list[str]:
    line = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.M | re.S)
    assert line, "no ExecStart"
    return line.group(1).replace("\\\n", " ").split()


class TestUnits:
    """Each unit as systemd and the CLI see it."""

    @pytest.mark.parametrize(
        "name", ["killswitch-sidecar@.service", "killswitch-aggregator@.service"]
    )
    def test_every_flag_of_exec_start_is_a_flag_of_the_verb(self, name: str) -> None:
        """The unit names only flags its verb's --help lists (a renamed flag would break boot)."""
        argv = exec_start(unit(name))
        verb = argv[1]
        helptext = subprocess.run(
            [str(KILLSWITCH), verb, "--help"], capture_output=True, text=True, check=True
        ).stdout
        flags = [a for a in argv if a.startswith("--")]
        assert flags, argv
        for flag in flags:
            assert re.search(rf"(^|\s){re.escape(flag)}\b", helptext), (verb, flag)

    def test_stop_timeout_covers_the_longest_on_kill_grace(self) -> None:
        """TimeoutStopSec is at least the largest --on-kill-grace plus the 5 s CONTAINMENT.md asks."""
        timeout = int(
            re.search(r"^TimeoutStopSec=(\d+)$", unit("killswitch-sidecar@.service"), re.M)[1]
        )  # type: ignore[index]
        assert timeout >= BOUNDS["on-kill-grace"].hi + 5

    def test_only_the_fence_drop_ins_grant_a_capability(self) -> None:
        """The units grant no capability and allow no namespace; the fence drop-in grants
        CAP_NET_ADMIN and nothing else, the fence-netns one CAP_SYS_ADMIN and network
        namespaces only."""
        for name in ("killswitch-sidecar@.service", "killswitch-aggregator@.service"):
            text = unit(name)
            assert re.search(r"^CapabilityBoundingSet=$", text, re.M), name
            assert re.search(r"^NoNewPrivileges=yes$", text, re.M), name
            assert re.search(r"^ProtectSystem=strict$", text, re.M), name
            assert re.findall(r"^RestrictNamespaces=(.*)$", text, re.M) == ["yes"], name
        fence = unit("killswitch-sidecar@.service.d/fence.conf")
        assert re.findall(r"^\w*Capabilit\w*=(.*)$", fence, re.M) == ["CAP_NET_ADMIN"] * 2
        assert "RestrictNamespaces" not in fence
        netns = unit("killswitch-sidecar@.service.d/fence-netns.conf")
        assert re.findall(r"^\w*Capabilit\w*=(.*)$", netns, re.M) == ["CAP_SYS_ADMIN"] * 2
        # `yes` resets the unit's list to none, then only `net` is allowed again
        assert re.findall(r"^RestrictNamespaces=(.*)$", netns, re.M) == ["yes", "net"]

    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        """`systemd-analyze verify` accepts both units (and the fence drop-in) with no warning."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            pytest.skip("systemd-analyze is not installed here (it is on Debian with systemd)")
        for src in UNITS.rglob("*"):
            if src.is_file():
                dst = tmp_path / src.relative_to(UNITS)
                dst.parent.mkdir(parents=True, exist_ok=True)
                # verify checks that ExecStart's binary exists: point it at this venv's
                dst.write_text(
                    src.read_text().replace("/usr/local/bin/killswitch", str(KILLSWITCH))
                )
        done = subprocess.run(
            [analyze, "verify", "killswitch-sidecar@or-01.service", "killswitch-aggregator@smars.service"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and not done.stderr.strip(), done
