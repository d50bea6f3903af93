"""The fleet kill loop end to end: eight sidecar processes, the aggregator, the operator CLI.

Every test here runs real processes against a real redis-server; waits are conditions with
deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis as redis_sync

from killswitch.core.node.state import NodeState
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.keys import NodeKeys
from killswitch.store.localstate import LocalState
from kstest import Fleet, GateClient, wait_until

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]


@pytest.fixture
def eight(redis_url: str, node: str) -> Iterator[Fleet]:
    """Eight sidecar processes and an aggregator (roster or-01..or-08, no volume cap)."""
    f = Fleet(redis_url, node, HOSTS)
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(20)
        yield f
    finally:
        f.stop()


class TestArmAndKill:
    """Arming needs two people; a kill is done only when all eight hosts confirmed it."""

    def test_unarmed_blocks_and_self_asserted_approvers_are_gone(self, eight: Fleet) -> None:
        """Before any arm every order is BLOCK unarmed; `--approver` is refused (exit 2); two keys arm."""
        for i, h in enumerate(HOSTS):
            assert eight.order(h, f"u{i}") == f"BLOCK u{i} 0 unarmed"
        old = eight.cli("arm", "--approver", "alice", "--approver", "bob", "--reason", "open")
        assert old.returncode == 2, old
        assert "--key" in old.stderr and "Traceback" not in old.stderr
        assert eight.cli_json("status")[1]["state"] == "UNARMED"
        rep = eight.arm()
        assert rep["state"] == "ARMED"
        assert rep["confirmed"] == HOSTS and rep["missing"] == []
        epoch = rep["epoch"]
        for i, h in enumerate(HOSTS):
            assert eight.order(h, f"a{i}") == f"ALLOW a{i} {epoch}"

    def test_kill_confirmed_by_all_eight_then_every_order_blocks(self, eight: Fleet) -> None:
        """`kill --json` exits 0 with eight confirmations, and every later order is BLOCK killed."""
        armed = eight.arm()
        code, rep = eight.cli_json("kill", "--reason", "runaway orders", "--operator", "sre-1")
        assert code == 0, rep
        assert rep["state"] == "KILLED"
        assert rep["confirmed"] == HOSTS and rep["missing"] == []
        assert rep["epoch"] > armed["epoch"]
        assert isinstance(rep["elapsed_s"], float) and rep["elapsed_s"] >= 0
        assert rep["reason"] == "runaway orders"
        for h in HOSTS:
            assert rep["hosts"][h]["gate"] == "closed"
            assert rep["hosts"][h]["epoch"] == rep["epoch"]
            # Confirmed means remembered: a restart now could not forget this kill.
            local = LocalState(eight.workdir / "state", eight.node, h).load()
            assert local[:2] == (rep["epoch"], NodeState.KILLED), h
        for i, h in enumerate(HOSTS):
            assert eight.order(h, f"k{i}") == f"BLOCK k{i} {rep['epoch']} killed"
        code, status = eight.cli_json("status")
        assert code == 0
        assert status["state"] == "KILLED" and status["epoch"] == rep["epoch"]
        assert status["confirmed"] == HOSTS and status["missing"] == []

        # Killing a killed node keeps its epoch and collects confirmations again.
        code, again = eight.cli_json("kill", "--reason", "belt and braces", "--operator", "sre-2")
        assert code == 0 and again["epoch"] == rep["epoch"] and again["missing"] == []

        code, audit = eight.cli_json("audit")
        actions = [(e["action"], e["actor"], e["reason"]) for e in audit["entries"]]
        assert actions[0][0] == "roster"
        assert actions[1:] == [
            ("arm_request", "alice", "test arm"),
            ("arm", "alice+bob", "test arm"),
            ("kill", "sre-1", "runaway orders"),
            ("kill", "sre-2", "belt and braces"),
        ]
        times = [e["time"] for e in audit["entries"]]
        assert times == sorted(times)
        code, last = eight.cli_json("audit", "--limit", "1")
        assert [e["reason"] for e in last["entries"]] == ["belt and braces"]

    def test_frozen_host_is_named_missing_and_confirms_after_sigcont(self, eight: Fleet) -> None:
        """A SIGSTOPped sidecar makes `kill --timeout 2` exit 3 naming exactly it; SIGCONT heals."""
        eight.arm()
        frozen = "or-05"
        eight.sidecars[frozen].send(signal.SIGSTOP)
        try:
            code, rep = eight.cli_json("kill", "--reason", "drill", "--timeout", "2")
        finally:
            eight.sidecars[frozen].send(signal.SIGCONT)
        assert code == 3, rep
        assert rep["missing"] == [frozen]
        assert rep["confirmed"] == [h for h in HOSTS if h != frozen]
        epoch = rep["epoch"]
        wait_until(lambda: eight.cli_json("status")[1]["missing"] == [], 10, 0.05, "or-05 confirms")
        assert eight.order(frozen, "late") == f"BLOCK late {epoch} killed"

    def test_arm_refused_while_a_roster_host_is_down(self, eight: Fleet) -> None:
        """Arming is refused (exit 4) and names the host while one roster host is not reporting."""
        eight.sidecars["or-03"].stop()
        wait_until(lambda: not eight.cli_json("status")[1]["hosts"]["or-03"]["alive"], 10, 0.05)
        res = eight.cli("arm", "--key", eight.ops.key("alice"))
        assert res.returncode == 4
        assert "or-03" in res.stdout
        assert eight.cli_json("status")[1]["state"] == "UNARMED"


class TestAggregateTrip:
    """The cap is the node's: eight unremarkable hosts together trip it."""

    def test_node_total_over_cap_trips_and_under_cap_never_does(
        self, redis_url: str, node: str
    ) -> None:
        """400 orders across 8 hosts under a cap of 400 stay ARMED; the 401st kills the node."""
        with Fleet(redis_url, node, HOSTS) as f:
            f.start_aggregator("--max-orders", "400", "--window", "30", "--tick", "0.05")
            f.wait_ready(20)
            epoch = f.arm()["epoch"]
            clients = {h: f.client(h) for h in HOSTS}
            try:
                for h, c in clients.items():  # 50 per host: each host is unremarkable
                    c.send(*[f"ORDER {h}-{i} AAPL BUY 10" for i in range(50)])
                    replies = [c.reply() for _ in range(50)]
                    assert all(r.startswith("ALLOW") for r in replies), replies
                r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
                agg_key = NodeKeys(node).aggregator

                def counted() -> bool:
                    return r.hget(agg_key, "node_orders") == "400"

                wait_until(counted, 10, 0.02, "aggregator counted all 400 orders")
                seen_tick = int(r.hget(agg_key, "tick_ms") or 0)
                wait_until(lambda: int(r.hget(agg_key, "tick_ms") or 0) > seen_tick + 200, 10, 0.02)
                status = f.cli_json("status")[1]
                assert status["state"] == "ARMED", status

                assert clients["or-08"].order("over") == f"ALLOW over {epoch}"
                wait_until(lambda: f.cli_json("status")[1]["state"] == "KILLED", 10, 0.02, "trip")
                status = f.cli_json("status")[1]
                assert status["cause"] == "max_orders"
                assert "401" in status["reason"]
                wait_until(lambda: f.cli_json("status")[1]["missing"] == [], 10, 0.02)
                for c in clients.values():
                    assert c.order("after").startswith("BLOCK after ") and c.order("x").endswith(
                        " killed"
                    )
                audit = f.cli_json("audit")[1]["entries"]
                trip = [e for e in audit if e["action"] == "trip"]
                assert len(trip) == 1 and trip[0]["cause"] == "max_orders"
                assert trip[0]["actor"].startswith("aggregator:")
                r.close()
            finally:
                for c in clients.values():
                    c.close()


class TestRedisLoss:
    """Silence is not consent: with Redis gone every gate closes by itself."""

    def test_redis_sigkill_blocks_every_host_then_recovers(self, node: str) -> None:
        """SIGKILL of redis-server: every host answers BLOCK stale within stale-after + one flush."""
        stale_after, flush = 0.5, 0.1
        server = EmbeddedRedis(appendonly=True).start()
        f = Fleet(server.url, node, HOSTS, stale_after=stale_after, flush_interval=flush)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(20)
            epoch = f.arm()["epoch"]
            replies: dict[str, list[str]] = {h: [] for h in HOSTS}
            stop = threading.Event()

            def hammer(h: str) -> None:
                with f.client(h) as c:
                    i = 0
                    while not stop.is_set():
                        replies[h].append(c.order(f"{h}-{i}"))
                        i += 1

            threads = [threading.Thread(target=hammer, args=(h,)) for h in HOSTS]
            for t in threads:
                t.start()
            wait_until(lambda: all(replies[h] for h in HOSTS), 10)
            t0 = time.monotonic()
            server.kill()
            # Requests sent after this instant are generated after every lease ran out.
            deadline = t0 + stale_after + flush
            wait_until(lambda: time.monotonic() > deadline, 5)
            marks = {h: len(replies[h]) for h in HOSTS}
            wait_until(lambda: all(len(replies[h]) > marks[h] for h in HOSTS), 10)
            stop.set()
            for t in threads:
                t.join()
            for h in HOSTS:
                after = replies[h][marks[h] :]
                assert after and all(r.endswith(" stale") for r in after), (h, after[:3])
                seq = replies[h]
                first_block = next(i for i, r in enumerate(seq) if r.startswith("BLOCK"))
                assert all(r.startswith("BLOCK") for r in seq[first_block:]), h
                assert all(
                    r.startswith("BLOCK") and r.endswith(f"{epoch} stale")
                    for r in seq[first_block:]
                )
                assert f.ping(h) == f"PONG STALE {epoch}"
            for h, proc in f.sidecars.items():
                assert proc.popen is not None and proc.popen.poll() is None, f"{h} died"

            server.start()  # same port, same AOF: the node state comes back
            f.wait_all(f"PONG ARMED {epoch}", timeout=15)
            for h in HOSTS:
                assert f.order(h, "back") == f"ALLOW back {epoch}"
        finally:
            f.stop()
            server.cleanup()


def storm_client(address: str) -> GateClient:
    """Connect, backing off like a real client when the listen backlog is momentarily full."""
    return wait_until(lambda: _try_connect(address), 10, 0.001, "connect during storm")


def _try_connect(address: str) -> GateClient | None:
    try:
        return GateClient(address)
    except BlockingIOError:
        return None


class TestGateRobustness:
    """Nothing a client sends can stop the sidecar or corrupt its counts."""

    def test_garbage_never_crashes_or_changes_counts(self, redis_url: str, node: str) -> None:
        """Garbage, huge lines, bad numbers, invalid UTF-8, half lines and connection storms."""
        with Fleet(redis_url, node, ["or-01"]) as f:
            f.start_aggregator("--tick", "0.05")
            wait_until(lambda: f.cli_json("status")[1]["hosts"]["or-01"]["alive"], 20, 0.05)
            f.arm()
            with f.client("or-01") as c:
                assert c.order("base").startswith("ALLOW")

            def counts() -> tuple[int, int]:
                h = f.cli_json("status")[1]["hosts"]["or-01"]
                return h["allowed"], h["blocked"]

            wait_until(lambda: counts() == (1, 0), 10, 0.05)
            bad: list[bytes] = [
                b"GARBAGE", b"ORDER", b"ORDER 1 AAPL BUY", b"ORDER 1 AAPL HOLD 10",
                b"ORDER 1 AAPL BUY -5", b"ORDER 1 AAPL BUY 0", b"ORDER 1 AAPL BUY 1e9",
                b"ORDER 1 AAPL BUY 99999999999999999999", b"ORDER 1 AAPL BUY 10 nan",
                b"ORDER 1 AAPL BUY 10 -1", b"ORDER \xff\xfe AAPL BUY 10", b"\x00\x01\x02",
                b"PING PONG", b"", b"   ", b"order 1 AAPL BUY 10", b"ORDER 1 AAPL BUY 10 1 2",
            ]  # fmt: skip
            with f.client("or-01") as c:
                for line in bad:
                    reply = c.request(line)
                    assert reply.startswith("ERR "), (line, reply)
                c.sock.sendall(b"X" * 100_000 + b"\n")
                assert c.reply() == "ERR line too long"
                assert c.ping().startswith("PONG ARMED")
                c.sock.sendall(b"ORDER half AA")  # half a line, then the rest
                c.sock.sendall(b"PL BUY \xff\n")
                assert c.reply().startswith("ERR")
            for _ in range(2000):
                with storm_client(f.address("or-01")) as c:
                    c.sock.sendall(b"ORDER 1 AAPL BU")  # dropped mid-line
            for _ in range(200):
                storm_client(f.address("or-01")).close()
            with f.client("or-01") as c:
                assert c.ping().startswith("PONG ARMED")
            proc = f.sidecars["or-01"].popen
            assert proc is not None and proc.poll() is None
            wait_until(lambda: counts() == (1, 0), 10, 0.05, "counts unchanged by garbage")
            assert json.dumps(counts()) == "[1, 0]"
