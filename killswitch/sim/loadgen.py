"""A simulated order router: sends real ORDER lines to a sidecar's gate at a chosen rate.

Used by `killswitch loadgen` (the compose stack), the demo and the benchmarks. It is a
client of the public gate protocol only, exactly like an order router in another language;
it never reaches into the sidecar. Orders are sent in small pipelined batches so that one
Python process can hold tens of thousands of orders per second.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from killswitch.core.settings.options import default


@dataclass(frozen=True)
class LoadgenSettings:
    """What `killswitch loadgen` runs with (resolved and validated by the CLI)."""

    address: str  # the sidecar's gate: unix:/path or tcp:HOST:PORT
    rate: float = default("rate")  # orders per second
    duration: float | None = None  # seconds; None: until stopped
    name: str = default("name")  # prefix of order ids


@dataclass
class RouterStats:
    sent: int = 0
    allowed: int = 0
    blocked: int = 0
    errors: int = 0
    first_block_at: float | None = None  # monotonic time of the first BLOCK reply
    last_allow_at: float | None = None
    reasons: dict[str, int] = field(default_factory=dict)
    # Flatten on kill (`drive(..., rest_s=...)`): allowed orders rest at the venue for rest_s.
    resting_at_kill: int | None = None  # resting orders when the first STATE KILLED came
    cancels_sent: int = 0
    flat_epoch: int = 0  # the kill epoch this router reported FLAT for (and the gate took)


class RestingBook:
    """The router's resting orders: each allowed order rests until it expires (fills)."""

    def __init__(self, rest_s: float) -> None:
        self.rest_s = rest_s
        self.expiries: collections.deque[float] = collections.deque()

    def add(self, now: float) -> None:
        self.expiries.append(now + self.rest_s)

    def live(self, now: float) -> int:
        while self.expiries and self.expiries[0] <= now:
            self.expiries.popleft()
        return len(self.expiries)

    def clear(self) -> None:
        self.expiries.clear()


async def open_gate(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if address.startswith("unix:"):
        return await asyncio.open_unix_connection(address[5:])
    host, _, port = address.removeprefix("tcp:").rpartition(":")
    return await asyncio.open_connection(host.strip("[]"), int(port))


MAX_CATCHUP_S = 0.05


class OrderRouter:
    """Sends orders at `rate()` per second (re-read every batch) until stopped."""

    def __init__(
        self,
        address: str,
        rate: Callable[[], float],
        *,
        name: str = "router",
        batch_interval: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
        book: RestingBook | None = None,
    ) -> None:
        self.address = address
        self.book = book
        self.rate = rate
        self.name = name
        self.batch_interval = batch_interval
        self.clock = clock
        self.stats = RouterStats()
        self._stop = asyncio.Event()
        self._ids = itertools.count(1)

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> RouterStats:
        reader, writer = await open_gate(self.address)
        pending = 0
        owed = 0.0
        last = self.clock()
        try:
            while not self._stop.is_set():
                now = self.clock()
                rate = max(self.rate(), 0.0)
                # After a stall (a busy machine) send what is due now, not a burst making up
                # for the stall: a real router does not, and a burst would break the rate.
                owed = min(owed + rate * (now - last), max(1.0, rate * MAX_CATCHUP_S))
                last = now
                n = int(owed)
                if n:
                    owed -= n
                    lines = [
                        f"ORDER {self.name}-{next(self._ids)} KCG BUY 100\n".encode()
                        for _ in range(n)
                    ]
                    writer.write(b"".join(lines))
                    pending += n
                    self.stats.sent += n
                    await writer.drain()
                while pending:
                    try:
                        line = await asyncio.wait_for(reader.readline(), 5.0)
                    except TimeoutError:
                        break
                    if not line:
                        return self.stats
                    pending -= 1
                    self._count(line)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.batch_interval)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return self.stats

    def _count(self, line: bytes) -> None:
        s = self.stats
        if line.startswith(b"ALLOW"):
            s.allowed += 1
            s.last_allow_at = self.clock()
            if self.book is not None:
                self.book.add(s.last_allow_at)
        elif line.startswith(b"BLOCK"):
            s.blocked += 1
            if s.first_block_at is None:
                s.first_block_at = self.clock()
            reason = line.rsplit(b" ", 1)[-1].strip().decode()
            s.reasons[reason] = s.reasons.get(reason, 0) + 1
        else:
            s.errors += 1


async def run_loadgen(address: str, rate: float, duration: float | None, name: str) -> RouterStats:
    """Entry point of `killswitch loadgen`: reconnects until stopped (the sidecar may restart)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    total = RouterStats()
    end = None if duration is None else time.monotonic() + duration
    while not stop.is_set() and (end is None or time.monotonic() < end):
        router = OrderRouter(address, lambda: rate, name=name)

        async def stopper(r: OrderRouter = router) -> None:
            timeout = None if end is None else max(end - time.monotonic(), 0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout)
            r.stop()

        watcher = asyncio.create_task(stopper())
        try:
            stats = await router.run()
        except OSError:
            stats = router.stats
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        finally:
            watcher.cancel()
        for k in ("sent", "allowed", "blocked", "errors"):
            setattr(total, k, getattr(total, k) + getattr(stats, k))
    return total


async def flatten_on_kill(
    address: str, book: RestingBook, stats: RouterStats, clock: Callable[[], float]
) -> None:
    """Subscribe to the gate; on `STATE KILLED <e>` cancel every resting order, then `FLAT <e>`.

    What a trading process does with the subscription; runs until cancelled.
    """
    reader, writer = await open_gate(address)
    writer.write(b"SUBSCRIBE\n")
    try:
        while line := await reader.readline():
            parts = line.split()
            if parts[:2] == [b"STATE", b"KILLED"] and len(parts) >= 3:
                epoch = int(parts[2])
                live = book.live(clock())
                if stats.resting_at_kill is None:
                    stats.resting_at_kill = live
                cancels = [f"CANCEL c{i} r{i}\n".encode() for i in range(live)]
                writer.write(b"".join(cancels) + f"FLAT {epoch}\n".encode())
                stats.cancels_sent += live
                book.clear()
            elif parts[:2] == [b"OK", b"FLAT"] and len(parts) == 3:
                stats.flat_epoch = int(parts[2])
    finally:
        writer.close()


async def drive(
    addresses: Mapping[str, str],
    rate: Callable[[str, float], float],
    duration: float,
    *,
    stop_when: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    rest_s: float | None = None,
) -> dict[str, RouterStats]:
    """One `OrderRouter` per host for `duration` seconds (or until `stop_when()`, polled
    every 50 ms); `rate(host, t)` is the host's orders per second `t` seconds after the
    start (a scenario: steps, ramps, floods). With `rest_s`, allowed orders rest that long
    and each router also subscribes and flattens on a kill (`flatten_on_kill`)."""
    t0 = clock()

    def rate_of(host: str) -> Callable[[], float]:
        return lambda: rate(host, clock() - t0)

    books = {h: RestingBook(rest_s) for h in addresses} if rest_s is not None else {}
    routers = {
        host: OrderRouter(address, rate_of(host), name=host, clock=clock, book=books.get(host))
        for host, address in addresses.items()
    }
    subs = [
        asyncio.create_task(flatten_on_kill(addresses[h], b, routers[h].stats, clock))
        for h, b in books.items()
    ]
    tasks = [asyncio.create_task(r.run(), name=f"router-{h}") for h, r in routers.items()]
    try:
        while clock() - t0 < duration and not (stop_when and stop_when()):
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(min(0.05, max(duration - (clock() - t0), 0)))
    finally:
        for r in routers.values():
            r.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        for t in subs:
            t.cancel()
        await asyncio.gather(*subs, return_exceptions=True)
    return {h: r.stats for h, r in routers.items()}
