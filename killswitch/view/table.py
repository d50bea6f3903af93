"""Plain-text tables for the operator commands, drawn by rich.Table.

rich measures cells in terminal columns (a wide character counts two), fits a table to a
terminal by folding the columns that may fold (host names: never cut, they are what an
operator acts on) and cutting the ones that may be cut with an ellipsis, and draws nothing
else: no box, no colour, so the lines are the same text a script reads. Written to a pipe or
a file, a table is never narrowed: each row stays one line however wide. rich is imported
only when a table is drawn, so the verbs that print JSON never load it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from killswitch.view.text import safe_line

UNLIMITED = 1_000_000  # columns of a table that is not fitted to a terminal
NARROWEST = 16  # a folded or cut column is never narrowed below this (or its own width)


@dataclass(frozen=True)
class Col:
    """One column: its header, alignment and what happens when the terminal is too narrow."""

    header: str
    justify: Literal["left", "right"] = "left"
    # "fold": the cell continues on the next line (nothing is lost); "ellipsis": it is cut
    # with "…"; "keep": never narrowed (host names, numbers, yes/NO). A table whose kept
    # columns alone are wider than the terminal is printed whole: the terminal wraps it.
    overflow: Literal["fold", "ellipsis", "keep"] = "fold"


def output_width(width: int | None = None) -> int:
    """The columns to fit: `width`, else the terminal's on a terminal, else unlimited."""
    if width is not None:
        return width
    if sys.stdout is not None and sys.stdout.isatty():
        columns = os.environ.get("COLUMNS", "")
        return int(columns) if columns.isdigit() else shutil.get_terminal_size().columns
    return UNLIMITED


def table_lines(
    cols: Sequence[Col],
    rows: Sequence[Sequence[str]],
    *,
    indent: int = 0,
    width: int | None = None,
    header: bool = True,
) -> list[str]:
    """The table as lines (header first), one space between columns, no trailing spaces.

    Every cell is made one safe line first (`safe_line`): text read from Redis can never
    move the cursor or start a row of its own."""
    from rich.cells import cell_len  # noqa: PLC0415  only when a table is drawn (docstring)
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(
        box=None, show_header=header, show_edge=False, pad_edge=False,
        padding=(0, 1, 0, 0), header_style=None, expand=False,
    )  # fmt: skip
    least = len(cols) - 1  # the columns' separators
    for i, c in enumerate(cols):
        keep = c.overflow == "keep"
        widest = max([cell_len(c.header) if header else 0, *(cell_len(r[i]) for r in rows)])
        narrowest = widest if keep else min(widest, NARROWEST)
        least += narrowest
        table.add_column(
            c.header,
            justify=c.justify,
            overflow="fold" if c.overflow == "fold" else "ellipsis",
            no_wrap=keep or c.overflow == "ellipsis",
            min_width=narrowest,
        )
    for row in rows:
        # Text, never markup: a "[" in a reason or a host's note is shown as it is.
        table.add_row(*(Text(safe_line(cell)) for cell in row))
    console = Console(
        width=max(output_width(width) - indent, 20), color_system=None, force_terminal=False,
        no_color=True, highlight=False, emoji=False, markup=False, legacy_windows=False,
    )  # fmt: skip
    if least > console.width:
        # Too narrow for the kept columns: rich would drop whole columns. Print it whole.
        console.width = UNLIMITED
    with console.capture() as cap:
        console.print(table, crop=False, soft_wrap=False)
    pad = " " * indent
    return [pad + line.rstrip() for line in cap.get().splitlines()]
