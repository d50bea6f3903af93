"""A 200 MB attested file hashed while the sidecar keeps flushing and answering its gate.

An in-process sidecar on a real redis-server, with one 200 MB `--attest` file. Two phases:
3 s idle, then three forced re-hashes back to back (what SIGHUP does). In each, the gaps
between successful Redis round trips (the lease; the target is `--flush-interval`) and the
latency of gate requests sent back to back by another process on the unix socket.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import summary
from killswitch.runtime.config import parse_listen
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.redisconn import connect

SIZE_MB = 200
FLUSH_S = 0.1
IDLE_S = 3.0
REHASHES = 3


class _Timed(Sidecar):
    """Records the monotonic time of every successful round trip."""

    oks: list[float]

    async def sync_once(self, *, woken: bool | None = None) -> bool:
        trips = self.round_trips
        ok = await super().sync_once(woken=woken)
        if self.round_trips > trips:
            self.oks.append(time.monotonic())
        return ok


PINGER = """
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
f = s.makefile("rb")
end = time.monotonic() + float(sys.argv[2])
out = []
while time.monotonic() < end:
    t0 = time.monotonic()
    s.sendall(b"PING\\n")
    f.readline()
    out.append((t0, time.monotonic() - t0))
print(json.dumps(out))
"""


def _window(xs: list[float], t0: float, t1: float) -> list[float]:
    return [x for x in xs if t0 <= x <= t1]


async def _run(url: str, d: Path) -> dict[str, Any]:
    big = d / "trading-binary"
    with big.open("wb") as f:
        for _ in range(SIZE_MB):
            f.write(os.urandom(1 << 20))
    sock = d / "gate.sock"
    settings = SidecarSettings(
        node="bench", host="h1", redis_url=url, listen=(parse_listen(f"unix:{sock}"),),
        flush_interval=FLUSH_S, stale_after=1.0, state_dir=str(d / "state"),
        attest=(str(big),), attest_interval=3600.0,
    )  # fmt: skip
    redis = connect(url, socket_timeout=1.0, client_name="bench-attest")
    sc = _Timed(settings, redis)
    sc.oks = []
    await sc.start()
    try:
        t_start = time.monotonic()
        await sc.attest.scanned.wait()
        first_hash_s = time.monotonic() - t_start
        # The trading process is another process: gate requests back to back on the socket.
        pinger = await asyncio.create_subprocess_exec(
            sys.executable, "-c", PINGER, str(sock), str(IDLE_S + REHASHES * 4 * first_hash_s + 5),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        idle0 = time.monotonic()
        await asyncio.sleep(IDLE_S)
        idle1 = hash0 = time.monotonic()
        for _ in range(REHASHES):  # forced, as on SIGHUP: every byte read again
            sc.attest.scanned.clear()
            sc.attest.rehash()
            await sc.attest.scanned.wait()
        hash1 = time.monotonic()
        out, _ = await pinger.communicate()
        pings = [(float(a), float(b)) for a, b in json.loads(out)]
    finally:
        await sc.stop()
        await redis.aclose()

    def phase(t0: float, t1: float) -> dict[str, Any]:
        oks = _window(sc.oks, t0, t1)
        gaps = [b - a for a, b in itertools.pairwise(oks)]
        lat = [dt for at, dt in pings if t0 <= at <= t1]
        return {
            "seconds": round(t1 - t0, 2),
            "flush_gap_ms": summary(gaps, 1000),
            "gate_ping_us": summary(lat, 1e6),
        }

    hash_s = (hash1 - hash0) / REHASHES
    return {
        "file_mb": SIZE_MB,
        "first_hash_s": round(first_hash_s, 2),
        "hash_s_under_load": round(hash_s, 2),
        "hash_mb_per_s": round(SIZE_MB / hash_s, 1),
        "release_ok": sc.attest.current.problem == "",
        "idle": phase(idle0, idle1),
        "hashing": phase(hash0, hash1),
    }


def run() -> dict[str, Any]:
    with EmbeddedRedis() as server, tempfile.TemporaryDirectory() as d:
        return asyncio.run(_run(server.url, Path(d)))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
