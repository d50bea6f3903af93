"""Trips fail closed, on real processes: nothing written into the leader lease silences a
trip, and an aggregator that could not verify an arm refuses to start.

Every wait is a condition with a deadline; assertions are outcomes, never timings.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
import redis as redis_sync

from killswitch.core.node import leader
from killswitch.store.keys import NodeKeys
from kstest import Fleet, wait_until

HOSTS = ["or-01", "or-02"]

pytestmark = pytest.mark.slow


class GhostLease:
    """Refreshes the node's leader lease under a token no aggregator holds, every 0.3 s."""

    def __init__(self, redis_url: str, node: str) -> None:
        self.r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        self.key = NodeKeys(node).leader
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.r.set(self.key, "ghost 00000000", px=1000)
            self._stop.wait(0.3)

    def __enter__(self) -> GhostLease:
        self.r.set(self.key, "ghost 00000000", px=1000)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.r.close()


@pytest.fixture
def fleet2(redis_url: str, node: str) -> Iterator[Fleet]:
    f = Fleet(redis_url, node, HOSTS)
    try:
        f.start()
        yield f
    finally:
        f.stop()


class TestGhostLease:
    """An unknown lease holder is not a leader: a standby kills what it leaves unacted."""

    def test_ghost_lease_does_not_silence_a_trip(self, fleet2: Fleet, redis_url: str) -> None:
        """A lease refreshed by a ghost every 0.3 s: the breach still kills, cause leader_silent."""
        f = fleet2
        with GhostLease(redis_url, f.node):
            agg = f.start_aggregator(
                "--max-orders", "20", "--window", "60", "--tick", "0.05", "--lease-ttl", "1"
            )
            f.wait_ready(30)
            epoch = f.arm()["epoch"]
            rep = f.cli_json("status")[1]
            assert rep["leader"] == "ghost" and rep["leader_doubt"] == "unknown", rep
            assert "UNKNOWN HOLDER" in f.cli("status").stdout
            with f.client("or-01") as c:
                c.send(*[f"ORDER a{i} AAPL BUY 1" for i in range(21)])
                assert all(c.reply().startswith(("ALLOW", "BLOCK")) for _ in range(21))
            wait_until(lambda: f.cli_json("status")[1]["state"] == "KILLED", 20, 0.05, "killed")
            rep = f.cli_json("status")[1]
            assert rep["cause"] == leader.LEADER_SILENT and rep["epoch"] > epoch, rep
            assert "ghost" in rep["reason"], rep
            trips = agg.logged("TRIP")
            assert (
                trips
                and trips[0]["cause"] == leader.LEADER_SILENT
                and trips[0]["doubt"] == "unknown"
            )
            assert f.order("or-02", "after").startswith("BLOCK")


class TestLeaderView:
    """`status` flags a lease holder whose published view is older than its lease."""

    def test_status_flags_a_leader_whose_view_is_old(self, fleet2: Fleet, redis_url: str) -> None:
        """A live leader, then its view frozen by hand under a renewed lease: status says VIEW OLD."""
        f = fleet2
        f.start_aggregator("--tick", "0.05", "--lease-ttl", "1")
        f.wait_ready(30)
        rep = f.cli_json("status")[1]
        assert rep["leader_doubt"] == "" and rep["leader_view_age_s"] < 1, rep
        token = rep["aggregator"]["lease"]
        f.aggregator.stop() if f.aggregator else None
        r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        try:
            # the holder's lease, kept alive by hand: its view is no longer refreshed
            r.set(NodeKeys(f.node).leader, token, px=60_000)
            wait_until(lambda: f.cli_json("status")[1]["leader_doubt"] == "silent", 10, 0.05)
            out = f.cli("status").stdout
            assert "VIEW OLD" in out and "leader_silent" in out, out
        finally:
            r.close()


class TestNeedsOperators:
    """An aggregator without the operators file refuses to start instead of never tripping."""

    def test_aggregator_without_operators_exits_2(self, redis_url: str, node: str) -> None:
        """No --operators and no KILLSWITCH_OPERATORS: exit 2, one line naming the setting."""
        env = Fleet(redis_url, node, HOSTS).env()
        env.pop("KILLSWITCH_OPERATORS")
        res = subprocess.run(
            [sys.executable, "-m", "killswitch", "aggregator", "--hosts", "or-01"],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 2, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "--operators" in lines[0], res.stderr
        assert "Traceback" not in res.stderr
