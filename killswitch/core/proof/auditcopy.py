"""Reading an aggregator's local audit copy (one JSON object a line) whatever it holds.

The copy is a file on a disk that outlives Redis: it may hold an earlier deployment's chain,
the `{"break": ...}` marker lines the aggregator writes when Redis stops continuing it,
lines damaged by hand or by a disk, and a last line cut short by a crash. This module turns
any text into what it can use (the entries, grouped into chains) and counts the rest; it
never raises on the text's content. Pure: it reads no file and talks to no Redis.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CopyEntry:
    """One chain entry of the copy: its stream id, its fields, and which chain it is in."""

    id: str
    fields: dict[str, str]
    chain: int  # 0 for the first chain of the file; a break marker starts the next one


@dataclass(frozen=True, slots=True)
class CopyContents:
    entries: tuple[CopyEntry, ...]
    breaks: int  # break marker lines
    junk: int  # lines that are neither an entry nor a break marker (a torn last line too)
    torn: bool  # the text does not end with a newline: the last write was cut short
    empty: bool  # nothing at all but blank lines

    @property
    def chains(self) -> int:
        return self.breaks + 1

    @property
    def current(self) -> tuple[CopyEntry, ...]:
        """The entries after the last break marker: the chain the copy was last following."""
        return tuple(e for e in self.entries if e.chain == self.breaks)

    @property
    def last(self) -> CopyEntry | None:
        cur = self.current
        return cur[-1] if cur else None

    def fields(self) -> list[dict[str, str]]:
        """Every entry's fields, of every chain, oldest first."""
        return [e.fields for e in self.entries]


def entry_of(obj: Any) -> tuple[str, dict[str, str]] | None:
    """(id, fields) of a line's object when it is a chain entry as the aggregator writes it
    (`{"id": ..., "fields": [[name, value], ...]}`), else None."""
    if not isinstance(obj, dict):
        return None
    raw = obj.get("fields")
    if not isinstance(raw, list):
        return None
    fields: dict[str, str] = {}
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2):
            return None
        name, value = pair
        if not isinstance(name, str) or not isinstance(value, (str, int, float)):
            return None
        fields[name] = str(value)
    ident = obj.get("id", "")
    return (ident if isinstance(ident, str) else "", fields)


def is_break(obj: Any) -> bool:
    return isinstance(obj, dict) and "break" in obj and "fields" not in obj


def parse(text: str) -> CopyContents:
    """What `text` (the whole copy, decoded with replacement) holds; never raises."""
    entries: list[CopyEntry] = []
    breaks = junk = 0
    empty = True
    # "\n" only, as the aggregator writes: JSON escapes every other line separator, so a raw
    # one inside a line is damage to that line, not a line break.
    for line in text.split("\n"):
        if not line.strip():
            continue
        empty = False
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            junk += 1
            continue
        if is_break(obj):
            breaks += 1
            continue
        found = entry_of(obj)
        if found is None:
            junk += 1
            continue
        entries.append(CopyEntry(found[0], found[1], breaks))
    torn = bool(text) and not text.endswith("\n")
    return CopyContents(tuple(entries), breaks, junk, torn, empty)
