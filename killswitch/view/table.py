"""Plain-text tables for the operator commands, laid out as rich.Table lays them out.

Widths are measured in terminal columns (a wide character counts two). On a terminal too
narrow for a table, rich.Table draws it: the columns that may fold (notes) continue on the
next line, those that may be cut lose their end to an ellipsis, and host names are never cut
(they are what an operator acts on). Written to a pipe or a file a table is never narrowed:
each row stays one line however wide. No box, no colour: the lines are the text a script
reads. rich.console is imported only when a table must be folded, so `status` piped, and
every verb that prints JSON, never load it (nor any of rich, while the text is ASCII).
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


def cell_width(text: str) -> int:
    """Columns `text` takes on a terminal: its length when ASCII (after `safe_line`, the
    usual case, and then rich is not even imported), else rich's measure of it."""
    if text.isascii():
        return len(text)
    from rich.cells import cell_len  # noqa: PLC0415

    return cell_len(text)


def cell_text(text: str) -> str:
    """A cell as the table shows it: one safe line (`safe_line`), no spaces at its ends, and
    a value of nothing but zero-width characters (combining marks) spelled out, not hidden."""
    line = safe_line(text).strip(" ")
    if line and not cell_width(line):
        return "".join(f"\\u{ord(ch):04x}" for ch in line)
    return line


def table_lines(
    cols: Sequence[Col],
    rows: Sequence[Sequence[str]],
    *,
    indent: int = 0,
    width: int | None = None,
    header: bool = True,
) -> list[str]:
    """The table as lines (header first), one space between columns, no trailing spaces.

    Every cell is made one safe line first (`cell_text`): text read from Redis can never
    move the cursor or start a row of its own. A table that fits (always, when piped) is
    rich's layout at its natural width, laid out here without loading rich.console (about
    25 ms of imports a `status` would pay: docs/PERFORMANCE.md); tests/unit/test_table.py
    checks that the two agree. Only a table that must be folded to a terminal is drawn by
    rich."""
    cells = [[cell_text(cell) for cell in row] for row in rows]
    widths = [
        max([cell_width(c.header) if header else 0, *(cell_width(r[i]) for r in cells)])
        for i, c in enumerate(cols)
    ]
    room = max(output_width(width) - indent, 20)
    least = (
        len(cols)
        - 1
        + sum(
            w if c.overflow == "keep" else min(w, NARROWEST)
            for c, w in zip(cols, widths, strict=True)
        )
    )
    if len(cols) - 1 + sum(widths) <= room or least > room:
        # It fits; or it is too narrow for the kept columns, where rich would drop whole
        # columns: printed whole, the terminal wraps it.
        return natural_lines(cols, cells, widths, indent=indent, header=header)
    return rich_lines(cols, cells, width=room, indent=indent, header=header)


def natural_lines(
    cols: Sequence[Col],
    cells: Sequence[Sequence[str]],
    widths: Sequence[int],
    *,
    indent: int = 0,
    header: bool = True,
) -> list[str]:
    """rich's layout of a table that fits: each column as wide as its widest cell."""

    def line(row: Sequence[str]) -> str:
        out = []
        for c, w, cell in zip(cols, widths, row, strict=True):
            pad = " " * (w - cell_width(cell))
            out.append(pad + cell if c.justify == "right" else cell + pad)
        return (" " * indent + " ".join(out)).rstrip()

    return [line([c.header for c in cols])] * header + [line(row) for row in cells]


def rich_lines(
    cols: Sequence[Col],
    cells: Sequence[Sequence[str]],
    *,
    width: int = UNLIMITED,
    indent: int = 0,
    header: bool = True,
) -> list[str]:
    """The table drawn by rich.Table within `width` columns: folded, cut or kept by column."""
    from rich.cells import cell_len  # noqa: PLC0415
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    table = Table(
        box=None, show_header=header, show_edge=False, pad_edge=False,
        padding=(0, 1, 0, 0), header_style=None, expand=False,
    )  # fmt: skip
    for i, c in enumerate(cols):
        keep = c.overflow == "keep"
        widest = max([cell_len(c.header) if header else 0, *(cell_len(r[i]) for r in cells)])
        table.add_column(
            c.header,
            justify=c.justify,
            overflow="fold" if c.overflow == "fold" else "ellipsis",
            no_wrap=keep or c.overflow == "ellipsis",
            min_width=widest if keep else min(widest, NARROWEST),
        )
    for row in cells:
        # Text, never markup: a "[" in a reason or a host's note is shown as it is.
        table.add_row(*(Text(cell) for cell in row))
    console = Console(
        width=width, color_system=None, force_terminal=False, no_color=True, highlight=False,
        emoji=False, markup=False, legacy_windows=False,
    )  # fmt: skip
    with console.capture() as cap:
        console.print(table, crop=False, soft_wrap=False)
    pad = " " * indent
    return [(pad + line).rstrip() for line in cap.get().splitlines()]
