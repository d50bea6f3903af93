"""Symbols are compared in one canonical form, ASCII upper case: a scoped kill or a per-symbol
limit written in any case applies to every spelling of the symbol (the gate alone, the limits
file, and a real fleet killed with `kill --symbol msft`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.limits import LimitChecker, LimitsError, parse_limits
from killswitch.core.node.scope import canonical_symbol
from killswitch.core.node.state import HostView, NodeState
from kstest import Fleet

ARMED = HostView(max_epoch=3, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=3)


class TestCanonical:
    @pytest.mark.parametrize("spelling", ["MSFT", "msft", "Msft", "mSfT"])
    def test_scoped_symbol_blocks_every_spelling(self, spelling: str) -> None:
        """A symbol killed as `msft` blocks MSFT, msft and every mix; other symbols pass."""
        gate = Gate("smars", "or-01", clock=lambda: 0.0, log=CapturingLogger())
        gate.apply(ARMED, lease_deadline=10.0)
        gate.set_scope(False, frozenset({"msft"}), 1)
        assert gate.check("o", spelling) == (False, 3, "killed")
        assert gate.check("o", "AAPL") == (True, 3, "")
        assert canonical_symbol(spelling) == "MSFT"

    def test_limit_table_applies_to_every_spelling(self) -> None:
        """`[symbols."msft"] max_qty = 10` refuses 11 MSFT; two tables for one symbol: refused."""
        limits = parse_limits({"max_qty": 1000, "symbols": {"msft": {"max_qty": 10}}})
        checker = LimitChecker(limits, 0.0)
        assert checker.check("MSFT", 11, 1.0, 0.0) == "max_qty"
        assert checker.check("Msft", 10, 1.0, 0.0) == ""
        with pytest.raises(LimitsError, match="case is ignored"):
            parse_limits({"symbols": {"msft": {"max_qty": 1}, "MSFT": {"max_qty": 2}}})


@pytest.fixture
def fleet2(redis_url: str, node: str) -> Iterator[Fleet]:
    f = Fleet(redis_url, node, ["or-01", "or-02"])
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(30)
        yield f
    finally:
        f.stop()


@pytest.mark.slow
class TestLive:
    def test_kill_symbol_lowercase_stops_uppercase_on_every_host(self, fleet2: Fleet) -> None:
        """`kill --symbol msft`: every host blocks MSFT and msft, AAPL still trades."""
        epoch = fleet2.arm()["epoch"]
        code, rep = fleet2.cli_json("kill", "--symbol", "msft", "--reason", "bad feed")
        assert code == 0, rep
        assert [s["value"] for s in fleet2.cli_json("status")[1]["scopes"]] == ["MSFT"]
        for h in fleet2.hosts:
            with fleet2.client(h) as c:
                assert c.request("ORDER 1 MSFT BUY 1") == f"BLOCK 1 {epoch} killed"
                assert c.request("ORDER 2 msft BUY 1") == f"BLOCK 2 {epoch} killed"
                assert c.request("ORDER 3 AAPL BUY 1") == f"ALLOW 3 {epoch}"
