"""Scoped kills, pure: parsing the scopes hash, the version rule, proof, and the gate."""

from __future__ import annotations

import json

import pytest
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.protocol import handle_line
from killswitch.core.node.scope import Scope, Scopes, newer, parse_scopes, proven, valid_symbol
from killswitch.core.node.state import HostView, NodeState


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
        ("h", "ver"),
        [({}, 0), ({"host:a": entry(2)}, 0), ({"_ver": ""}, 0), ({"_ver": "x7"}, 0),
         ({"_ver": "12"}, 12)],
        ids=["empty", "no-ver-field", "blank-ver", "junk-ver", "ver"],
    )  # fmt: skip
    def test_version(self, h: dict[str, str], ver: int) -> None:
        """A missing or unreadable `_ver` reads as 0, below every version a host can apply."""
        assert parse_scopes(h).ver == ver

    @pytest.mark.parametrize(
        ("h", "fields"),
        [
            ({"host:or-02": "{}", "symbol:AAPL": "{}"}, ["host:or-02", "symbol:AAPL"]),
            ({"other:x": "{}", "hosts:a": "{}", "host:": "{}", ":a": "{}"}, []),
            ({"symbol:BRK:B": "{}"}, ["symbol:BRK:B"]),  # a symbol may hold a colon
            ({"host:a:b": "{}"}, ["host:a:b"]),
        ],
        ids=["both-kinds", "unknown-kind-or-empty-value", "colon-in-symbol", "colon-in-host"],
    )
    def test_fields(self, h: dict[str, str], fields: list[str]) -> None:
        """Only `host:<H>` and `symbol:<S>` with a non-empty value are scopes; the value is
        everything after the first colon."""
        assert [s.field for s in parse_scopes(h).active] == fields

    @pytest.mark.parametrize(
        ("raw", "scope"),
        [
            (entry(3), Scope("symbol", "ES", 3, 5, "sre", "why")),
            ("{}", Scope("symbol", "ES")),
            ("{{", Scope("symbol", "ES")),
            ("[1, 2]", Scope("symbol", "ES")),
            ("7", Scope("symbol", "ES")),
            ('{"ver": "x", "ts_ms": null, "actor": 5}', Scope("symbol", "ES", actor="5")),
            ('{"ver": "9", "ts_ms": 11, "reason": "r"}', Scope("symbol", "ES", 9, 11, "", "r")),
        ],
        ids=["entry", "empty-object", "not-json", "json-list", "json-number", "junk-fields",
             "partial"],
    )  # fmt: skip
    def test_entry(self, raw: str, scope: Scope) -> None:
        """Each scope's ver, time, actor and reason are read; a missing or unreadable one reads
        as 0 or '' and the scope still blocks."""
        s = parse_scopes({"_ver": "3", "symbol:ES": raw})
        assert s.active == (scope,) and s.symbols == {"ES"}

    def test_to_json(self) -> None:
        """A scope's `status --json` entry has exactly these keys and values."""
        assert Scope("host", "or-02", 3, 5, "sre", "why").to_json() == {
            "kind": "host", "value": "or-02", "ver": 3, "ts_ms": 5, "actor": "sre",
            "reason": "why",
        }  # fmt: skip

    @pytest.mark.parametrize(
        ("s", "ok"),
        [("AAPL", True), ("BRK.B", True), ("x" * 64, True), ("!", True), ("~", True),
         ("", False), ("x" * 65, False), ("A B", False), ("A\tB", False), ("ÄPL", False),
         ("A\n", False)],
        ids=["plain", "dot", "64-chars", "lowest", "highest", "empty", "65-chars", "space", "tab",
             "non-ascii", "trailing-newline"],
    )  # fmt: skip
    def test_valid_symbol(self, s: str, ok: bool) -> None:
        """A symbol is 1 to 64 printable ASCII characters without spaces, as the gate accepts."""
        assert valid_symbol(s) is ok

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
        again = parse_scopes({"_ver": "4"})
        assert newer(seen, again) is again  # the same version read again is what Redis holds

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

    @pytest.mark.parametrize(
        ("ver", "applied", "stored_ver", "done", "missing"),
        [
            (1, {"a": 1}, None, ["a"], ["b"]),  # b never reported: it applied nothing
            (1, {"a": 1}, 1, ["a"], ["b"]),
            (0, {}, 0, ["a", "b"], []),  # version 0 asks for nothing: met by every host
            (0, {}, None, ["a", "b"], []),
        ],
        ids=["first-ver", "first-ver-stored", "zero-stored", "zero"],
    )
    def test_proven_by_hosts_without_a_report(
        self, ver: int, applied: dict[str, int], stored_ver: int | None, done: list[str],
        missing: list[str],
    ) -> None:  # fmt: skip
        """A host absent from the reports counts as having applied version 0."""
        assert proven("symbol", "X", ver, ("a", "b"), applied, stored_ver) == (done, missing)


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
