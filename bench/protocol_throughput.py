"""Gate protocol throughput of one sidecar process with a pipelining client."""

from __future__ import annotations

import asyncio
import time

from bench.common import start_fleet
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.loadgen import open_gate

BATCH = 1000
SECONDS = 3.0


async def _pipelined(address: str) -> float:
    reader, writer = await open_gate(address)
    payload = b"".join(f"ORDER {i} KCG BUY 100\n".encode() for i in range(BATCH))
    done = 0
    t0 = time.perf_counter()
    try:
        while time.perf_counter() - t0 < SECONDS:
            writer.write(payload)
            await writer.drain()
            for _ in range(BATCH):
                line = await reader.readline()
                assert line.startswith(b"ALLOW"), line
            done += BATCH
        return done / (time.perf_counter() - t0)
    finally:
        writer.close()
        await writer.wait_closed()


async def _one_at_a_time(address: str, n: int = 5000) -> float:
    reader, writer = await open_gate(address)
    t0 = time.perf_counter()
    try:
        for i in range(n):
            writer.write(f"ORDER {i} KCG BUY 100\n".encode())
            await reader.readline()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        writer.close()
        await writer.wait_closed()


def run() -> dict[str, float]:
    with EmbeddedRedis() as server:
        f = start_fleet(server.url, "bench-proto", ["h1"])
        try:
            f.arm()
            addr = f.address("h1")
            return {
                "pipelined_orders_per_s_unix": round(asyncio.run(_pipelined(addr))),
                "request_reply_roundtrip_us_unix": round(asyncio.run(_one_at_a_time(addr)), 1),
            }
        finally:
            f.stop()
