"""A TCP proxy that injects network faults between a component and Redis, for the test suite.

It stands in for toxiproxy: real sockets, real RSTs, real silence. It must never parse or
rewrite the bytes it carries; a fault is only ever delay, silence or a torn connection.

Modes (switch at any time; each applies to live connections as well as new ones):

- ``heal()``: pass bytes through.
- ``blackhole()``: keep accepting and keep every connection open, but drop every byte in
  both directions, with no RST and no FIN. A silent partition, as seen by the client. Bytes
  dropped are gone: a connection that lived through a blackhole has a hole in its stream.
- ``stall()``: like a partition where TCP keeps retransmitting: nothing is delivered, but
  bytes are held (with back-pressure) and delivered, in order, once the mode changes.
- ``reset()``: abort every connection with an RST (``SO_LINGER`` 0) and reset new ones.
- ``delay(s)``: deliver each chunk ``s`` seconds after it was read, both ways, in order.
- ``refuse()``: close the listening socket (new connects get ``ECONNREFUSED``) and reset
  every live connection: a dead Redis host. ``heal()`` listens again on the same port.
- ``heal_new()``: heal for new connections only; every connection that is open now stays a
  blackhole for good, with no RST and no FIN (a NAT or firewall that lost its state: old
  flows are dead, new ones work). This is how a subscriber goes deaf without noticing.

`FaultProxy` lives on the caller's event loop, each connection a `faultlink.Link`;
`ThreadedFaultProxy` (in `faultthread`) runs one on its own loop in a daemon thread with
plain blocking methods, for tests that block while subprocesses talk through it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass
from typing import TypeVar

from kstest.faultlink import Link, Mode, abort_with_rst

__all__ = ["FaultProxy", "Mode", "ProxyStats"]

_T = TypeVar("_T")

UPSTREAM_CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class ProxyStats:
    """Counters since `start()`, for assertions. Bytes are counted when delivered or dropped."""

    mode: Mode
    delay_s: float
    connections_accepted: int
    connections_active: int
    connections_reset: int
    bytes_to_upstream: int
    bytes_to_client: int
    bytes_dropped: int


class FaultProxy:
    """An asyncio TCP proxy to one upstream address whose faults are switched at run time.

    `port` is the listening port (chosen at `start()` when `listen_port` is 0). All methods
    must be called from the loop that ran `start()`; use `ThreadedFaultProxy` otherwise.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.listen_host = listen_host
        self.port = listen_port
        self.mode = Mode.PASS
        self.delay_s = 0.0
        self._sock: socket.socket | None = None
        self._accepter: asyncio.Task[None] | None = None
        self._links: set[Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        # Accepted sockets no handler has wrapped yet; stop() closes them.
        self._unowned: set[socket.socket] = set()
        self._changed = asyncio.Event()
        self._started = False
        self._accepted = 0
        self._reset = 0
        self._to_upstream = 0
        self._to_client = 0
        self._dropped = 0

    @property
    def address(self) -> tuple[str, int]:
        return (self.listen_host, self.port)

    @property
    def url(self) -> str:
        """A `redis://` URL that points at the proxy, db 0."""
        return f"redis://{self.listen_host}:{self.port}/0"

    async def start(self) -> FaultProxy:
        if self._started:
            return self
        self._started = True
        self._listen()
        return self

    async def stop(self) -> None:
        """Stop listening and abort every connection. Idempotent."""
        if not self._started:
            return
        self._started = False
        self._close_listener()
        for link in list(self._links):
            link.abort(rst=False)
        handlers = list(self._handlers)
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for conn in list(self._unowned):
            conn.close()
        self._unowned.clear()

    # -- modes --------------------------------------------------------------------------

    def heal(self) -> None:
        """Pass bytes through with no delay; listen again after `refuse()`."""
        self.delay_s = 0.0
        if self._started and self.mode is Mode.REFUSE:
            self._listen()
        self._set_mode(Mode.PASS)

    def blackhole(self) -> None:
        """Silently drop every byte both ways; connections stay open (no RST, no FIN)."""
        self._set_mode(Mode.BLACKHOLE)

    def heal_new(self) -> None:
        """Heal for new connections; the connections open now stay silent for good."""
        for link in self._links:
            link.dead = True
        self.heal()

    def stall(self) -> None:
        """Hold every byte both ways until the mode changes, then deliver it in order."""
        self._set_mode(Mode.STALL)

    def reset(self) -> None:
        """RST every live connection, and every new one until the mode changes."""
        self._set_mode(Mode.RESET)
        self._abort_all()

    def refuse(self) -> None:
        """Stop listening (ECONNREFUSED) and RST every live connection."""
        self._close_listener()
        self._set_mode(Mode.REFUSE)
        self._abort_all()

    def delay(self, seconds: float) -> None:
        """Pass bytes through, each chunk `seconds` late, both ways, order preserved."""
        if seconds < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {seconds}")
        self.delay_s = seconds
        if self._started and self.mode is Mode.REFUSE:
            self._listen()
        self._set_mode(Mode.PASS)

    def stats(self) -> ProxyStats:
        return ProxyStats(
            mode=self.mode,
            delay_s=self.delay_s,
            connections_accepted=self._accepted,
            connections_active=len(self._links),
            connections_reset=self._reset,
            bytes_to_upstream=self._to_upstream,
            bytes_to_client=self._to_client,
            bytes_dropped=self._dropped,
        )

    # -- internals ----------------------------------------------------------------------

    def _set_mode(self, mode: Mode) -> None:
        self.mode = mode
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _while(self, mode: Mode) -> Mode:
        """Wait until the proxy is no longer in `mode`; return the mode it is in then."""
        while self.mode is mode:
            await self._changed.wait()
        return self.mode

    def _abort_all(self) -> None:
        for link in list(self._links):
            self._reset += 1
            link.abort(rst=True)

    def _listen(self) -> None:
        # Bind and listen synchronously so a connect right after heal() queues in the
        # backlog instead of being refused while the accept task spins up.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.listen_host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        self._sock = sock
        self._accepter = asyncio.create_task(self._accept_loop(sock))

    def _close_listener(self) -> None:
        # Synchronous, so refuse() means ECONNREFUSED the moment it returns. The cancelled
        # sock_accept removes its reader first (callbacks run FIFO), before any new listener
        # could register the same fd number.
        sock, self._sock = self._sock, None
        accepter, self._accepter = self._accepter, None
        if accepter is not None:
            accepter.cancel()
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock)
            sock.close()

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError:
                return
            self._accepted += 1
            self._unowned.add(conn)
            task = asyncio.create_task(self._handle(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: socket.socket) -> None:
        if self.mode in (Mode.RESET, Mode.REFUSE):
            self._reset += 1
            self._unowned.discard(conn)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        reader, writer = await asyncio.open_connection(sock=conn)
        self._unowned.discard(conn)
        link: Link | None = None
        try:
            if self.mode in (Mode.RESET, Mode.REFUSE):
                self._reset += 1
                abort_with_rst(writer)
                return
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port),
                    UPSTREAM_CONNECT_TIMEOUT,
                )
            except (OSError, TimeoutError):
                # The proxy never hides a dead upstream: the client sees what it would see.
                self._reset += 1
                abort_with_rst(writer)
                return
            link = Link(self, (reader, writer), upstream)
            if self.mode in (Mode.RESET, Mode.REFUSE):  # switched while we were connecting
                self._reset += 1
                link.abort(rst=True)
                return
            self._links.add(link)
            await link.run()
        finally:
            if link is None:
                writer.transport.abort()
            else:
                link.close()
