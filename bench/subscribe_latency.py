"""How soon a subscribed trading process hears of a kill: kill call to `STATE KILLED` line.

Eight sidecar processes on loopback, one SUBSCRIBE connection to each; 100 cycles of arm then
`control.kill`. Times are this process's monotonic clock: from just before the kill call to
the moment each subscriber's `STATE KILLED` line is read.
"""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from bench.common import start_fleet, summary
from killswitch.ops import control
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import two_person_arm
from killswitch.store.store import Store
from kstest import Fleet

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
KILLS = 100


async def _subscriber(path: str, heard: dict[int, float]) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"SUBSCRIBE\n")
    try:
        while line := await reader.readline():
            parts = line.split()
            if parts[:2] == [b"STATE", b"KILLED"]:
                heard.setdefault(int(parts[2]), time.perf_counter())
    finally:
        writer.close()


async def _cycle(f: Fleet) -> dict[str, object]:
    redis = Redis.from_url(f.redis_url, decode_responses=True)
    store = Store(redis, f.node)
    heard: dict[str, dict[int, float]] = {h: {} for h in HOSTS}
    subs = [
        asyncio.create_task(_subscriber(f.address(h).removeprefix("unix:"), heard[h]))
        for h in HOSTS
    ]
    each, last, kill_wall = [], [], []
    before_return = 0
    try:
        for i in range(KILLS):
            arm = await two_person_arm(store, f.ops, reason="bench", timeout=5)
            assert arm.code == 0, arm.report
            t0 = time.perf_counter()
            out = await control.kill(store, reason=f"bench {i}", operator="bench", timeout=5)
            t1 = time.perf_counter()
            assert out.code == 0, out.report
            kill_wall.append(t1 - t0)
            epoch = out.report["epoch"]
            deadline = time.monotonic() + 5
            while not all(epoch in heard[h] for h in HOSTS):
                assert time.monotonic() < deadline, f"a subscriber never heard kill {epoch}"
                await asyncio.sleep(0.001)
            times = [heard[h][epoch] - t0 for h in HOSTS]
            each.extend(times)
            last.append(max(times))
            before_return += sum(heard[h][epoch] <= t1 for h in HOSTS)
    finally:
        for t in subs:
            t.cancel()
        await asyncio.gather(*subs, return_exceptions=True)
        await redis.aclose()
    return {
        "kills": KILLS,
        "subscribers": len(HOSTS),
        "kill_to_state_line_ms": summary(each, 1000),
        "kill_to_last_subscriber_ms": summary(last, 1000),
        "kill_command_wall_ms": summary(kill_wall, 1000),
        "heard_before_kill_returned": f"{before_return}/{KILLS * len(HOSTS)}",
    }


def run() -> dict[str, object]:
    with EmbeddedRedis() as server:
        f = start_fleet(server.url, "bench-sub", HOSTS)
        try:
            return asyncio.run(_cycle(f))
        finally:
            f.stop()
