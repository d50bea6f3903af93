"""The FIX gateway's cost: latency it adds per order, orders per second on one core.

A real sidecar process (armed, its Redis round trips running) relays raw FIX between a
client and a venue written here for speed (pre-encoded NewOrderSingles; the venue answers
each with one framed message, or only counts). Latency: one order at a time, round trip
through the relay minus round trip on a direct TCP connection to the same venue, same run,
interleaved in rounds. Throughput: the client pipelines orders, the venue counts them; the
sidecar is pinned to one CPU. Also the relay's own CPU per order, without sockets, and the
sidecar's CPU time per round trip (from /proc: what it costs whatever else the machine runs).

Beside them, a relay that only copies bytes (`bench.barerelay`, its own process on the same
CPU): the cost of any process in the path on this machine.

With KILLSWITCH_BENCH_BEFORE=<a checkout of an earlier revision> a second sidecar runs that
revision's code beside this one (same venue, same CPU), and every round also times it:
before and after in the same run, on the same machine load.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import summary
from killswitch.core.enforce.fixwire import Framer, encode
from killswitch.sim.embedded import EmbeddedRedis, free_port
from kstest import Fleet, Proc, wait_until

ROUNDS, PER_ROUND = 10, 500  # latency samples: 5,000 each way
PIPELINED = 200_000
IDLE_S = 5.0  # seconds without orders over which the sidecar's own CPU use is measured


def order(seq: int) -> bytes:
    return encode(b"FIX.4.4", [
        (b"35", b"D"), (b"49", b"CLIENT"), (b"56", b"VENUE"), (b"34", b"%d" % seq),
        (b"52", b"20260101-00:00:00.000"), (b"11", b"o-%d" % seq), (b"21", b"1"),
        (b"55", b"AAPL"), (b"54", b"1"), (b"60", b"20260101-00:00:00"), (b"38", b"100"),
        (b"40", b"2"), (b"44", b"10.5"),
    ])  # fmt: skip


REPLY = encode(b"FIX.4.4", [(b"35", b"0"), (b"49", b"VENUE"), (b"56", b"CLIENT"), (b"34", b"1"),
                            (b"52", b"20260101-00:00:00.000")])  # fmt: skip


class Venue:
    """Answers every order with REPLY (echo mode) or only counts orders (count mode)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock = socket.create_server(("127.0.0.1", self.port))
        self.counted = 0
        self.echo = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        tail = b""  # a CheckSum marker may straddle two reads: keep its first 3 bytes
        while data := conn.recv(1 << 16):
            n = (tail + data).count(b"\x0110=")
            tail = data[-3:]
            self.counted += n
            if self.echo:
                conn.sendall(REPLY * n)


def roundtrips(port: int, n: int) -> list[float]:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msgs = [order(i + 1) for i in range(n)]
        out = []
        for m in msgs:
            t0 = time.perf_counter()
            s.sendall(m)
            got = b""
            while len(got) < len(REPLY):
                got += s.recv(4096)
            out.append(time.perf_counter() - t0)
        return out


def pipelined(port: int, venue: Venue, n: int) -> float:
    payload = b"".join(order(i + 1) for i in range(n))
    venue.echo, start = False, venue.counted
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        s.sendall(payload)
        while venue.counted - start < n:
            time.sleep(0.001)
        elapsed = time.perf_counter() - t0
    venue.echo = True
    return n / elapsed


def relay_cpu_us(n: int = 50_000) -> float:
    """Framing, the gate and the relay's decisions per order, without sockets: CPU time of
    this process (on a shared machine the wall clock counts other processes' turns too)."""
    from killswitch.core.enforce.gate import Gate
    from killswitch.core.node.state import HostView, NodeState
    from killswitch.sidecar.fixgateway import FixGateway, FixSession

    gate = Gate("bench", "h1")
    gate.apply(HostView(1, NodeState.ARMED, NodeState.ARMED, 1, 1), time.monotonic() + 3600)
    gw = FixGateway(gate, [], logger=None)
    session = FixSession(gw, None, 1)  # type: ignore[arg-type]
    sink: list[bytes] = []

    class Sink:
        def write(self, data: bytes) -> None:
            sink.append(data)

    session.v.transport = Sink()  # type: ignore[assignment]
    chunk = b"".join(order(i + 1) for i in range(100))
    framer = Framer()
    t0 = time.process_time()
    for _ in range(n // 100):
        session.from_client(framer.feed(chunk))
    return (time.process_time() - t0) / n * 1e6


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_of(f: Fleet, host: str) -> int:
    proc = f.sidecars[host].popen
    assert proc is not None
    return proc.pid


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port)):
        return True


def start_relays(f: Fleet, before: str | None) -> None:
    """Every host's sidecar; host `before` runs the code of the checkout `before`."""
    for h in f.hosts:
        proc = Proc(h, f.sidecar_args(h), f.workdir / f"{h}.log")
        if h == "before" and before is not None:
            proc.cwd = Path(before)  # `python -m` imports the package from its working directory
        proc.start(f.env())
        f.sidecars[h] = proc
    for h in f.hosts:
        f.wait_serving(h, 120)


def run() -> dict[str, Any]:
    venue = Venue()
    before = os.environ.get("KILLSWITCH_BENCH_BEFORE")
    ports = {h: free_port() for h in (("after", "before") if before else ("after",))}
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.barerelay", str(bare_port), str(venue.port)]
    )
    with EmbeddedRedis() as server, contextlib.ExitStack() as stack:
        stack.callback(bare.kill)
        f = Fleet(server.url, "bench-fix", sorted(ports), host_args={
            h: ("--fix", f"tcp:127.0.0.1:{p}=tcp:127.0.0.1:{venue.port}") for h, p in ports.items()
        })  # fmt: skip
        try:
            start_relays(f, before)
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(120)
            f.arm()
            f.wait_all("PONG ARMED", 30)
            cpus = sorted(os.sched_getaffinity(0))
            pids = {h: pid_of(f, h) for h in ports}
            pids["bare"], ports["bare"] = bare.pid, bare_port
            wait_until(lambda: listening(bare_port), 30, 0.05, "the bare relay listening")
            for h, port in ports.items():
                os.sched_setaffinity(pids[h], {cpus[0]})  # the relays get one core
                roundtrips(port, 200)  # warm-up
            times: dict[str, list[float]] = {"direct": [], **{h: [] for h in ports}}
            cpu = dict.fromkeys(ports, 0.0)
            for _ in range(ROUNDS):
                times["direct"] += roundtrips(venue.port, PER_ROUND)
                for h, port in ports.items():
                    c0 = cpu_s(pids[h])
                    times[h] += roundtrips(port, PER_ROUND)
                    cpu[h] += cpu_s(pids[h]) - c0
            # What the sidecar's event loop does besides relaying (its Redis round trips,
            # attestation, metrics): a relayed message that arrives meanwhile waits.
            c0, t0 = cpu_s(pids["after"]), time.monotonic()
            time.sleep(IDLE_S)
            idle = (cpu_s(pids["after"]) - c0) / (time.monotonic() - t0)
            d = summary(times["direct"], 1e6)
            out: dict[str, Any] = {"direct_roundtrip_us": d, "idle_sidecar_cpu_percent": round(
                idle * 100, 2)}  # fmt: skip
            for h, port in ports.items():
                r = summary(times[h], 1e6)
                name = {"after": "relayed", "before": "before_relayed", "bare": "bare_relay"}[h]
                out |= {
                    f"{name}_roundtrip_us": r,
                    f"{name}_added_p50_us": round(r["p50"] - d["p50"], 1),
                    f"{name}_added_p99_us": round(r["p99"] - d["p99"], 1),
                    f"{name}_sidecar_cpu_us_per_roundtrip": round(
                        cpu[h] / (ROUNDS * PER_ROUND) * 1e6, 1
                    ),
                }
                if h != "bare":
                    out[f"{name}_orders_per_s_one_core"] = round(pipelined(port, venue, PIPELINED))
            return out | {
                "direct_orders_per_s": round(pipelined(venue.port, venue, PIPELINED)),
                "relay_cpu_us_per_order": round(relay_cpu_us(), 2),
                "cpus": len(cpus),
            }
        finally:
            f.stop()
