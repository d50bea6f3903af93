"""The shipped bash completion is the one generated from the table of options, and bash
itself completes verbs, a verb's flags and a flag's choices with it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from killswitch.cli.completion import bash

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "completion" / "killswitch.bash"


def complete(*words: str) -> list[str]:
    """COMPREPLY for the command line `words` (the last one being completed), from bash."""
    line = " ".join(f"'{w}'" for w in words)
    script = (
        f"source {SHIPPED}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
        '_killswitch; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.split()


class TestCompletion:
    """What a tired operator's Tab key gets."""

    def test_shipped_file_is_generated(self) -> None:
        """deploy/completion/killswitch.bash equals `python -m killswitch.cli.completion bash`."""
        assert SHIPPED.read_text() == bash(), "regenerate deploy/completion/killswitch.bash"

    @pytest.mark.parametrize(
        ("words", "want"),
        [
            (("killswitch", "st"), ["status"]),
            (("killswitch", "kill", "--rea"), ["--reason"]),
            (("killswitch", "sidecar", "--fen"), ["--fence", "--fence-allow-uid", "--fence-netns", "--fence-on-kill"]),
            (("killswitch", "status", "--log-level", "w"), ["warning"]),
            (("killswitch", "aggregator", "--on-haunted", ""), ["kill", "isolate"]),
        ],
    )  # fmt: skip
    def test_bash_completes(self, words: tuple[str, ...], want: list[str]) -> None:
        """Verbs, flags and choices complete from their first letters."""
        assert sorted(complete(*words)) == sorted(want)
