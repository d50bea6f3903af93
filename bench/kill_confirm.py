"""Kill to eight-of-eight confirmed, over many kills, on loopback with eight sidecar processes."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from bench.common import start_fleet, summary
from killswitch.ops import control
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import OperatorKeys, two_person_arm
from killswitch.store.store import Store

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]
KILLS = 200


async def _cycle(
    url: str, node: str, ops: OperatorKeys
) -> tuple[list[float], list[float], list[float], list[float]]:
    redis = Redis.from_url(url, decode_responses=True)
    store = Store(redis, node)
    server_side, client_side, arm_wall, arm_confirm = [], [], [], []
    try:
        for i in range(KILLS):
            for _ in range(5):  # a host briefly not reporting (loaded machine) refuses an arm
                t_arm = time.perf_counter()
                arm = await two_person_arm(store, ops, reason="bench", timeout=5)
                if arm.code == 0:
                    break
                await asyncio.sleep(1.0)
            assert arm.code == 0, arm.report
            if "elapsed_s" in arm.report:  # absent when a retry found the node already armed
                arm_wall.append(time.perf_counter() - t_arm)
                arm_confirm.append(arm.report["elapsed_s"])
            t0 = time.perf_counter()
            out = await control.kill(store, reason=f"bench {i}", operator="bench", timeout=5)
            client_side.append(time.perf_counter() - t0)
            assert out.code == 0, out.report
            server_side.append(out.report["elapsed_s"])
    finally:
        await redis.aclose()
    return server_side, client_side, arm_wall, arm_confirm


def run() -> dict[str, object]:
    with EmbeddedRedis() as server:
        f = start_fleet(server.url, "bench-kill", HOSTS)
        try:
            server_side, client_side, arm_wall, arm_confirm = asyncio.run(
                _cycle(server.url, "bench-kill", f.ops)
            )
        finally:
            f.stop()
    return {
        "kills": KILLS,
        "recorded_to_last_confirm_ms": summary(server_side, 1000),
        "kill_command_wall_ms": summary(client_side, 1000),
        # Both operators' calls back to back (two ssh-keygen signatures, every host verifying
        # the proof before it confirms): what signing and verification cost an arm.
        "two_person_arm_wall_ms": summary(arm_wall, 1000),
        "arm_recorded_to_last_confirm_ms": summary(arm_confirm, 1000),
    }
