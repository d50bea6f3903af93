"""Kill recorded to new connections refused, over eight fenced hosts (`kill --fence`).

Each host's sidecar fences its own trading network namespace (`--fence-netns`), joined to a
venue namespace by a veth pair. In every trading namespace a prober connects to the venue as
an allowed uid every 2 ms and prints the wall time of its first refused connection;
the figure is that time minus the kill's record time (Redis server time: the same clock, one
machine). Needs root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from datetime import datetime

from redis.asyncio import Redis

from bench.common import summary
from killswitch.ops import control
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import two_person_arm
from killswitch.store.store import Store
from kstest import Fleet
from kstest.netns import CLIENT_PYTHON, VENUE_ADDR, VENUE_PORT, NetPair, net_pair

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
KILLS = 12
NODE = "bench-fence"

# Prints "up" after its first connection, then the wall time of the first refused one.
_PROBE = f"""
import socket, struct, time
up = False
while True:
    try:
        c = socket.create_connection(({VENUE_ADDR!r}, {VENUE_PORT}), timeout=1)
        # closed with a reset: no TIME_WAIT, or 500 a second would use up the local ports
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        if not up:
            print("up", flush=True); up = True
    except (ConnectionRefusedError, ConnectionResetError):  # reset: caught mid-handshake
        if up:
            print(time.time(), flush=True); break
    except (TimeoutError, ConnectionAbortedError):  # caught by the fence mid-way (a dropped
        pass  # SYN-ACK, or cut by `ss -K`): the next attempt is the one that tells
    except OSError as e:  # anything else ends the run, named (the bench reads a number)
        print("prober failed:", repr(e), flush=True); break
    time.sleep(0.002)
"""


class FencedFleet(Fleet):
    pairs: dict[str, NetPair]

    def sidecar_args(self, host: str) -> list[str]:
        fence = ["--fence", f"{VENUE_ADDR}:{VENUE_PORT}", "--fence-netns", self.pairs[host].trading]
        return [*super().sidecar_args(host), *fence]


def _probe(pair: NetPair) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        pair.exec(pair.trading, CLIENT_PYTHON, "-c", _PROBE),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    if p.stdout.readline().strip() != "up":
        raise RuntimeError("prober could not reach the venue")
    return p


async def _cycle(f: FencedFleet, url: str) -> tuple[list[float], dict[int, float]]:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, NODE)
    out: list[float] = []
    kills: dict[int, float] = {}  # kill epoch -> its record time
    try:
        for i in range(KILLS):
            for _ in range(5):
                arm = await two_person_arm(store, f.ops, reason="bench", timeout=5)
                if arm.code == 0:
                    break
                await asyncio.sleep(1.0)
            assert arm.code == 0, arm.report
            # the previous kill fence is lifted by the arm: wait until every prober gets through
            probes = [_probe(f.pairs[h]) for h in HOSTS]
            try:
                res = await control.kill(
                    store, reason=f"bench {i}", operator="bench", timeout=10, fence=True
                )
                assert res.code == 0, res.message
                recorded = datetime.fromisoformat(res.report["changed_at"]).timestamp()
                kills[res.report["epoch"]] = recorded
                for p in probes:
                    assert p.stdout is not None
                    out.append(float(p.stdout.readline()) - recorded)
            finally:
                for p in probes:
                    p.kill()
                    p.wait()
                    if p.stdout is not None:
                        p.stdout.close()
    finally:
        await redis.aclose()
    return out, kills


def _raised(f: FencedFleet, kills: dict[int, float]) -> list[float]:
    """Kill recorded to each sidecar's FENCE_RAISED event (the rules committed), from the logs."""
    out = []
    for h in HOSTS:
        for ev in f.sidecars[h].events("FENCE_RAISED"):
            if ev.get("epoch") in kills:
                at = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
                out.append(at - kills[ev["epoch"]])
    return out


def run() -> dict[str, object]:
    with contextlib.ExitStack() as stack, EmbeddedRedis() as server:
        pairs = {h: stack.enter_context(net_pair("kb")) for h in HOSTS}
        f = FencedFleet(server.url, NODE, HOSTS)
        f.pairs = pairs
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(120)
            t0 = time.monotonic()
            lat, kills = asyncio.run(_cycle(f, server.url))
            wall = time.monotonic() - t0
            raised = _raised(f, kills)
        finally:
            f.stop()
    return {
        "hosts": len(HOSTS),
        "kills": KILLS,
        "recorded_to_refused_ms": summary(lat, 1000),
        "recorded_to_rules_committed_ms": summary(raised, 1000),
        "wall_s": round(wall, 1),
        "load_average_1m": round(os.getloadavg()[0], 1),  # the machine this ran on, honestly
    }
