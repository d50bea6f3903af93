"""The fleet volume rule's decisions (pure), and the rule live on three nodes of one Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.rules.fleetcap import FleetView, evaluate, parse_view
from killswitch.sim.embedded import EmbeddedRedis
from kstest import Fleet, GateClient, wait_until

W = 10_000  # window ms
NOW = 1_000_000


def fresh(orders: int, window_ms: int = W) -> FleetView:
    return FleetView(orders, NOW - 100, window_ms)


class TestParseView:
    """Only well-formed, finite, non-negative numbers are read from a node's view hash."""

    @pytest.mark.parametrize(
        ("view", "want"),
        [
            ({"node_orders": "12", "tick_ms": "5", "window_s": "10"}, FleetView(12, 5, 10_000)),
            (
                {"node_orders": "1e400", "tick_ms": "5", "window_s": "10"},
                FleetView(None, 5, 10_000),
            ),
            ({"node_orders": "nan", "tick_ms": "x", "window_s": ""}, FleetView(None, None, None)),
            (
                {"node_orders": "-3", "tick_ms": "inf", "window_s": "0.5"},
                FleetView(None, None, 500),
            ),
            ({}, FleetView(None, None, None)),
        ],
    )
    def test_fields(self, view: dict[str, str], want: FleetView) -> None:
        """Junk in any field reads as unknown, never as a number."""
        assert parse_view(view) == want


class TestEvaluate:
    """Fresh views over the same window are summed; the sum trips only strictly above the cap."""

    @pytest.mark.parametrize(
        ("orders", "cap", "trip", "level"),
        [
            ([100, 100, 100], 300, False, 90),
            ([100, 100, 101], 300, True, 90),
            ([50, 50, 50], 300, False, 50),
            ([80, 80, 80], 300, False, 75),
            ([0, 0, 0], 300, False, 0),
        ],
    )
    def test_sum_and_levels(self, orders: list[int], cap: int, trip: bool, level: int) -> None:
        """Three nodes under any per-node cap can still trip the fleet cap together."""
        views = {f"n{i}": fresh(o) for i, o in enumerate(orders)}
        d = evaluate(views, cap=cap, window_ms=W, now_ms=NOW, max_age_ms=2000)
        assert (d.total, d.trip, d.level) == (sum(orders), trip, level)
        assert d.counted == ("n0", "n1", "n2")

    def test_stale_and_other_windows_are_named_not_summed(self) -> None:
        """A node with an old view or another window length is named and left out of the sum."""
        views = {
            "ok": fresh(10),
            "old": FleetView(1000, NOW - 5000, W),
            "never": FleetView(None, None, None),
            "short": fresh(1000, window_ms=1000),
        }
        d = evaluate(views, cap=100, window_ms=W, now_ms=NOW, max_age_ms=2000)
        assert d.total == 10 and not d.trip
        assert d.stale == ("never", "old") and d.other_window == ("short",)

    @given(st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 10**6)), st.integers(1, 10**7))
    def test_trip_iff_total_above_cap(self, orders: dict[str, int], cap: int) -> None:
        """For any fresh views, the rule trips exactly when their sum exceeds the cap."""
        d = evaluate(
            {n: fresh(o) for n, o in orders.items()},
            cap=cap, window_ms=W, now_ms=NOW, max_age_ms=2000,
        )  # fmt: skip
        assert d.total == sum(orders.values())
        assert d.trip == (d.total > cap)


@pytest.fixture
def three_nodes(own_redis: EmbeddedRedis, node: str) -> Iterator[list[Fleet]]:
    """Three armed nodes of two hosts each on a Redis of their own; each node's cap is 1000
    per 2 s, and every aggregator also runs the fleet cap of 300 (one of them acts)."""
    fleets = [Fleet(own_redis.url, f"{node}-{i}", ["or-01", "or-02"]) for i in range(3)]
    try:
        for f in fleets:
            f.start()
            f.start_aggregator(
                "--tick", "0.05", "--max-orders", "1000", "--window", "2",
                "--fleet-max-orders", "300",
            )  # fmt: skip
        for f in fleets:
            f.wait_ready(30)
            f.arm()
        yield fleets
    finally:
        for f in fleets:
            f.stop()


def burst(f: Fleet, host: str, n: int) -> list[str]:
    with GateClient(f.address(host)) as c:
        c.send(*(f"ORDER b{i} AAPL BUY 1" for i in range(n)))
        return [c.reply() for _ in range(n)]


class TestFleetCapLive:
    """Volume spread over nodes, each under its own cap, trips every node with cause fleet_cap."""

    def test_spread_volume_kills_every_node(self, three_nodes: list[Fleet]) -> None:
        """120 orders on each of three nodes (360 > 300, each node far under 1000) kills all three."""
        for f in three_nodes:
            replies = burst(f, "or-01", 120)
            assert all(r.startswith("ALLOW") for r in replies)

        def all_killed() -> bool:
            return all(f.cli_json("status")[1]["state"] == "KILLED" for f in three_nodes)

        wait_until(all_killed, 20, 0.1, "every node killed by the fleet cap")
        for f in three_nodes:
            rep = f.cli_json("status")[1]
            assert rep["cause"] == "fleet_cap", rep
            assert "fleet cap" in rep["reason"]
            f.wait_all("PONG KILLED")

    def test_volume_under_the_fleet_cap_kills_nothing(self, three_nodes: list[Fleet]) -> None:
        """90 orders on each node (270 <= 300) leaves every node armed."""
        for f in three_nodes:
            burst(f, "or-02", 90)

        # The fleet leader saw all of it (90% of the cap) and killed nothing.
        def warned() -> bool:
            return any(
                e.get("total") == 270
                for f in three_nodes
                if f.aggregator is not None
                for e in f.aggregator.events("FLEET_LIMIT_WARNING")
            )

        wait_until(warned, 20, 0.1, "the fleet leader warning at 270 of 300")
        for f in three_nodes:
            assert f.cli_json("status")[1]["state"] == "ARMED"
        assert not [
            e for f in three_nodes if f.aggregator for e in f.aggregator.events("FLEET_TRIP")
        ]
