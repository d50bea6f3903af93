"""Local audit copies for tests: an earlier deployment's leftover copy, junk lines, and a
hypothesis strategy for any copy at all (issue 27); and a logger that records events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from killswitch.aggregator.auditlog import ORPHANED
from killswitch.core.proof.auditchain import entry_hash


class Recorder:
    """A logger that keeps (level, event, fields): the mirror's events, read by the tests."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def bind(self, **_: Any) -> Recorder:
        return self

    def __getattr__(self, level: str) -> Any:
        return lambda event, **kw: self.events.append((level, event, kw))

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.events if e == event]


def old_chain(first_ms: int, actions: list[dict[str, str]]) -> list[str]:
    """JSON lines of a whole, valid chain as an earlier deployment's aggregator wrote it."""
    prev, lines = "", []
    for seq, own in enumerate(actions, 1):
        digest = entry_hash(str(seq), prev, list(own.items()))
        fields = [["seq", str(seq)], ["prev", prev], *map(list, own.items()), ["hash", digest]]
        lines.append(json.dumps({"id": f"{first_ms + seq}-0", "fields": fields}))
        prev = digest
    return lines


def leftover_copy() -> str:
    """An earlier deployment's copy: its chain, the break marker, then a restarted chain."""
    first = old_chain(1_600_000_000_000, [
        {"action": "roster", "actor": "aggregator:old", "roster": "or-01,or-02"},
        {"action": "arm", "actor": "alice+bob", "reason": "open"},
        {"action": "rollout_complete", "actor": "aggregator:old", "rollout": "4"},
    ])  # fmt: skip
    marker = json.dumps({"break": "entry 1600000100001-0 has seq '1', prev does link; ..."})
    second = old_chain(1_600_000_100_000, [{"action": "roster", "actor": "aggregator:old"}])
    return "\n".join([*first, marker, *second]) + "\n"


JUNK_LINES = [
    "", "   ", "not json", "{", '{"break"', "null", "7", '"text"', "[]", "[" * 5000,
    '{"fields": 5}', '{"fields": [[1, 2, 3]]}', '{"id": 7, "fields": [["seq", null]]}',
    '{"fields": {"seq": "1"}}', '{"id": "nope", "fields": [["seq", "x"], ["hash", "y"]]}',
    '{"break": null}', '{"break": {"nested": [1]}}', "\u2028{}", "\x00\x01",
]  # fmt: skip


@st.composite
def copies(draw: st.DrawFn) -> bytes:
    """Any copy: old chains' entries and markers in any order, junk lines, bytes that are not
    UTF-8, and maybe a last line cut short."""
    chain = old_chain(1_500_000_000_000, [{"action": "kill", "n": str(i)} for i in range(6)])
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from(chain),
                st.sampled_from(JUNK_LINES),
                st.builds(lambda v: json.dumps({"break": v}), st.text(max_size=12)),
                st.text(max_size=40),
                st.builds(
                    lambda i, s: json.dumps({"id": i, "fields": [["seq", s], ["hash", "h"]]}),
                    st.text(max_size=8),
                    st.text(max_size=4),
                ),
            ),
            max_size=12,
        )
    )
    raw = ("\n".join(pieces) + "\n").encode("utf-8", "surrogatepass")
    raw += draw(st.binary(max_size=12))
    return raw[: len(raw) - draw(st.integers(0, 30))] if draw(st.booleans()) else raw


def orphans_of(path: Path) -> list[Path]:
    """The copies of `path` rotated aside."""
    return sorted(path.parent.glob(f"{path.name}{ORPHANED}*"))
