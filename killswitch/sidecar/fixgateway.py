"""The FIX gateway: relays a trading process's FIX session to its venue through the host's gate.

Each `--fix LISTEN=UPSTREAM` is a listening socket; every connection on it gets its own
connection to UPSTREAM, and the two are one relayed session. Orders from the client go
through the same `Gate` as the line protocol; what the relay sends instead of a blocked order,
and how both legs keep their sequence numbers, is decided in `core.enforce.fixrelay`. asyncio
buffered Protocols, not streams: a batch read is framed, decided and written in one callback.
It must never forward an order the gate refused or a message whose framing it did not
verify, and nothing one peer sends may stop the sidecar or another session.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import stat
import time
from collections.abc import Sequence
from typing import Any, cast

from prometheus_client import CollectorRegistry

from killswitch.core.enforce.fixrelay import (
    CANCELS,
    HEARTBEAT,
    LOGON,
    ORDERS,
    SEQUENCE_RESET,
    Refusal,
    SessionBook,
    gate_order,
    read_order,
)
from killswitch.core.enforce.fixwire import (
    BODY_LENGTH,
    CHECKSUM,
    GARBAGE,
    MAX_BODY,
    OVERSIZE,
    FrameError,
    Framer,
    msg_type,
)
from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.recfmt import FIX
from killswitch.runtime.config import ListenAddr
from killswitch.runtime.errors import StartupError
from killswitch.sidecar.fixmetrics import FixCollector
from killswitch.sidecar.settings import SidecarSettings

# MsgTypes counted under their own label value (session level, orders, cancels, reports,
# the common order and market-data ones); any other is counted as "other".
MSGTYPES = frozenset(b"0 1 2 3 4 5 A D G E AB F q 8 9 j r H BE BF N K L M V W X Y R S Z AI".split())
PARTIAL = "partial_timeout"
TOO_MANY = "too_many_sessions"  # at --max-conns relayed sessions a newcomer is closed
EARLY = "early_data"  # a client sent more than HOLD_MAX bytes before its venue leg was up
CONNECT_TIMEOUT = 5.0
_RESET = b"\x01141=Y\x01"
READ_SIZE = 64 * 1024  # bytes read from a peer at once
# A client's bytes held before its venue leg is up: one read (up to READ_SIZE), after which
# the leg is paused; the bound is for a loop that would read on regardless.
HOLD_MAX = 16 * READ_SIZE


class _Leg(asyncio.BufferedProtocol):
    """One side of a relayed session: frames what it reads and hands it to the session.

    Buffered: the transport reads into the gateway's one buffer (`recv_into`). A plain
    Protocol gets a fresh `recv(256 KiB)` bytes object per read, whose allocation alone cost
    about 35 us per read here, twice per order round trip (docs/PERFORMANCE.md).
    """

    def __init__(self, session: FixSession, client: bool) -> None:
        self.session = session
        self.client = client
        self.name = "client" if client else "venue"
        self.framer = Framer(session.gw.max_body)
        self.transport: asyncio.Transport | None = None
        self.partial_since = 0.0
        self.paused = False  # not read while the other side's writes catch up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports are not asyncio.Transport's.
        self.transport = cast(asyncio.Transport, transport)
        self.session.connected(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        # One buffer for every leg of the gateway is safe: the transport fills it and calls
        # buffer_updated() in the same callback, which copies out what was read.
        return self.session.gw.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.session.gw.buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        s = self.session
        if self.client and s.v.transport is None:
            s.hold(data)
            return
        bad = self.framer.bad_checksums
        try:
            msgs = self.framer.feed(data)
        except FrameError as e:
            s.refuse(self, e.reason, str(e))
            return
        if self.framer.bad_checksums != bad:
            s.gw.refused(CHECKSUM, self.framer.bad_checksums - bad)
            s.log.warning("FIX_REFUSED", side=self.name, reason=CHECKSUM, peer=s.peer,
                          detail="CheckSum does not match: message dropped")  # fmt: skip
        # The clock runs from the moment the message now pending began to arrive.
        if not self.framer.pending:
            self.partial_since = 0.0
        elif msgs or not self.partial_since:
            self.partial_since = time.monotonic()
        if msgs:
            (s.from_client if self.client else s.from_venue)(msgs)

    def pause_writing(self) -> None:  # the other side reads no more than this one can send
        other = self.session.other(self)
        other.paused = True
        if other.transport is not None:
            other.transport.pause_reading()

    def resume_writing(self) -> None:
        other = self.session.other(self)
        other.paused = False
        other.partial_since = time.monotonic() if other.framer.pending else 0.0
        if other.transport is not None:
            other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.session.close(f"{self.name} disconnected")


class FixSession:
    """A client connection, its venue connection and what the relay remembers between them."""

    def __init__(self, gw: FixGateway, upstream: ListenAddr, n: int) -> None:
        self.gw = gw
        self.upstream = upstream
        self.c = _Leg(self, True)
        self.v = _Leg(self, False)
        self.book = SessionBook(b"killswitch-%s-%d-" % (gw.token, n))
        self.peer = ""
        self.log = gw.log
        self.closed = False
        self.early = b""  # what the client sent before the venue leg was up, in order

    def other(self, leg: _Leg) -> _Leg:
        return self.v if leg is self.c else self.c

    def connected(self, leg: _Leg) -> None:
        if leg is self.c:
            assert leg.transport is not None
            self.peer = str(leg.transport.get_extra_info("peername") or "unix")
            if len(self.gw.sessions) >= self.gw.max_sessions:  # each one opens a venue connection
                self.refuse(leg, TOO_MANY, f"{self.gw.max_sessions} sessions relayed already")
                return
            leg.transport.pause_reading()  # nothing is read before the venue leg is up
            self.gw.sessions.add(self)
            self.gw.task(self._connect_venue())
        elif self.closed or self.c.transport is None:  # the client left while we connected
            assert leg.transport is not None
            leg.transport.close()
        else:
            self.log.info("FIX_SESSION_OPEN", peer=self.peer, upstream=str(self.upstream))
            early, self.early = self.early, b""
            if early:  # relayed first, in the order it came, before anything read later
                self.c.data_received(early)
            if not self.closed and not self.c.paused:  # (the replay may have filled the venue)
                self.c.transport.resume_reading()

    def hold(self, data: bytes) -> None:
        """Keep what the client sent before its venue leg is up, and stop reading it: uvloop
        and Python 3.11.2's asyncio read an accepted connection whatever connection_made()
        asked. Relayed, through the gate, when the venue connects; bounded (HOLD_MAX, then
        refused). Nothing a client sent is dropped without a log line."""
        if self.closed:  # no read after close() is expected: say so if one comes
            self.log.warning("FIX_DROPPED", side="client", peer=self.peer, bytes=len(data),
                             why="the session was closed")  # fmt: skip
            return
        self.early += data
        if len(self.early) > HOLD_MAX:
            self.refuse(self.c, EARLY, f"{len(self.early)} bytes sent before the venue was up")
        elif self.c.transport is not None:
            # connected()'s pause was ignored (uvloop; Python 3.11.2's asyncio, which then takes
            # a second pause for a no-op): resume and pause so reading stops for real, before
            # the client's close is read and ends the session ahead of its orders.
            self.c.transport.resume_reading()
            self.c.transport.pause_reading()

    async def _connect_venue(self) -> None:
        loop, up = asyncio.get_running_loop(), self.upstream
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                if up.kind == "unix":
                    await loop.create_unix_connection(lambda: self.v, up.path)
                else:
                    await loop.create_connection(lambda: self.v, up.host, up.port)
        except (OSError, TimeoutError) as e:
            self.log.warning("FIX_UPSTREAM_FAILED", peer=self.peer, upstream=str(up),
                             error=f"{type(e).__name__}: {e}")  # fmt: skip
            self.close("venue unreachable")

    def from_client(self, msgs: list[bytes]) -> None:
        gw, book, out = self.gw, self.book, []
        for m in msgs:
            mt = msg_type(m)
            if mt in ORDERS:
                order = read_order(m, mt)
                if book.was_blocked(order):
                    ok, epoch, reason, clordid = False, 0, "", order.clordid
                else:
                    ok, epoch, reason, clordid = gate_order(order, gw.check)
                if ok:
                    gw.wire += 1
                    gw.count(mt, "allowed")
                    out.append(m)
                else:
                    gw.count(mt, "blocked")
                    out.append(book.block(m, Refusal(order, clordid, reason, epoch)))
                continue
            if mt in CANCELS:
                gw.gate.cancel(source=FIX)
            elif mt == LOGON and _RESET in m:
                book.reset()
            gw.count(mt, "passed")
            out.append(m)
        if self.v.transport is not None:
            self.v.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def from_venue(self, msgs: list[bytes]) -> None:
        gw, book, out = self.gw, self.book, []
        for m in msgs:
            mt = msg_type(m)
            if mt == HEARTBEAT and book.owed:
                out.append(book.answer(m) or m)
            elif mt == SEQUENCE_RESET and book.sent:
                out.extend(book.refill(m) or (m,))
            else:
                if mt == LOGON and _RESET in m:
                    book.reset()
                out.append(m)
            gw.count(mt, "passed")
        if self.c.transport is not None:
            self.c.transport.write(b"".join(out) if len(out) > 1 else out[0])

    def refuse(self, leg: _Leg, reason: str, detail: str) -> None:
        self.gw.refused(reason)
        self.log.warning("FIX_REFUSED", side=leg.name, reason=reason, peer=self.peer,
                         detail=detail[:200])  # fmt: skip
        self.close(f"{leg.name} refused: {reason}")

    def close(self, why: str) -> None:
        """Close both legs; what was framed is already written and is sent before the close."""
        if self.closed:
            return
        self.closed = True
        self.gw.sessions.discard(self)
        if self.early:  # the venue never connected: what the client sent goes nowhere
            self.log.warning("FIX_DROPPED", side="client", peer=self.peer,
                             bytes=len(self.early), why=why)  # fmt: skip
            self.early = b""
        for leg in (self.c, self.v):
            if leg.transport is not None:
                leg.transport.close()
        self.log.info("FIX_SESSION_CLOSED", peer=self.peer, upstream=str(self.upstream), why=why)


class FixGateway:
    """Every `--fix` route of one sidecar: `start()`, idempotent `stop()`."""

    def __init__(
        self,
        gate: Gate,
        routes: Sequence[tuple[ListenAddr, ListenAddr]],
        *,
        logger: Any,
        partial_timeout: float = 5.0,
        max_body: int = MAX_BODY,
        max_sessions: int = 1024,
    ) -> None:
        self.gate = gate
        self.check = functools.partial(gate.check, source=FIX)  # recorded as the gateway's
        self.routes = tuple(routes)
        self.log = logger
        self.partial_timeout = partial_timeout
        self.max_body = max_body
        self.max_sessions = max_sessions
        self.token = os.urandom(4).hex().encode()  # TestReqIDs of this run are its own
        self.buffer = memoryview(bytearray(READ_SIZE))  # every leg reads into it (_Leg)
        self.wire = 0  # orders forwarded to a venue
        # Label values start at 0 where a dashboard looks (0, not "no data"; rate() sees the
        # first order): new orders both ways, cancels, every refusal reason.
        self.counts: dict[tuple[bytes, str], int] = {
            (b"D", "allowed"): 0, (b"D", "blocked"): 0, (b"F", "passed"): 0,
        }  # fmt: skip
        self.refusals = dict.fromkeys((GARBAGE, OVERSIZE, BODY_LENGTH, CHECKSUM, PARTIAL), 0)
        self.sessions: set[FixSession] = set()
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._opened = 0

    @classmethod
    def for_sidecar(
        cls, gate: Gate, settings: SidecarSettings, logger: Any, registry: CollectorRegistry
    ) -> FixGateway:
        """The sidecar's gateway, its metrics registered; --line-timeout bounds a partial
        message, --max-conns the sessions relayed at once."""
        gw = cls(gate, settings.fix, logger=logger, partial_timeout=settings.line_timeout,
                 max_sessions=settings.max_conns)  # fmt: skip
        registry.register(FixCollector(gw, settings.node, settings.host))
        return gw

    def count(self, mt: bytes, decision: str) -> None:
        key = (mt if mt in MSGTYPES else b"other", decision)  # a peer must not add labels
        self.counts[key] = self.counts.get(key, 0) + 1

    def refused(self, reason: str, n: int = 1) -> None:
        self.refusals[reason] = self.refusals.get(reason, 0) + n

    def task(self, coro: Any) -> None:
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        """The host report's gateway fields: orders forwarded to a venue."""
        return (("wire", str(self.wire)),) if self.routes else ()

    def _session(self, upstream: ListenAddr) -> _Leg:
        self._opened += 1
        return FixSession(self, upstream, self._opened).c

    async def start(self) -> None:
        if self._servers or not self.routes:
            return
        loop = asyncio.get_running_loop()
        try:
            for listen, up in self.routes:
                factory = lambda up=up: self._session(up)  # noqa: E731 (one per route)
                try:
                    if listen.kind == "unix":
                        with contextlib.suppress(FileNotFoundError):
                            if stat.S_ISSOCK(os.lstat(listen.path).st_mode):  # a stale one
                                os.unlink(listen.path)
                        srv = await loop.create_unix_server(factory, listen.path)
                    else:
                        srv = await loop.create_server(
                            factory, listen.host, listen.port, reuse_address=True
                        )
                except OSError as e:
                    raise StartupError(
                        f"fix: cannot listen on {listen}: {e.strerror or e}"
                    ) from None
                self._servers.append(srv)
        except BaseException:
            await self.stop()
            raise
        self.task(self._reap())
        self.log.info("FIX_GATEWAY_STARTED", routes=[f"{a}={b}" for a, b in self.routes])

    async def _reap(self) -> None:
        """Close sessions whose peer holds part of a message too long (a slow loris)."""
        while True:
            await asyncio.sleep(min(0.5, self.partial_timeout / 4))
            now = time.monotonic()
            for s in list(self.sessions):
                for leg in (s.c, s.v):
                    held = leg.partial_since and not leg.paused
                    if held and now - leg.partial_since > self.partial_timeout:
                        s.refuse(leg, PARTIAL, f"{leg.framer.pending} bytes of a message held "
                                 f"over {self.partial_timeout} s")  # fmt: skip
                        break

    async def stop(self) -> None:
        """Stop listening and close every session cleanly: what was framed is delivered, no
        message is cut, then both legs see the connection close."""
        servers, self._servers = self._servers, []
        for srv in servers:
            srv.close()
        for s in list(self.sessions):
            s.close("gateway stopping")
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=1.0)
        for srv in servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await srv.wait_closed()
        for listen, _ in self.routes:
            if listen.kind == "unix" and servers:
                with contextlib.suppress(OSError):
                    os.unlink(listen.path)
