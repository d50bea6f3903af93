"""Time to blocked and orders allowed under each fault, with three sidecar processes at the
default settings (flush 0.1 s, stale-after 1.0 s). Figures for docs/RELIABILITY.md.

"Time to blocked" is measured from the fault (or from the kill being recorded) to the send
time of the first order the host refused, with a client sending orders back to back.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import redis as redis_sync
from redis.asyncio import Redis

from bench.common import summary
from killswitch.ops import control
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store
from kstest import Fleet, Hammer, Proc, wait_until
from kstest.faultthread import ThreadedFaultProxy

HOSTS = ["or-01", "or-02", "or-03"]
ROUNDS = 5


def _arm(f: Fleet, url: str) -> int:
    return int(f.arm("--redis", url)["epoch"])


def _first_block(h: Hammer, host: str, t0: float, suffix: str = "") -> tuple[float, int]:
    """(seconds from t0 to the first BLOCK sent after t0, ALLOWs sent after that BLOCK)."""
    seq = [(s, r) for s, r in list(h.replies[host]) if s >= t0]
    i = next(i for i, (_, r) in enumerate(seq) if r.startswith("BLOCK") and r.endswith(suffix))
    return seq[i][0] - t0, sum(r.startswith("ALLOW") for _, r in seq[i:])


async def _kill(url: str, node: str) -> tuple[int, float]:
    redis = Redis.from_url(url, decode_responses=True)
    try:
        t = time.monotonic()
        out = await control.kill(Store(redis, node), reason="bench", operator="b", timeout=10)
        assert out.code == 0, out.report
        return int(out.report["epoch"]), t
    finally:
        await redis.aclose()


def _proxied(server: EmbeddedRedis, node: str) -> tuple[Fleet, ThreadedFaultProxy]:
    proxy = ThreadedFaultProxy("127.0.0.1", server.port).start()
    f = Fleet(proxy.url, node, HOSTS)
    f.start()
    f.start_aggregator("--redis", server.url, "--tick", "0.05")
    wait_until(lambda: f.ready(server.url), 30, 0.05)
    return f, proxy


def blackhole(server: EmbeddedRedis) -> dict[str, Any]:
    f, proxy = _proxied(server, "bench-blackhole")
    times, after = [], 0
    try:
        for _ in range(ROUNDS):
            epoch = _arm(f, server.url)
            with Hammer(f, HOSTS) as h:
                t0 = time.monotonic()
                proxy.blackhole()
                wait_until(lambda: all(f.ping(x).startswith("PONG STALE") for x in HOSTS), 10)
                h.wait_for_more(time.monotonic())
            for host in HOSTS:
                dt, allowed = _first_block(h, host, t0, "stale")
                times.append(dt)
                after += allowed
            proxy.heal()
            f.wait_all(f"PONG ARMED {epoch}", 15)
    finally:
        f.stop()
        proxy.stop()
    return {"time_to_blocked_ms": summary(times, 1000), "allowed_after_first_block": after}


def deaf_subscriber(server: EmbeddedRedis) -> dict[str, Any]:
    f, proxy = _proxied(server, "bench-deaf")
    times, after = [], 0
    try:
        for _ in range(ROUNDS):
            _arm(f, server.url)
            proxy.blackhole()
            f.wait_all("PONG STALE", 10)
            proxy.heal_new()
            with Hammer(f, HOSTS) as h:
                _, t_kill = asyncio.run(_kill(server.url, f.node))
                h.wait_for_more(time.monotonic())
            for host in HOSTS:
                dt, allowed = _first_block(h, host, t_kill, "killed")
                times.append(dt)
                after += allowed
    finally:
        f.stop()
        proxy.stop()
    return {"kill_to_blocked_ms": summary(times, 1000), "allowed_after_first_block": after}


def restart_then_kill(server: EmbeddedRedis) -> dict[str, Any]:
    f = Fleet(server.url, "bench-restart", HOSTS)
    times, after = [], 0
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        wait_until(lambda: f.ready(server.url), 30, 0.05)
        for _ in range(ROUNDS):
            _arm(f, server.url)
            with Hammer(f, HOSTS) as h:
                server.kill()
                server.start()
                time.sleep(0.15)
                _, t_kill = asyncio.run(_kill(server.url, f.node))
                h.wait_for_more(time.monotonic())
            for host in HOSTS:
                dt, allowed = _first_block(h, host, t_kill, "killed")
                times.append(dt)
                after += allowed
            wait_until(lambda: f.ready(server.url), 30, 0.05)
    finally:
        f.stop()
    return {"kill_to_blocked_ms": summary(times, 1000), "allowed_after_first_block": after}


def empty_restart() -> dict[str, Any]:
    server = EmbeddedRedis().start()
    f = Fleet(server.url, "bench-empty", HOSTS)
    alarm, allowed = [], 0
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        wait_until(lambda: f.ready(server.url), 30, 0.05)
        for _ in range(ROUNDS):
            _arm(f, server.url)
            asyncio.run(_kill(server.url, f.node))
            with Hammer(f, HOSTS) as h:
                t0 = time.monotonic()
                server.restart(empty=True)

                def reported() -> bool:
                    hs = f.cli_json("status", "--redis", server.url)[1]["hosts"]
                    return len(hs) == len(HOSTS) and all(s["regression"] for s in hs.values())

                wait_until(reported, 30, 0.02)
                alarm.append(time.monotonic() - t0)
                h.wait_for_more(time.monotonic())
            allowed += sum(
                len([r for r in h.sent_after(x, t0) if r.startswith("ALLOW")]) for x in HOSTS
            )
    finally:
        f.stop()
        server.cleanup()
    return {"restart_to_regression_in_status_ms": summary(alarm, 1000), "allowed": allowed}


def _server_ms(r: redis_sync.Redis) -> int:
    secs, micros = r.time()
    return int(secs) * 1000 + int(micros) // 1000


def leader_freeze(server: EmbeddedRedis) -> dict[str, Any]:
    node = "bench-leader"
    f = Fleet(server.url, node, ["or-01"])
    procs: list[Proc] = []
    takeover: list[float] = []
    r = redis_sync.Redis.from_url(server.url, decode_responses=True)
    state_key = NodeKeys(node).state
    try:
        f.start()
        for name in ("agg-a", "agg-b"):
            p = Proc(name, [sys.executable, "-m", "killswitch", "aggregator", "--hosts", "or-01",
                            "--instance", name, "--max-orders", "5", "--window", "60",
                            "--tick", "0.05"], f.workdir / f"{name}.log")  # fmt: skip
            p.start(f.env())
            procs.append(p)
            wait_until(lambda p=p: p.events("AGGREGATOR_STARTED"), 30)  # type: ignore[misc]
        for _ in range(ROUNDS):
            wait_until(lambda: f.ready(server.url), 30, 0.05)
            _arm(f, server.url)
            lead = f.cli_json("status")[1]["leader"]
            frozen = next(p for p in procs if p.name == lead)
            frozen.send(signal.SIGSTOP)
            # Both ends on Redis server time, polled with one client: no CLI start-up (about
            # 0.5 s per `status` call) is counted in the figure.
            frozen_ms = _server_ms(r)
            with f.client("or-01") as c:
                c.send(*[f"ORDER b{i} X BUY 1" for i in range(6)])
                [c.reply() for _ in range(6)]
            wait_until(lambda: r.hget(state_key, "state") == "KILLED", 30, 0.005)
            takeover.append((int(r.hget(state_key, "killed_ms") or 0) - frozen_ms) / 1000)
            frozen.send(signal.SIGCONT)
            wait_until(lambda fr=frozen: fr.events("LEADER_LOST"), 30)  # type: ignore[misc]
        trips = [e for e in f.cli_json("audit")[1]["entries"] if e["action"] == "trip"]
    finally:
        for p in procs:
            p.stop()
        f.stop()
        r.close()
    return {
        "freeze_to_trip_by_standby_ms": summary(takeover, 1000),
        "trips": len(trips),
        "anomalies": ROUNDS,
    }


def run() -> dict[str, object]:
    with EmbeddedRedis(appendonly=True) as server:
        return {
            "blackhole": blackhole(server),
            "deaf_subscriber": deaf_subscriber(server),
            "kill_150ms_after_restart": restart_then_kill(server),
            "empty_restart": empty_restart(),
            "leader_freeze": leader_freeze(server),
        }
