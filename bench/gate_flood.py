"""A real client's first reply while thousands of connections hold half-sent lines.

4,096 connections each send a partial `ORDER` line and hold it. Then a real client connects
and sends `PING`, reconnecting on refusal, and the time to its `PONG` is measured. Three
floods: connections that never completed a line, connections that completed one and then
hold a partial line, and connections that said `PING` once and then sit idle (no partial
line: only eviction of the longest-idle connection at the cap frees a slot).
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


FLOODS = {
    "partial_line_only": b"ORDER 1 AAPL BU",
    "completed_a_line_then_partial": b"PING\nORDER 1 AAPL BU",
    "pinged_once_then_idle": b"PING\n",
}


def _open_flood(path: str, first: bytes) -> list[socket.socket]:
    socks = []
    for _ in range(FLOOD):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            s.sendall(first)
        except OSError:
            s.close()
            continue
        socks.append(s)
    if first == FLOODS["pinged_once_then_idle"]:
        socks = _answered(socks)
    return socks


def _answered(socks: list[socket.socket]) -> list[socket.socket]:
    """Only the connections the sidecar answered (PONG): every slot then holds a client
    that has spoken, none is still waiting to be read."""
    kept = []
    for s in socks:
        s.settimeout(10.0)
        try:
            reply = s.recv(64)
        except OSError:
            reply = b""
        if reply.startswith(b"PONG"):
            kept.append(s)
        else:
            s.close()
    return kept


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
        for i, (key, first) in enumerate(FLOODS.items()):
            f = _Fleet(server.url, f"bench-gflood-{i}", ["or-01"])
            f.start()
            path = f.address("or-01").removeprefix("unix:")
            try:
                flood = _open_flood(path, first)
                served, attempts = _served_after(path)
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
