"""A second live process claiming a host's name: both block `duplicate`, and `status` names it.

The decision is pure (`core.node.duplicate`, a table below); the live test runs two real sidecar
processes with one host name against an armed node.
"""

from __future__ import annotations

import pytest

from killswitch.core.node.duplicate import DuplicateWatch
from kstest import Fleet, GateClient, Proc, wait_until

HOLD = 3000


class TestWatch:
    @pytest.mark.parametrize(
        ("sightings", "blocked"),
        [
            ([("old", "1")], False),  # the first call finds the last boot's report: a restart
            ([("", ""), ("me", "2")], False),  # no report yet, then only our own writes
            ([("old", "1"), ("me", "2"), ("me", "2")], False),
            ([("me", "2"), ("other", "9")], True),  # someone wrote between two of our calls
            ([("old", "1"), ("other", "9"), ("me", "2")], True),  # held past the sighting
        ],
    )
    def test_sightings(self, sightings: list[tuple[str, str]], blocked: bool) -> None:
        """Only a foreign boot between two of our own calls is a duplicate, held for a while."""
        w = DuplicateWatch("me", HOLD)
        problem = ""
        for i, (boot, pid) in enumerate(sightings):
            problem = w.observe(boot, pid, 1000 + i * 100)
        assert bool(problem) is blocked
        if blocked:
            assert "pid 9, boot other" in problem

    def test_released_after_the_hold(self) -> None:
        """No sighting for `hold_ms`: the host no longer blocks as a duplicate."""
        w = DuplicateWatch("me", HOLD)
        w.observe("", "", 0)
        assert w.observe("other", "9", 100)
        assert w.observe("me", "1", 100 + HOLD - 1)
        assert w.observe("me", "1", 100 + HOLD) == ""


@pytest.mark.slow
class TestLive:
    def test_two_processes_one_host_name_both_block(self, redis_url: str, node: str) -> None:
        """A second `sidecar --host or-01` beside the first: both answer BLOCK duplicate and
        `status` names the host; the second stopped, the first opens again."""
        f = Fleet(redis_url, node, ["or-01", "or-02"])
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            epoch = f.arm()["epoch"]
            assert f.order("or-01", "a") == f"ALLOW a {epoch}"
            twin_sock = f.workdir / "twin.sock"
            args = f.sidecar_args("or-01")
            args[args.index("--listen") + 1] = f"unix:{twin_sock}"
            args[args.index("--state-dir") + 1] = str(f.workdir / "twin-state")
            twin = Proc("twin", args, f.workdir / "twin.log")
            twin.start(f.env())
            try:

                def blocks(address: str) -> bool:
                    with GateClient(address, timeout=2.0) as c:
                        return c.request("ORDER d AAPL BUY 1") == f"BLOCK d {epoch} duplicate"

                wait_until(lambda: twin_sock.exists() and blocks(f"unix:{twin_sock}"), 60, 0.05)
                wait_until(lambda: blocks(f.address("or-01")), 30, 0.05, "the first blocks too")
                assert f.order("or-02", "b") == f"ALLOW b {epoch}"  # the rest trades
                host = f.cli_json("status")[1]["hosts"]["or-01"]
                assert "duplicate" in host["regression"], host
                assert "duplicate" in f.cli("status").stdout
                assert twin.logged("DUPLICATE_HOST")
            finally:
                twin.stop()
            wait_until(lambda: f.order("or-01", "c") == f"ALLOW c {epoch}", 30, 0.05, "reopens")
        finally:
            f.stop()
