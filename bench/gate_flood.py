"""A real client's first reply while thousands of connections hold half-sent lines.

4,096 connections each send a partial `ORDER` line and hold it. Then a real client connects
and sends `PING`, reconnecting on refusal, and the time to its `PONG` is measured. Two
floods: connections that never completed a line (evictable at the cap), and connections
that completed one and then hold a partial line (only the line timeout frees them).
`BENCH_SIDECAR_SRC=DIR` runs the sidecar from another source tree (before/after).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from killswitch.sim.embedded import EmbeddedRedis
from kstest import Fleet

FLOOD = 4096
GIVE_UP_S = 30.0


class _Fleet(Fleet):
    def env(self) -> dict[str, str]:
        env = super().env()
        src = os.environ.get("BENCH_SIDECAR_SRC")
        if src:
            env["PYTHONPATH"] = src
            env["PYTHONSAFEPATH"] = "1"  # `-m` must not put this tree's cwd first
        return env


def _open_flood(path: str, spoke_first: bool) -> list[socket.socket]:
    socks = []
    for _ in range(FLOOD):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall((b"PING\n" if spoke_first else b"") + b"ORDER 1 AAPL BU")
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


def _served_after(path: str) -> tuple[float | None, int]:
    """Seconds until a PING gets its PONG (None: not within GIVE_UP_S), and attempts made."""
    t0 = time.monotonic()
    attempts = 0
    while time.monotonic() - t0 < GIVE_UP_S:
        attempts += 1
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(max(0.1, GIVE_UP_S - (time.monotonic() - t0)))
        try:
            s.connect(path)
            s.sendall(b"PING\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
            if buf.startswith(b"PONG") or b"\nPONG" in buf:
                return time.monotonic() - t0, attempts
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.05)  # a client's reconnect back-off
    return None, attempts


def run() -> dict[str, Any]:
    out: dict[str, Any] = {"sidecar_src": os.environ.get("BENCH_SIDECAR_SRC", "this tree")}
    with EmbeddedRedis() as server:
        for spoke_first in (False, True):
            f = _Fleet(server.url, f"bench-gflood-{int(spoke_first)}", ["or-01"])
            f.start()
            path = f.address("or-01").removeprefix("unix:")
            try:
                flood = _open_flood(path, spoke_first)
                served, attempts = _served_after(path)
                key = "completed_a_line_then_partial" if spoke_first else "partial_line_only"
                out[key] = {
                    "flood_connections_opened": len(flood),
                    "real_client_served_s": None if served is None else round(served, 3),
                    "attempts": attempts,
                }
                for s in flood:
                    s.close()
            finally:
                f.stop()
    return out
