"""The gate protocol served on unix and TCP sockets, for trading processes in any language.

An asyncio Protocol, not streams: requests are split and answered in batches, so a client
that pipelines many requests gets its replies in one write. Nothing a client sends can stop
the server: every line goes through `protocol.handle_line`, which cannot raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from killswitch.core.flat import FlatTracker
from killswitch.core.gate import Gate
from killswitch.core.protocol import MAX_LINE, handle_line, parse_flat, state_line
from killswitch.runtime.config import ListenAddr

MAX_CONNECTIONS = 4096
BACKLOG = 1024  # order routers reconnecting at once after a restart must not get EAGAIN


class GateProtocol(asyncio.Protocol):
    def __init__(self, server: GateServer) -> None:
        self.server = server
        self.gate = server.gate
        self.buf = b""
        self.discarding = False  # inside a line that was already refused as too long
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self.server.connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.transport = transport
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.subscribers.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        buf = self.buf + data
        replies: list[bytes] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if self.discarding:
                self.discarding = False
            else:
                line = buf[start:nl]
                if line.endswith(b"\r"):
                    line = line[:-1]
                if line.startswith((b"SUBSCRIBE", b"FLAT")):
                    replies.append(self.server.session(self, line))
                else:
                    replies.append(handle_line(line, self.gate))
            start = nl + 1
        rest = buf[start:]
        if len(rest) > MAX_LINE + 1:  # room for the '\r' of a CRLF line whose '\n' is late
            if not self.discarding:
                replies.append(b"ERR line too long\n")
                self.discarding = True
            rest = b""
        self.buf = rest
        if replies:
            self.transport.write(b"".join(replies))

    def pause_writing(self) -> None:
        # A client that sends without reading: stop reading until it catches up.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


class GateServer:
    """Listens on every configured address; `start()` and idempotent `stop()`."""

    def __init__(
        self,
        gate: Gate,
        listen: Sequence[ListenAddr],
        logger: Any = None,
        *,
        on_flat: Callable[[], None] | None = None,
    ) -> None:
        self.gate = gate
        self.listen = tuple(listen)
        self.log = logger or structlog.get_logger("killswitch.core.gate")
        self.connections: set[GateProtocol] = set()
        self.subscribers: set[GateProtocol] = set()
        self.flat = FlatTracker()
        self._on_flat = on_flat
        self._servers: list[asyncio.Server] = []

    def session(self, conn: GateProtocol, line: bytes) -> bytes:
        """SUBSCRIBE and FLAT: the requests that belong to a connection, not to one order."""
        parts = line.decode("utf-8", "replace").split()
        if parts == ["SUBSCRIBE"]:
            self.subscribers.add(conn)
            self.flat.subscribed(conn)
            state, epoch = self.gate.status()
            return state_line(state, epoch)
        if parts and parts[0] == "FLAT":
            if conn not in self.subscribers:
                return b"ERR FLAT needs SUBSCRIBE first on this connection\n"
            parsed = parse_flat(parts)
            if isinstance(parsed, str):
                return f"ERR {parsed}\n".encode()
            epoch = parsed
            why = self.flat.flat(conn, epoch)
            if why:
                return f"ERR {why}\n".encode()
            self.log.info("FLAT", epoch=epoch, owed=self.flat.owed, flat=self.flat.flat_epoch)
            if self._on_flat is not None:
                self._on_flat()
            return f"OK FLAT {epoch}\n".encode()
        return b"ERR usage: SUBSCRIBE, or FLAT <epoch>\n"

    def publish(self, line: bytes) -> None:
        """Push one STATE line to every subscriber (a slow one is buffered by its transport)."""
        for conn in list(self.subscribers):
            if conn.transport is None:
                self.subscribers.discard(conn)
            else:
                conn.transport.write(line)

    async def start(self) -> None:
        if self._servers:
            return
        loop = asyncio.get_running_loop()
        for addr in self.listen:
            if addr.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr.path)  # a stale socket file from a previous run
                srv = await loop.create_unix_server(
                    lambda: GateProtocol(self), addr.path, backlog=BACKLOG
                )
            else:
                srv = await loop.create_server(
                    lambda: GateProtocol(self), addr.host, addr.port, reuse_address=True,
                    backlog=BACKLOG,
                )  # fmt: skip
            self._servers.append(srv)

    def bound_ports(self) -> list[int]:
        ports = []
        for srv in self._servers:
            for sock in srv.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    ports.append(int(name[1]))
        return ports

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for srv in servers:
            srv.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for srv in servers:
            await srv.wait_closed()
        for addr in self.listen:
            if addr.kind == "unix":
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(addr.path)
