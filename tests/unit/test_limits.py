"""Local pre-trade limits: parsing, the static checks, the token bucket, and the gate using them."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.limits import (
    Limit,
    LimitChecker,
    Limits,
    LimitsError,
    TokenBucket,
    parse_limits,
)
from killswitch.core.enforce.protocol import handle_line
from killswitch.core.node.state import HostView, NodeState

SAMPLE = """
max_qty = 1000
max_notional = 50000.0
max_orders_per_s = 200

[symbols."AAPL"]
max_qty = 10

[symbols."ES"]
max_orders_per_s = 5
"""


def armed(epoch: int = 3) -> HostView:
    return HostView(max_epoch=epoch, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=epoch)


class TestParse:
    def test_sample_file(self) -> None:
        """A file with top-level limits and two symbol tables parses; symbols inherit the rest."""
        lim = parse_limits(tomllib.loads(SAMPLE))
        assert lim.default == Limit(1000, 50000.0, 200.0)
        assert lim.symbols["AAPL"] == Limit(10, 50000.0, 200.0)
        assert lim.symbols["ES"] == Limit(1000, 50000.0, 5.0)
        assert lim.own_rate == {"ES"}

    def test_empty_file_limits_nothing(self) -> None:
        """An empty file is valid and sets no limit."""
        assert parse_limits({}) == Limits()

    @pytest.mark.parametrize(
        ("doc", "names"),
        [
            ({"max_qtty": 5}, "max_qtty"),
            ({"max_qty": 0}, "max_qty"),
            ({"max_qty": 1.5}, "max_qty"),
            ({"max_qty": True}, "max_qty"),
            ({"max_notional": -1}, "max_notional"),
            ({"max_notional": float("nan")}, "max_notional"),
            ({"max_orders_per_s": "10"}, "max_orders_per_s"),
            ({"symbols": 5}, "symbols"),
            ({"symbols": {"X": 5}}, 'symbols."X"'),
            ({"symbols": {"X": {"max_qty": -2}}}, 'symbols."X".max_qty'),
            ({"symbols": {"X": {"qty": 2}}}, "'qty'"),
        ],
    )
    def test_bad_field_is_named(self, doc: dict[str, object], names: str) -> None:
        """Every bad value is refused with a message that names the field."""
        with pytest.raises(LimitsError, match=names.replace(".", r"\.")):
            parse_limits(doc)


class TestStatic:
    @pytest.mark.parametrize(
        ("limit", "qty", "price", "over"),
        [
            (Limit(), 10**9, 1e9, ""),
            (Limit(max_qty=100), 100, 0.0, ""),
            (Limit(max_qty=100), 101, 0.0, "max_qty"),
            (Limit(max_notional=1000.0), 10, 100.0, ""),
            (Limit(max_notional=1000.0), 10, 100.01, "max_notional"),
            (Limit(max_notional=1000.0), 1, 0.0, "max_notional"),  # no price: cannot prove it
            (Limit(max_qty=5, max_notional=1.0), 6, 1.0, "max_qty"),
        ],
    )
    def test_table(self, limit: Limit, qty: int, price: float, over: str) -> None:
        """qty and notional limits, inclusive bounds, and a priceless order under a notional limit."""
        assert limit.over(qty, price) == over


class TestBucket:
    def test_burst_then_rate(self) -> None:
        """A full bucket passes one second's worth at once, then refills at the rate."""
        b = TokenBucket(200, now=0.0)
        assert sum(b.take(0.0) for _ in range(600)) == 200
        assert sum(b.take(0.5) for _ in range(600)) == 100

    def test_clock_going_back_adds_nothing(self) -> None:
        """A monotonic clock never goes back, but if a caller's did, it must not mint tokens."""
        b = TokenBucket(1, now=10.0)
        assert b.take(10.0) is True
        assert b.take(5.0) is False

    @given(
        rate=st.floats(min_value=0.5, max_value=1000),
        gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
    )
    def test_never_more_than_burst_plus_rate_times_time(
        self, rate: float, gaps: list[float]
    ) -> None:
        """Over any run, passed orders <= capacity + rate x elapsed time."""
        b = TokenBucket(rate, now=0.0)
        now, passed = 0.0, 0
        for g in gaps:
            now += g
            passed += b.take(now)
        assert passed <= b.capacity + rate * now + 1e-6


class TestChecker:
    def test_symbol_rate_has_its_own_bucket(self) -> None:
        """ES draws from its own 5/s bucket; AAPL (override without a rate) and MSFT share 200/s."""
        c = LimitChecker(parse_limits(tomllib.loads(SAMPLE)), now=0.0)
        assert sum(not c.check("ES", 1, 1.0, 0.0) for _ in range(20)) == 5
        assert sum(not c.check("AAPL", 1, 1.0, 0.0) for _ in range(100)) == 100
        assert sum(not c.check("MSFT", 1, 1.0, 0.0) for _ in range(300)) == 100
        assert c.refused["max_orders_per_s"] == 15 + 200

    def test_static_refusal_spends_no_token(self) -> None:
        """Oversized orders do not use up the rate, so they cannot starve good orders."""
        c = LimitChecker(Limits(Limit(max_qty=1, max_orders_per_s=2)), now=0.0)
        assert [c.check("X", 5, 1.0, 0.0) for _ in range(10)] == ["max_qty"] * 10
        assert [c.check("X", 1, 1.0, 0.0) for _ in range(3)] == ["", "", "max_orders_per_s"]


class TestGateWithLimits:
    def rig(self) -> tuple[Gate, list[float], CapturingLogger]:
        t = [100.0]
        log = CapturingLogger()
        gate = Gate(
            "smars", "or-01", clock=lambda: t[0], log=log,
            limits=parse_limits(tomllib.loads(SAMPLE)),
        )  # fmt: skip
        gate.apply(armed(), lease_deadline=1e9)
        return gate, t, log

    @pytest.mark.parametrize(
        ("line", "reply"),
        [
            (b"ORDER o1 MSFT BUY 1000 50", b"ALLOW o1 3\n"),
            (b"ORDER o1 MSFT BUY 1001 1", b"BLOCK o1 3 limit\n"),
            (b"ORDER o1 MSFT BUY 100 500.01", b"BLOCK o1 3 limit\n"),
            (b"ORDER o1 MSFT BUY 100", b"BLOCK o1 3 limit\n"),
            (b"ORDER o1 AAPL BUY 10 1", b"ALLOW o1 3\n"),
            (b"ORDER o1 AAPL BUY 11 1", b"BLOCK o1 3 limit\n"),
        ],
    )
    def test_protocol_replies(self, line: bytes, reply: bytes) -> None:
        """qty, notional and a symbol override give `limit`; orders within them pass."""
        gate, _, _ = self.rig()
        assert handle_line(line, gate) == reply

    def test_burst_of_600_at_200_per_s(self) -> None:
        """600 orders at once with max_orders_per_s 200: 400 refused as `limit`, gate still open."""
        gate, _, log = self.rig()
        replies = [handle_line(f"ORDER o{i} MSFT BUY 1 1".encode(), gate) for i in range(600)]
        assert sum(r.endswith(b" limit\n") for r in replies) == 400
        assert gate.blocked_by == {"limit": 400}
        assert gate.allowed == 200 and gate.is_open
        assert gate.status()[0] is NodeState.ARMED
        assert sum(c.kwargs.get("reason") == "limit" for c in log.calls) == 400

    def test_rate_refills_on_the_gate_clock(self) -> None:
        """After a second on the gate's monotonic clock the bucket is full again."""
        gate, t, _ = self.rig()
        for i in range(250):
            gate.check(f"o{i}", "MSFT", "BUY", 1, 1.0)
        t[0] += 1.0
        assert sum(gate.allow(f"p{i}", "MSFT", "BUY", 1, 1.0) for i in range(250)) == 200

    def test_killed_beats_limit(self) -> None:
        """A closed gate refuses with the node's reason, not `limit`, and spends no token."""
        gate, _, _ = self.rig()
        gate.hold(4)
        assert gate.check("o1", "MSFT", "BUY", 5000, 1.0) == (False, 4, "killed")
        assert gate.limits is not None and gate.limits.refused["max_qty"] == 0


class TestCancel:
    @pytest.mark.parametrize("state", ["boot", "armed", "killed", "stale"])
    def test_cancel_allowed_in_every_state(self, state: str) -> None:
        """CANCEL gets ALLOW whatever the state, is counted apart and never logged as a block."""
        t = [100.0]
        log = CapturingLogger()
        gate = Gate("smars", "or-01", clock=lambda: t[0], log=log)
        if state != "boot":
            gate.apply(armed(3), lease_deadline=101.0)
        if state == "killed":
            gate.hold(4)
        if state == "stale":
            t[0] = 200.0
        epoch = {"boot": 0, "armed": 3, "killed": 4, "stale": 3}[state]
        assert handle_line(b"CANCEL c1 o-17", gate) == f"ALLOW c1 {epoch}\n".encode()
        assert handle_line(b"CANCEL c2", gate) == f"ALLOW c2 {epoch}\n".encode()
        assert (gate.cancels, gate.allowed, gate.blocked, log.calls) == (2, 0, 0, [])
