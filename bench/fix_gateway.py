"""The FIX gateway's cost: latency it adds per order, orders per second on one core.

Real sidecar processes (armed, their Redis round trips running), one per event loop
(`--event-loop asyncio`, `uvloop`), relay raw FIX between a client and a venue written here
for speed (pre-encoded NewOrderSingles; the venue answers each with one framed message, or
only counts). Beside them, a relay that only copies bytes (`bench.barerelay`, its own
process): the cost of any process in the path on this machine.

Three placements, measured in the same run, round by round; the relays (sidecars, byte
relay) are pinned to the first CPU in each, Redis and the aggregator to the second:
- `split`: the bench's client and venue threads pinned to the second CPU: every hop wakes a
  process on the other core.
- `one_core`: the bench's client and venue threads on the first CPU too: no hop crosses.
- `unpinned`: the bench's threads free to run on either CPU (the scheduler's choice).

Latency: one order at a time, round trip through a relay minus round trip on a direct TCP
connection to the same venue, same placement, same run, interleaved in rounds. Throughput:
the client pipelines orders, the venue counts them. Also the relay's own CPU per order,
without sockets, and each relay's CPU time per round trip (from /proc).

With KILLSWITCH_BENCH_BEFORE=<a checkout of an earlier revision> that revision's sidecar runs
beside these (on each loop, if it has `--event-loop`), timed in every round: before and after
in the same run, on the same machine load.
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

ROUNDS, PER_ROUND = 10, 500  # latency samples: 5,000 per relay and placement
PIPELINED = 200_000
IDLE_S = 5.0  # seconds without orders over which the sidecar's own CPU use is measured
LOOPS = ("asyncio", "uvloop")


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
        self.tids: list[int] = []  # its threads, so that the bench can place them
        self.cpus: set[int] | None = None  # where a new thread of it starts
        threading.Thread(target=self._accept, daemon=True).start()

    def _start(self) -> None:
        self.tids.append(threading.get_native_id())
        if self.cpus is not None:
            os.sched_setaffinity(0, self.cpus)

    def _accept(self) -> None:
        self._start()
        while True:
            conn, _ = self.sock.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        self._start()
        tail = b""  # a CheckSum marker may straddle two reads: keep its first 3 bytes
        while data := conn.recv(1 << 16):
            n = (tail + data).count(b"\x0110=")
            tail = data[-3:]
            self.counted += n
            if self.echo:
                conn.sendall(REPLY * n)

    def place(self, cpus: set[int]) -> None:
        self.cpus = cpus
        for tid in self.tids:
            with contextlib.suppress(OSError):  # a connection's thread that has ended
                os.sched_setaffinity(tid, cpus)


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


def relay_cpus(before: str | None) -> dict[str, float]:
    """relay_cpu_us here and, alternating with it, in the checkout `before` (its own process:
    the same measurement of that revision's code, on the same machine load)."""
    if before is None:
        return {"relay_cpu_us_per_order": round(relay_cpu_us(), 2)}
    code = "from bench.fix_gateway import relay_cpu_us; print(relay_cpu_us())"
    here: list[float] = []
    there: list[float] = []
    for _ in range(3):
        here.append(relay_cpu_us())
        out = subprocess.run([sys.executable, "-c", code], cwd=before, capture_output=True,
                             text=True, check=True)  # fmt: skip
        there.append(float(out.stdout))
    return {
        "relay_cpu_us_per_order": round(min(here), 2),
        "before_relay_cpu_us_per_order": round(min(there), 2),
    }


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` (its log writer, its relay threads) onto `cpus`."""
    for tid in os.listdir(f"/proc/{pid}/task") if pid > 0 else ():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


def listening(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port)):
        return True


def relays_of(before: str | None) -> dict[str, tuple[str, str | None]]:
    """Sidecar host name -> (its event loop, the checkout it runs or None for this one)."""
    out: dict[str, tuple[str, str | None]] = {loop: (loop, None) for loop in LOOPS}
    if before is not None:
        options = Path(before, "killswitch/core/settings/serviceoptions.py")
        knows = options.exists() and '"event-loop"' in options.read_text()
        for loop in LOOPS if knows else ("asyncio",):
            out[f"before-{loop}"] = (loop, before)
    return out


def start_relays(f: Fleet, relays: dict[str, tuple[str, str | None]]) -> None:
    for h, (loop, checkout) in relays.items():
        args = f.sidecar_args(h)
        if checkout is None or loop != "asyncio":
            args = [*args, "--event-loop", loop]
        proc = Proc(h, args, f.workdir / f"{h}.log")
        if checkout is not None:
            proc.cwd = Path(checkout)  # `python -m` imports the package from its working directory
        proc.start(f.env())
        f.sidecars[h] = proc
    for h in relays:
        f.wait_serving(h, 120)


def pid_of(f: Fleet, host: str) -> int:
    proc = f.sidecars[host].popen
    assert proc is not None
    return proc.pid


PLACEMENTS = ("split", "one_core", "unpinned")


def run() -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("fix_gateway: needs two CPUs (the split placement)")
    first, second = {cpus[0]}, {cpus[1]}
    bench_cpus = {"split": second, "one_core": first, "unpinned": set(cpus)}
    os.sched_setaffinity(0, second)  # this thread is the client; the venue starts beside it
    venue = Venue()
    before = os.environ.get("KILLSWITCH_BENCH_BEFORE")
    relays = relays_of(before)
    ports = {h: free_port() for h in relays}
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, "-m", "bench.barerelay", str(bare_port), str(venue.port)]
    )
    with EmbeddedRedis() as server, contextlib.ExitStack() as stack:
        stack.callback(bare.kill)
        f = Fleet(server.url, "bench-fix", sorted(relays), host_args={
            h: ("--fix", f"tcp:127.0.0.1:{p}=tcp:127.0.0.1:{venue.port}") for h, p in ports.items()
        })  # fmt: skip
        try:
            start_relays(f, relays)
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(120)
            f.arm()
            f.wait_all("PONG ARMED", 30)
            pids = {h: pid_of(f, h) for h in relays}
            pids["bare"], ports["bare"] = bare.pid, bare_port
            wait_until(lambda: listening(bare_port), 30, 0.05, "the bare relay listening")
            assert server.proc is not None and f.aggregator is not None
            for pid in (server.proc.pid, f.aggregator.popen.pid if f.aggregator.popen else -1):
                pin(pid, second)  # Redis and the aggregator: never on the relays' core
            for h, port in ports.items():
                pin(pids[h], first)  # the relays get the first core, in both placements
                roundtrips(port, 200)  # warm-up (the byte relay's threads start here)
                pin(pids[h], first)
            return (
                measure(venue, pids, ports, bench_cpus)
                | relay_cpus(before)
                | {
                    "cpus": len(cpus),
                    "load_average": os.getloadavg(),
                }
            )
        finally:
            f.stop()


def place(venue: Venue, cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)
    venue.place(cpus)


def measure(
    venue: Venue, pids: dict[str, int], ports: dict[str, int], bench_cpus: dict[str, set[int]]
) -> dict[str, Any]:
    series = ("direct", *ports)
    times: dict[tuple[str, str], list[float]] = {(p, h): [] for p in PLACEMENTS for h in series}
    cpu = {(p, h): 0.0 for p in PLACEMENTS for h in ports}
    for _ in range(ROUNDS):
        for p in PLACEMENTS:
            place(venue, bench_cpus[p])
            times[p, "direct"] += roundtrips(venue.port, PER_ROUND)
            for h, port in ports.items():
                c0 = cpu_s(pids[h])
                times[p, h] += roundtrips(port, PER_ROUND)
                cpu[p, h] += cpu_s(pids[h]) - c0
    # What a sidecar's event loop does besides relaying (its Redis round trips, attestation,
    # metrics): a relayed message that arrives meanwhile waits.
    c0, t0 = cpu_s(pids["asyncio"]), time.monotonic()
    time.sleep(IDLE_S)
    out: dict[str, Any] = {
        "idle_sidecar_cpu_percent": round((cpu_s(pids["asyncio"]) - c0) / (time.monotonic() - t0) * 100, 2)
    }  # fmt: skip
    for p in PLACEMENTS:
        place(venue, bench_cpus[p])
        d = summary(times[p, "direct"], 1e6)
        got: dict[str, Any] = {
            "direct_roundtrip_us": d,
            "direct_orders_per_s": round(pipelined(venue.port, venue, PIPELINED)),
        }
        for h, port in ports.items():
            r = summary(times[p, h], 1e6)
            got[h] = {
                "roundtrip_us": r,
                "added_p50_us": round(r["p50"] - d["p50"], 1),
                "added_p99_us": round(r["p99"] - d["p99"], 1),
                "cpu_us_per_roundtrip": round(cpu[p, h] / (ROUNDS * PER_ROUND) * 1e6, 1),
                "orders_per_s": round(pipelined(port, venue, PIPELINED)),
            }
        out[p] = got
    return out
