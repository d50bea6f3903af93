"""The table of options (`core.settings.options`) is the one home of every setting: each default and
bound is written there and nowhere else, every flag of every verb comes from it, and the
README's settings table and `--help` are produced from it. Pure: no server, no subprocess."""

from __future__ import annotations

import argparse
import ast
import io
import re
from contextlib import redirect_stdout
from dataclasses import fields
from pathlib import Path

import pytest

from killswitch.cli import settingsdoc
from killswitch.cli.examples import EXAMPLES
from killswitch.cli.parser import build_parser
from killswitch.core.node import roster
from killswitch.core.settings.options import (
    OPTIONS,
    VERBS,
    Option,
    closest,
    option,
    options_of,
    to_ms,
)
from killswitch.runtime.config import Resolver
from killswitch.runtime.convert import converter
from killswitch.runtime.validate import BOUNDS, bounded_int, truthy

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "killswitch"
TABLE_MODULES = {
    "core/settings/option.py",
    "core/settings/options.py",
    "core/settings/serviceoptions.py",
}


def product_sources() -> list[tuple[str, str]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if not rel.startswith("testing/"):
            out.append((rel, path.read_text("utf-8")))
    return out


class TestOneTable:
    def test_each_setting_of_each_verb_is_declared_once(self) -> None:
        """No verb takes two options of one name (a default or a bound would be twice)."""
        seen: dict[tuple[str, str], int] = {}
        for o in OPTIONS:
            for verb in o.verbs:
                assert verb in VERBS, (o.name, verb)
                seen[(verb, o.name)] = seen.get((verb, o.name), 0) + 1
        assert [k for k, n in seen.items() if n > 1] == []

    def test_a_name_shared_by_several_entries_has_its_default_and_bound_once(self) -> None:
        """Where verbs give one flag name different meanings (`--hosts`, `--key`), at most one
        of its entries declares a default or a bound."""
        by_name: dict[str, list[Option]] = {}
        for o in OPTIONS:
            by_name.setdefault(o.name, []).append(o)
        twice = [
            name
            for name, opts in by_name.items()
            if sum(o.default is not None or o.bound is not None for o in opts) > 1
        ]
        assert twice == []

    @pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: f"{o.name}@{o.verbs[0]}")
    def test_every_default_passes_its_own_converter_and_bound(self, opt: Option) -> None:
        """A default is typed as an operator would type it and is inside its own range."""
        if opt.default is None:
            return
        converter(opt)(opt.default)
        if opt.bound is not None and isinstance(opt.default, float | int):
            assert opt.bound.lo <= opt.default <= opt.bound.hi

    def test_bounds_are_the_tables(self) -> None:
        """`validate.BOUNDS` is a view of the table and the core's caps are read from it."""
        assert dict(BOUNDS) == {o.name: o.bound for o in OPTIONS if o.bound is not None}
        stale = option("stale-after")
        assert stale.bound is not None
        assert (
            to_ms(stale.bound.hi), to_ms(stale.default),
        ) == (roster.MAX_ALIVE_MS, roster.DEFAULT_ALIVE_MS)  # fmt: skip

    def test_no_bound_is_written_outside_the_table(self) -> None:
        """Only the table's modules construct a `Bound`."""
        offenders = [
            rel
            for rel, text in product_sources()
            if rel not in TABLE_MODULES and re.search(r"\bBound\(", text)
        ]
        assert offenders == []

    def test_no_flag_is_declared_outside_the_parser(self) -> None:
        """Every flag is added by `cli.parser` from the table: nothing else calls add_argument."""
        offenders = [
            rel
            for rel, text in product_sources()
            if rel != "cli/parser.py" and "add_argument(" in text
        ]
        assert offenders == []

    def test_no_setting_is_resolved_with_its_own_default(self) -> None:
        """Product code asks the resolver for a setting by name only: its default and its
        converter come from the table (`r.get("timeout")`, never `r.get("timeout", 5.0, ...)`)."""
        call = re.compile(r"\br\.(?:get|require)\(\s*\"([a-z-]+)\"\s*,(?!\s*hint=)")
        names = {o.name for o in OPTIONS}
        offenders = [
            (rel, m[1]) for rel, text in product_sources() for m in call.finditer(text)
            if m[1] in names
        ]  # fmt: skip
        assert offenders == []

    def test_no_parameter_repeats_a_settings_default(self) -> None:
        """No function or field spells a setting's default as a number of its own (the 1.0 of
        `--stale-after` was once written in five places)."""
        names = ("stale_after", "flush_interval", "max_conns", "line_timeout", "on_kill_grace",
                 "attest_interval", "confirm_timeout", "lease_ttl", "expires_s", "tick_ms")  # fmt: skip
        literal = re.compile(rf"\b({'|'.join(names)}): (?:float|int)(?: \| None)? = [0-9]")
        offenders = [(rel, m[1]) for rel, text in product_sources() for m in literal.finditer(text)]
        assert offenders == []

    @pytest.mark.parametrize(
        ("module", "cls"),
        [
            ("sidecar/settings.py", "SidecarSettings"),
            ("aggregator/settings.py", "AggregatorSettings"),
            ("sim/loadgen.py", "LoadgenSettings"),
            ("core/rules/config.py", "MonitorConfig"),
        ],
    )
    def test_typed_settings_take_their_defaults_from_the_table(self, module: str, cls: str) -> None:
        """A settings field that is an option has no literal default of its own: it calls
        the table (`default("tick")`, `default_ms("window")`), or has none (None or "")."""
        tree = ast.parse((PACKAGE / module).read_text("utf-8"))
        [node] = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls]
        names = {o.key for o in OPTIONS} | {f"{o.key}_ms" for o in OPTIONS}
        literal = []
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            field, value = stmt.target.id, stmt.value
            if field not in names or value is None:
                continue
            if isinstance(value, ast.Constant) and value.value not in (None, ""):  # "": none
                literal.append(field)
        assert literal == []

    def test_typed_defaults_equal_the_table(self) -> None:
        """The dataclasses' defaults are the table's, converted (ms) where they are durations."""
        from killswitch.aggregator.settings import AggregatorSettings
        from killswitch.core.rules.config import MonitorConfig
        from killswitch.sidecar.settings import SidecarSettings

        for cls in (SidecarSettings, AggregatorSettings, MonitorConfig):
            for f in fields(cls):
                name = f.name.removesuffix("_ms").replace("_", "-")
                try:
                    opt = option(name)
                except KeyError:
                    continue
                if opt.default is None or f.default is None or opt.kind in ("rate", "shadow"):
                    continue
                want = converter(opt)(opt.default)
                assert f.default == (to_ms(want) if f.name.endswith("_ms") else want), f.name


class TestParsersFromTheTable:
    @pytest.mark.parametrize("verb", VERBS)
    def test_every_flag_of_every_verb_comes_from_the_table(self, verb: str) -> None:
        """The verb's parser has exactly the table's flags for it (plus --help)."""
        sub = build_parser().verbs[verb]  # type: ignore[attr-defined]
        flags = {s for a in sub._actions for s in a.option_strings if s.startswith("--")}
        assert flags - {"--help"} == {f"--{o.name}" for o in options_of(verb)}

    def test_no_parser_allows_abbreviations(self) -> None:
        """The top parser and every verb's parser refuse a prefix of a flag."""
        p = build_parser()
        assert p.allow_abbrev is False
        assert all(sp.allow_abbrev is False for sp in p.verbs.values())  # type: ignore[attr-defined]

    @pytest.mark.parametrize("width", [60, 80, 100, 140])
    def test_help_never_wraps_inside_a_word(
        self, width: int, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every word of the help texts appears whole in --help (no `host_s` / `hare`)."""
        monkeypatch.setenv("COLUMNS", str(width))
        words = {w for o in OPTIONS for w in re.findall(r"[a-z]+(?:_[a-z]+)+", o.help)}
        words |= {"max_orders", "host_share", "baseline_fast", "host_share_fast", "max_rate"}
        # the examples are laid out by hand (never wrapped): their words count as given
        words |= {
            w
            for lines in EXAMPLES.values()
            for w in re.findall(r"[a-z]+(?:_[a-z]+)+", "\n".join(lines))
        }
        for verb in VERBS:
            out = io.StringIO()
            with redirect_stdout(out), pytest.raises(SystemExit):
                build_parser(verb).parse_args([verb, "--help"])
            found = set(re.findall(r"[a-z]+(?:_[a-z]+)+", out.getvalue()))
            assert found <= words | {"killswitch"}, (verb, found - words)

    def test_help_states_the_derived_cap(self) -> None:
        """`aggregator --help` says the static cap is derived, and how, instead of 'off'."""
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit):
            build_parser("aggregator").parse_args(["aggregator", "--help"])
        text = " ".join(out.getvalue().split())
        assert "default derived: 1,000 orders/s per roster host" in text
        assert "over --window" in text


class TestConverters:
    @pytest.mark.parametrize("word", ["1", "true", "yes", "on", "ON", " True "])
    def test_one_switch_converter_yes(self, word: str) -> None:
        """Flags and on/off settings share one converter and one set of words."""
        assert truthy(word) is True
        assert converter(option("fast-host-share"))(word) is True
        assert converter(option("require-durable"))(word) is True

    @pytest.mark.parametrize("word", ["maybe", "2", ""])
    def test_one_switch_converter_refuses(self, word: str) -> None:
        """Anything but the eight words is refused, the same for every switch."""
        with pytest.raises(ValueError):
            truthy(word)

    def test_fleet_kill_timeout_is_bounded_like_a_node_kill(self) -> None:
        """`kill --fleet --timeout` has the node kill's range: 3600 s at most."""
        r = Resolver({"timeout": "3601", "fleet": True}, env={}, section="kill")
        with pytest.raises(ValueError, match=r"0\.1\.\.3600 s"):
            r.get("timeout")

    def test_max_orders_is_checked_once_by_the_table(self) -> None:
        """A bad --max-orders is refused by the table's converter, naming the flag."""
        with pytest.raises(ValueError, match=r"1\.\.1000000000"):
            bounded_int("max-orders")("0")

    def test_resolve_checks_every_setting_up_front(self) -> None:
        """`resolve()` converts every setting of the verb, so a bad one fails before any work."""
        r = Resolver({}, env={"KILLSWITCH_TIMEOUT": "0"}, section="kill")
        with pytest.raises(ValueError, match=r"^timeout: bad value '0' from KILLSWITCH_TIMEOUT"):
            r.resolve()

    @pytest.mark.parametrize(
        ("word", "known", "want"),
        [("--rea", ["--reason", "--redis"], "--reason"), ("stauts", VERBS, "status"),
         ("max_ordrs", ["max_orders", "min_orders"], "max_orders"), ("zzz", VERBS, None)],
    )  # fmt: skip
    def test_closest(self, word: str, known: list[str], want: str | None) -> None:
        """A prefix names its only completion; a typo its closest name; nonsense nothing."""
        assert closest(word, known) == want


class TestReadme:
    def test_readme_settings_table_is_the_generators_output(self) -> None:
        """The README's settings section is exactly what the table produces."""
        readme = (ROOT / "README.md").read_text("utf-8")
        assert settingsdoc.section() in readme
        assert settingsdoc.replace_section(readme) == readme

    def test_every_visible_option_has_a_row(self) -> None:
        """One row per option shown in --help."""
        rows = settingsdoc.settings_table().splitlines()[2:]
        assert len(rows) == len([o for o in OPTIONS if not o.hidden])


def test_parser_is_argparse() -> None:
    """`build_parser` stays a plain argparse parser (tests and tools build it)."""
    assert isinstance(build_parser(), argparse.ArgumentParser)
