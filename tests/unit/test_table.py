"""The operator commands' tables (rich.Table underneath): whole rows when piped, folded to a
terminal's width without losing a character or cutting a host name, plain text only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len

from killswitch.cli.render import _hosts
from killswitch.ops.fleet import fleet_lines
from killswitch.view.table import Col, cell_text, natural_lines, rich_lines, table_lines

HOST = "h" * 63  # the longest name the contract allows
NOTE = "! still enforces symbol:KCG symbol:AAPL: no signed lift it could verify"
COLS = (Col("host", overflow="keep"), Col("epoch", "right", "keep"), Col(""))


def words(lines: list[str]) -> list[str]:
    return " ".join(lines).split()


class TestTableLines:
    def test_piped_rows_are_never_wrapped(self) -> None:
        """With no terminal (the test's stdout), a row wider than 80 columns stays one line."""
        lines = table_lines(COLS, [[HOST, "7", NOTE]])
        assert len(lines) == 2 and len(lines[1]) > 80, lines
        assert lines[1] == f"{HOST}     7 {NOTE}"

    def test_fitted_to_a_terminal_the_note_folds_and_nothing_is_lost(self) -> None:
        """At 100 columns the note folds under itself; the host stays whole; every word stays."""
        lines = table_lines(COLS, [[HOST, "7", NOTE]], width=100)
        assert max(len(x) for x in lines) <= 100, lines
        assert lines[1].startswith(f"{HOST}     7 ! still")
        assert len(lines) > 2
        assert words(lines[1:]) == [HOST, "7", *NOTE.split()]

    def test_narrower_than_the_kept_columns_it_is_printed_whole(self) -> None:
        """Too narrow for the host and epoch: every column is still there, on one line."""
        lines = table_lines(COLS, [[HOST, "7", NOTE]], width=40)
        assert lines[1] == f"{HOST}     7 {NOTE}"

    def test_headers_and_justification(self) -> None:
        """Headers line up with their columns; numbers are right-aligned, no trailing spaces."""
        lines = table_lines(COLS, [["a", "7", ""], ["bb", "123", "x"]], indent=2)
        assert lines == ["  host epoch", "  a        7", "  bb     123 x"]

    def test_markup_is_shown_as_typed(self) -> None:
        """A cell that looks like rich markup is text: `[bold]` is printed, not obeyed."""
        (line,) = table_lines(COLS, [["a", "1", "[bold]x[/bold] [red]"]], header=False)
        assert line.endswith("[bold]x[/bold] [red]")

    def test_control_characters_are_escaped(self) -> None:
        """Escape sequences and newlines in a cell are shown escaped, within its row."""
        lines = table_lines(COLS, [["a", "1", "\x1b[2Jok\nFAKE"]], header=False)
        assert lines == ["a 1 \\x1b[2Jok\\x0aFAKE"]

    def test_an_invisible_cell_is_spelled_out(self) -> None:
        """A cell of nothing but a combining mark is shown as its code, not as nothing."""
        assert cell_text("\u0301") == "\\u0301" and cell_text(" e\u0301 ") == "e\u0301"

    def test_wide_characters_are_measured_in_columns(self) -> None:
        """A cell of double-width characters pushes the next column by its width on screen."""
        lines = table_lines((Col("a", overflow="keep"), Col("b")), [["名前", "x"], ["ab", "y"]])
        assert lines[1:] == ["名前 x", "ab   y"]  # 名前 is four columns wide on screen

    def test_no_colour_even_when_forced(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """FORCE_COLOR and a TERM with colours put no escape code in the text."""
        monkeypatch.setenv("FORCE_COLOR", "1")
        monkeypatch.setenv("TERM", "xterm-256color")
        lines = table_lines(COLS, [[HOST, "7", NOTE]], width=100)
        assert not any("\x1b" in ln for ln in lines)


class TestStatusTables:
    def test_status_host_table_keeps_a_63_character_host_whole(self) -> None:
        """`status`'s host table: a 63-character host on one line, under its header."""
        rep = {
            "hosts": {
                HOST: {"alive": True, "age_s": 0.04, "gate": "open", "view": "ARMED",
                       "epoch": 7, "orders_per_s": 12.5, "release": "abcdef1234567890"},
                "or-01": {"alive": False, "gate": "closed", "epoch": 7, "orders_per_s": 0},
            },
            "confirmed": [HOST],
        }  # fmt: skip
        lines = _hosts(rep)
        assert lines[0].split() == [
            "host", "alive", "age", "gate", "view", "epoch", "ord/s", "confirmed", "release",
        ]  # fmt: skip
        assert lines[1].split() == [HOST, "yes", "0.04s", "open", "ARMED", "7", "12.5", "yes",
                                    "abcdef123456"]  # fmt: skip
        assert lines[2].split() == ["or-01", "NO", "-", "closed", "?", "7", "0.0", "NO", "-"]
        assert lines[1].index(" yes") == lines[0].index(" alive")

    def test_fleet_lines_fit_long_node_names(self) -> None:
        """`status --fleet`: a 63-character node name no longer pushes its row out of line."""
        node = "n" * 63
        report = {
            "nodes": {
                node: {"state": "ARMED", "epoch": 12, "roster": ["a"], "confirmed": ["a"]},
                "short": {"state": "KILLED", "epoch": 3, "roster": ["a", "b"],
                          "confirmed": ["a"], "missing": ["b"]},
            }
        }  # fmt: skip
        lines = fleet_lines(report)
        assert lines[0].split() == ["short", "KILLED", "epoch", "3", "confirmed", "1/2",
                                    "MISSING:", "b"]  # fmt: skip
        assert lines[0].index("KILLED") == lines[1].index("ARMED") == 64
        assert lines[0].index("confirmed") == lines[1].index("confirmed")


CELL = st.text(
    st.sampled_from([*"abc XYZ-_.:[]/\\", "名", "前", "é", "\u0301", "\x1b", "\n", "🙂"]),
    max_size=12,
)


@st.composite
def tables(draw: st.DrawFn) -> tuple[list[Col], list[list[str]], bool]:
    n = draw(st.integers(1, 5))
    cols = [
        Col(
            draw(st.sampled_from(["", "a", "host", "名前"])),
            draw(st.sampled_from(["left", "right"])),
            draw(st.sampled_from(["fold", "ellipsis", "keep"])),
        )
        for _ in range(n)
    ]
    rows = draw(st.lists(st.lists(CELL, min_size=n, max_size=n), max_size=4))
    return cols, rows, draw(st.booleans())


class TestSameLayoutAsRich:
    @settings(max_examples=300, deadline=None)
    @given(tables())
    def test_a_table_that_fits_is_laid_out_as_rich_draws_it(
        self, table: tuple[list[Col], list[list[str]], bool]
    ) -> None:
        """Whole rows (pipes, wide terminals) are exactly rich.Table's lines at any width."""
        cols, rows, header = table
        cells = [[cell_text(c) for c in row] for row in rows]
        widths = [
            max([cell_len(c.header) if header else 0, *(cell_len(r[i]) for r in cells)])
            for i, c in enumerate(cols)
        ]
        assert natural_lines(cols, cells, widths, indent=2, header=header) == rich_lines(
            cols, cells, indent=2, header=header
        )
        assert table_lines(cols, rows, indent=2, header=header) == rich_lines(
            cols, cells, indent=2, header=header
        )
