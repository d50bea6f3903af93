"""Every verb's --help ends with examples, and every example parses as that verb."""

from __future__ import annotations

import shlex

import pytest

from killswitch.cli.examples import EXAMPLES
from killswitch.cli.parser import build_parser
from killswitch.core.settings.options import VERBS


def commands(verb: str) -> list[list[str]]:
    """The verb's examples as argv lists: continuation lines joined, comments and shell
    redirections cut off."""
    text = "\n".join(EXAMPLES[verb]).replace("\\\n", " ")
    out = []
    for raw in text.splitlines():
        cmd = raw.split("#", 1)[0]
        for cut in (">", "|"):
            cmd = cmd.split(cut, 1)[0]
        out.append(shlex.split(cmd))
    return out


class TestExamples:
    """What an operator copies from --help works."""

    def test_every_verb_has_examples(self) -> None:
        """No verb without an `examples:` section."""
        assert sorted(EXAMPLES) == sorted(VERBS)

    @pytest.mark.parametrize("verb", VERBS)
    def test_examples_parse(self, verb: str) -> None:
        """Each example line is `killswitch <a verb> ...` with flags that verb accepts."""
        parser = build_parser()
        for argv in commands(verb):
            assert argv[0] == "killswitch", argv
            args = parser.parse_args(argv[1:])
            assert args.command in VERBS

    def test_help_shows_them(self, capsys: pytest.CaptureFixture[str]) -> None:
        """`kill --help` prints the examples above the exit codes."""
        with pytest.raises(SystemExit):
            build_parser().parse_args(["kill", "--help"])
        out = capsys.readouterr().out
        assert out.index("examples:") < out.index("exit codes:")
        assert "killswitch kill --fleet --reason 'firm-wide stop' --json" in out
