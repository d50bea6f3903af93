"""The version-split kill with and without a leftover local audit copy (issue 27): Redis
server time from one host's SIGHUP (its attested binary rewritten) to the recorded kill, on
four real sidecars and a real aggregator started fresh for each round, over an empty copy
and over an earlier deployment's copy with a `break` marker (set aside at start). Before the
fix the second never killed at all.
"""

from __future__ import annotations

import os
import signal
import statistics
from typing import Any

import redis as redis_sync

from killswitch.sim.embedded import EmbeddedRedis
from killswitch.store.keys import NodeKeys
from kstest import Fleet, wait_until
from kstest.auditcopies import leftover_copy

HOSTS = ["or-01", "or-02", "or-03", "or-04"]
ROUNDS = 5


def _install(f: Fleet, host: str, code: bytes = b"smars v2") -> None:
    d = f.release_dir(host)
    (d / "flags").mkdir(exist_ok=True)
    (d / "bin").write_bytes(code)
    (d / "flags" / "smars.toml").write_text("rlp = true\n")


def _server_ms(r: redis_sync.Redis) -> int:
    secs, micros = r.time()
    return int(secs) * 1000 + int(micros) // 1000


def _round(f: Fleet, r: redis_sync.Redis, copy: str | None, n: int) -> float:
    path = f.workdir / f"audit-bench-{n}.jsonl"
    if copy is not None:
        path.write_text(copy)
    agg = f.start_aggregator("--tick", "0.05", "--audit-log", str(path))
    try:
        wait_until(lambda: agg.events("AGGREGATOR_STARTED"), 120, 0.05, "aggregator")
        f.wait_ready(120)
        f.arm(reason="bench")
        f.wait_all("PONG ARMED", 30)
        _install(f, "or-04", b"smars v1 (power peg)")
        at = _server_ms(r)
        f.sidecars["or-04"].send(signal.SIGHUP)
        key = NodeKeys(f.node).state
        wait_until(lambda: r.hget(key, "cause") == "version_split", 60, 0.01, "split kill")
        killed = int(r.hget(key, "killed_ms") or 0)
    finally:
        _install(f, "or-04")
        f.sidecars["or-04"].send(signal.SIGHUP)
        agg.stop()
    wait_until(lambda: len(f.cli_json("status")[1]["releases"]) == 1, 60, 0.05, "converged")
    return (killed - at) / 1000


def run() -> dict[str, Any]:
    server = EmbeddedRedis()
    server.start()
    f = Fleet(server.url, f"splitbench{os.getpid()}", HOSTS, attest=("bin", "flags/*.toml"),
              extra_sidecar_args=("--attest-interval", "0.3"))  # fmt: skip
    out: dict[str, Any] = {}
    try:
        for h in HOSTS:
            _install(f, h)
        f.start()
        with redis_sync.Redis.from_url(server.url, decode_responses=True) as r:
            for name, copy in (("no_copy", None), ("leftover_copy", leftover_copy())):
                secs = [_round(f, r, copy, n) for n in range(ROUNDS)]
                out[name] = {
                    "rounds": ROUNDS,
                    "p50_s": round(statistics.median(secs), 3),
                    "max_s": round(max(secs), 3),
                }
    finally:
        f.stop()
        server.cleanup()
    return out
