"""Scoped kills, pure: parsing the scopes hash, the version rule, proof, and the gate."""

from __future__ import annotations

import json

import pytest
from structlog.testing import CapturingLogger

from killswitch.core.gate import Gate
from killswitch.core.protocol import handle_line
from killswitch.core.scope import Scopes, newer, parse_scopes, proven
from killswitch.core.state import HostView, NodeState


def entry(ver: int) -> str:
    return json.dumps({"ver": ver, "ts_ms": 5, "actor": "sre", "reason": "why"})


HASH = {"_ver": "4", "host:or-02": entry(3), "symbol:AAPL": entry(4), "junk": "x"}


class TestParse:
    def test_hash(self) -> None:
        """Host and symbol scopes are read; unknown fields are ignored."""
        s = parse_scopes(HASH)
        assert s.ver == 4 and s.hosts == {"or-02"} and s.symbols == {"AAPL"}
        assert [x.field for x in s.active] == ["host:or-02", "symbol:AAPL"]

    def test_unreadable_value_still_blocks(self) -> None:
        """A scope whose value is not JSON still blocks: closing is always safe."""
        s = parse_scopes({"_ver": "1", "symbol:ES": "{{"})
        assert s.symbols == {"ES"}

    @pytest.mark.parametrize(
        ("host", "expected"),
        [("or-02", (True, frozenset({"AAPL"}))), ("or-01", (False, frozenset({"AAPL"})))],
    )
    def test_for_host(self, host: str, expected: tuple[bool, frozenset[str]]) -> None:
        """A host scope concerns one host; a symbol scope every host."""
        assert parse_scopes(HASH).for_host(host) == expected

    def test_never_back(self) -> None:
        """A lower version (lost or restored data) never replaces what a host enforces."""
        seen = parse_scopes(HASH)
        assert newer(seen, Scopes()) is seen
        later = parse_scopes({"_ver": "5"})
        assert newer(seen, later) is later

    @pytest.mark.parametrize(
        ("kind", "value", "applied", "done", "missing"),
        [
            ("host", "b", {"a": 0, "b": 7}, ["b"], []),
            ("host", "b", {"a": 7, "b": 6}, [], ["b"]),
            ("symbol", "X", {"a": 7, "b": 9, "c": 6}, ["a", "b"], ["c"]),
            ("symbol", "X", {"a": 7}, ["a"], ["b", "c"]),
        ],
    )
    def test_proven(
        self, kind: str, value: str, applied: dict[str, int], done: list[str], missing: list[str]
    ) -> None:
        """A host scope is proven by that host, a symbol scope by every roster host."""
        assert proven(kind, value, 7, ("a", "b", "c"), applied) == (done, missing)


class TestGateScope:
    def gate(self) -> Gate:
        g = Gate("smars", "or-02", clock=lambda: 10.0, log=CapturingLogger())
        view = HostView(max_epoch=3, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=3)
        g.apply(view, lease_deadline=100.0)
        return g

    def test_isolated_host(self) -> None:
        """A killed host blocks every order as `killed`, says KILLED, still passes cancels."""
        g = self.gate()
        g.set_scope(True, frozenset(), 1)
        assert handle_line(b"ORDER o1 MSFT BUY 1", g) == b"BLOCK o1 3 killed\n"
        assert handle_line(b"PING", g) == b"PONG KILLED 3\n"
        assert handle_line(b"CANCEL c1", g) == b"ALLOW c1 3\n"
        assert not g.is_open and not g.allow("o2", "MSFT", "BUY", 1)
        g.set_scope(False, frozenset(), 2)
        assert handle_line(b"ORDER o3 MSFT BUY 1", g) == b"ALLOW o3 3\n"

    def test_symbol(self) -> None:
        """A killed symbol blocks only that symbol."""
        g = self.gate()
        g.set_scope(False, frozenset({"AAPL"}), 1)
        assert handle_line(b"ORDER o1 AAPL BUY 1", g) == b"BLOCK o1 3 killed\n"
        assert handle_line(b"ORDER o2 MSFT BUY 1", g) == b"ALLOW o2 3\n"
        assert g.allow("o3", "MSFT", "BUY", 1) and not g.allow("o4", "AAPL", "BUY", 1)
        assert g.blocked_by == {"killed": 2} and g.is_open
