"""The demo's FIX session: a legacy order path that never asks the gate, and its venue.

`FixRouter` is the old code's FIX initiator: it logs on and sends NewOrderSingles at a rate,
as Power Peg did, without any gate protocol; on the demo's or-08 its session runs through the
sidecar's `--fix` gateway. `FixVenue` is a small acceptor standing for the exchange: it logs
on whoever logs on, acknowledges orders, answers TestRequests and records every order that
reaches it. Both are simulators for the demo (the gateway's tests use QuickFIX on both ends);
neither may ever stop the demo because of what its peer sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from killswitch.core.enforce.fixwire import SOH, FrameError, Framer, encode, msg_type
from killswitch.core.enforce.recfmt import Entry

BEGIN = b"FIX.4.4"
HEART_BT_S = 30  # longer than the demo: no idle heartbeats needed


def _field(msg: bytes, tag: bytes) -> bytes:
    key = SOH + tag + b"="
    i = msg.find(key)
    if i < 0:
        return b""
    i += len(key)
    return msg[i : msg.find(SOH, i)]


def _now() -> bytes:
    return time.strftime("%Y%m%d-%H:%M:%S.000", time.gmtime()).encode()


class _Peer(asyncio.Protocol):
    """One FIX connection: frames what it reads, numbers what it sends."""

    def __init__(self, sender: bytes, on_message: Callable[[_Peer, bytes], None]) -> None:
        self.sender = sender
        self.target = b""
        self.on_message = on_message
        self.framer = Framer()
        self.seq = 0
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.framer.feed(data)
        except FrameError:
            self.close()
            return
        for m in msgs:
            self.target = self.target or _field(m, b"49")
            self.on_message(self, m)

    def send(self, mt: bytes, *body: tuple[bytes, bytes]) -> None:
        self.seq += 1
        head = [(b"35", mt), (b"49", self.sender), (b"56", self.target), (b"34", b"%d" % self.seq),
                (b"52", _now())]  # fmt: skip
        if self.transport is not None:
            self.transport.write(encode(BEGIN, [*head, *body]))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)


class FixVenue:
    """The exchange side: records (arrival in ns, ClOrdID) of every order that reaches it."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self.clock = clock
        self.orders: list[tuple[int, bytes]] = []
        self.cancels = 0
        self._server: asyncio.Server | None = None
        self._exec_ids = itertools.count(1)

    async def start(self, sock: socket.socket) -> None:
        """Serve on a listening socket the caller bound (its port was given to the sidecar)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Peer(b"VENUE", self._message), sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()
            self._server = None

    def _message(self, peer: _Peer, m: bytes) -> None:
        mt = msg_type(m)
        if mt == b"A":
            peer.send(b"A", (b"98", b"0"), (b"108", _field(m, b"108") or b"%d" % HEART_BT_S))
        elif mt == b"1":
            peer.send(b"0", (b"112", _field(m, b"112")))
        elif mt == b"D":
            clordid = _field(m, b"11")
            self.orders.append((self.clock(), clordid))
            peer.send(b"8", (b"37", clordid), (b"11", clordid),
                      (b"17", b"%d" % next(self._exec_ids)), (b"150", b"0"), (b"39", b"0"),
                      (b"55", _field(m, b"55")), (b"54", _field(m, b"54")),
                      (b"38", _field(m, b"38")), (b"151", _field(m, b"38")), (b"14", b"0"),
                      (b"6", b"0"))  # fmt: skip
        elif mt == b"F":
            self.cancels += 1
        elif mt == b"5":
            peer.send(b"5")
            peer.close()


@dataclass
class FixStats:
    """What the legacy path saw: orders sent, acknowledged by the venue, rejected by the gateway."""

    sent: int = 0
    acked: int = 0  # ExecutionReport 39=0 from the venue
    blocked: int = 0  # ExecutionReport 39=8 from the gateway (58=killswitch <reason> epoch <e>)
    reasons: dict[str, int] = field(default_factory=dict)
    blocked_ids: set[bytes] = field(default_factory=set)
    logged_on: bool = False


class FixRouter:
    """Logs on through `address` (`unix:/path` or `tcp:HOST:PORT`) and sends NewOrderSingles
    at `rate()` per second (re-read every batch) until stopped; counts the reports it gets."""

    def __init__(
        self,
        address: str,
        rate: Callable[[], float],
        *,
        name: str = "pp",
        batch_interval: float = 0.01,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.rate = rate
        self.name = name
        self.batch_interval = batch_interval
        self.clock = clock
        self.stats = FixStats()
        self._stop = asyncio.Event()
        self._ids = itertools.count(1)
        self._logon = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> FixStats:
        loop = asyncio.get_running_loop()
        peer = _Peer(b"SMARS", self._message)
        peer.target = b"VENUE"
        if self.address.startswith("unix:"):
            await loop.create_unix_connection(lambda: peer, self.address[5:])
        else:
            host, _, port = self.address.removeprefix("tcp:").rpartition(":")
            await loop.create_connection(lambda: peer, host, int(port))
        try:
            peer.send(b"A", (b"98", b"0"), (b"108", b"%d" % HEART_BT_S), (b"141", b"Y"))
            async with asyncio.timeout(10.0):
                await self._logon.wait()
            self.stats.logged_on = True
            await self._send_until_stopped(peer)
            peer.send(b"5")
        finally:
            peer.close()
        return self.stats

    async def _send_until_stopped(self, peer: _Peer) -> None:
        owed, last = 0.0, self.clock()
        while not self._stop.is_set() and peer.transport is not None:
            now = self.clock()
            rate = max(self.rate(), 0.0)
            owed = min(owed + rate * (now - last), max(1.0, rate * 0.05))  # no catch-up burst
            last = now
            for _ in range(int(owed)):
                owed -= 1
                self.stats.sent += 1
                peer.send(b"D", (b"11", b"%s-%d" % (self.name.encode(), next(self._ids))),
                          (b"21", b"1"), (b"55", b"KCG"), (b"54", b"1"), (b"60", _now()),
                          (b"38", b"100"), (b"40", b"1"))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.batch_interval)

    def _message(self, peer: _Peer, m: bytes) -> None:
        mt = msg_type(m)
        if mt == b"A":
            self._logon.set()
        elif mt == b"1":
            peer.send(b"0", (b"112", _field(m, b"112")))
        elif mt == b"8":
            if _field(m, b"39") == b"8":
                self.stats.blocked += 1
                self.stats.blocked_ids.add(_field(m, b"11"))
                text = _field(m, b"58").split()
                reason = text[1].decode("ascii", "replace") if len(text) > 1 else "?"
                self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
            else:
                self.stats.acked += 1


def outcome(
    stats: FixStats,
    venue_orders: list[tuple[int, bytes]],
    entries: Sequence[Entry],
    confirmed_ms: int | None,
) -> dict[str, object]:
    """What the FIX leg showed, from the router's counts, the venue's arrivals and the host's
    flight recorder (`entries`): an order counts as reaching the venue after the kill when
    the gate had not allowed it before the host confirmed the kill (`confirmed_ms`, None: no
    kill confirmed), so an order that never passed the gate counts too."""
    allowed = {e.order_id: e.t_ns for e in entries if e.source == "fix" and e.decision == "allow"}
    cut = None if confirmed_ms is None else confirmed_ms * 1_000_000
    at_venue = [c.decode("ascii", "replace") for _, c in venue_orders]
    never_allowed = sum(1 for c in at_venue if c not in allowed)
    return {
        "sent": stats.sent,
        "logged_on": stats.logged_on,
        "reached_venue": len(at_venue),
        "acked": stats.acked,
        "blocked": stats.blocked,
        "reasons": dict(stats.reasons),
        "never_allowed_at_venue": never_allowed,
        "reached_venue_after_kill": None
        if cut is None
        else sum(1 for c in at_venue if allowed.get(c, cut) >= cut),
    }
