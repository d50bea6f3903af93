"""The log event catalogue in docs/OBSERVABILITY.md lists exactly the events the code logs,
each once, all in one naming style (UPPER_CASE)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
# Events logged through a variable (`log(change, ...)`): the values it takes.
DYNAMIC = {"LEADER_ACQUIRED", "LEADER_LOST"}


def logged() -> dict[str, str]:
    """event -> the module that logs it first, found in the product's source by its AST."""
    out: dict[str, str] = {}
    for path in sorted((ROOT / "killswitch").rglob("*.py")):
        for n in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(n, ast.Call) and n.args and isinstance(n.args[0], ast.Constant):
                f = n.func
                by_level = isinstance(f, ast.Attribute) and f.attr in LEVELS
                by_getattr = (  # getattr(self.log, level)("EVENT", ...)
                    isinstance(f, ast.Call)
                    and isinstance(f.func, ast.Name)
                    and f.func.id == "getattr"
                )
                if (by_level and "redis" not in ast.unparse(f.value)) or by_getattr:  # type: ignore[union-attr]
                    name = n.args[0].value
            elif isinstance(n, ast.Tuple) and len(n.elts) >= 2:  # (level, EVENT, fields)
                a, b = n.elts[0], n.elts[1]
                if (
                    isinstance(a, ast.Constant)
                    and a.value in LEVELS
                    and isinstance(b, ast.Constant)
                ):
                    name = b.value
            if isinstance(name, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                out.setdefault(name, str(path.relative_to(ROOT)))
    for name in DYNAMIC:
        out.setdefault(name, "killswitch/core/node/leader.py")
    out.pop("info", None)  # the level choices in core/options, not an event
    return out


def catalogue() -> list[str]:
    text = (ROOT / "docs" / "OBSERVABILITY.md").read_text()
    section = text.split("## Log events", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Za-z0-9_]+)` \|", section, re.M)


class TestEventCatalogue:
    """What operators grep for is written down, and nothing written down is gone."""

    def test_one_naming_style(self) -> None:
        """Every event name is UPPER_CASE (BLOCK_ORDER's style), never snake_case."""
        lower = sorted(e for e in logged() if not re.fullmatch(r"[A-Z][A-Z0-9_]*", e))
        assert lower == []

    def test_catalogue_matches_the_code(self) -> None:
        """Each logged event has one row in the catalogue; each row names a logged event."""
        documented = catalogue()
        assert len(documented) == len(set(documented)), "an event is listed twice"
        code = logged()
        assert sorted(set(code) - set(documented)) == [], "logged but not in the catalogue"
        assert sorted(set(documented) - set(code)) == [], "in the catalogue but never logged"

    def test_the_scan_finds_what_it_should(self) -> None:
        """The scanner is not blind: events logged each way are found."""
        code = logged()
        for name in ("BLOCK_ORDER", "TRIP", "LIMIT_WARNING", "REDIS_NOT_DURABLE", "LEADER_LOST"):
            assert name in code, name
