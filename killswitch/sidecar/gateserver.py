"""The gate protocol served on unix and TCP sockets, for trading processes in any language.

An asyncio Protocol, not streams: requests are split and answered in batches, so a client
that pipelines many requests gets its replies in one write. Nothing a client sends can stop
the server: every line goes through `protocol.handle_line`, which cannot raise, and no
client can hold the server: a partial line older than `line_timeout` is answered with `ERR`
and closed, and at `max_conns` the longest-idle connection makes room for the newcomer,
whatever it said before (a subscriber only when every connection is one), so a flood of
clients that each said `PING` once cannot hold every slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import structlog

from killswitch.core.enforce.flat import FlatTracker
from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.protocol import MAX_LINE, handle_line, parse_flat, state_line
from killswitch.runtime.config import ListenAddr
from killswitch.runtime.errors import StartupError

MAX_CONNECTIONS = 1024
LINE_TIMEOUT = 5.0  # seconds a client may hold a partial line
BACKLOG = 1024  # order routers reconnecting at once after a restart must not get EAGAIN


class GateProtocol(asyncio.Protocol):
    def __init__(self, server: GateServer) -> None:
        self.server = server
        self.gate = server.gate
        self.buf = b""
        self.discarding = False  # inside a line that was already refused as too long
        self.transport: asyncio.Transport | None = None
        self.partial_since = 0.0  # monotonic time the pending partial line began (0: none)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        if len(self.server.connections) >= self.server.max_conns and not self.server.evict():
            self.server.refused += 1
            transport.write(b"ERR too many connections; try again later\n")
            transport.close()
            return
        self.transport = transport
        self.server.connections.add(self)
        self.server.idle[self] = None

    def drop(self, why: bytes) -> None:
        """Tell the client why, then close (the server's own decision, not the client's)."""
        if self.transport is not None:
            self.transport.write(why)
            self.transport.close()
            self.server.connections.discard(self)
            self.server.idle.pop(self, None)
            self.transport = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.idle.pop(self, None)
        self.server.subscribers.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        idle = self.server.idle
        del idle[self]  # the most recently active now: evicted last (two O(1) dict steps)
        idle[self] = None
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
        if not (rest or self.discarding):
            self.partial_since = 0.0
        elif start or not self.partial_since:
            self.partial_since = time.monotonic()
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
    """Listens on every configured address; `start()` and idempotent `stop()`.

    `socket_mode` / `socket_gid` set who may connect to a unix socket (default: the umask
    and the process's group decide).
    """

    def __init__(
        self,
        gate: Gate,
        listen: Sequence[ListenAddr],
        logger: Any = None,
        *,
        max_conns: int = MAX_CONNECTIONS,
        line_timeout: float = LINE_TIMEOUT,
        socket_mode: int | None = None,
        socket_gid: int | None = None,
        on_flat: Callable[[], None] | None = None,
    ) -> None:
        self.gate = gate
        self.listen = tuple(listen)
        self.log = logger or structlog.get_logger("killswitch.core.enforce.gate")
        self.max_conns = max_conns
        self.line_timeout = line_timeout
        self.socket_mode = socket_mode
        self.socket_gid = socket_gid
        self.connections: set[GateProtocol] = set()
        # Every connection, least recently active first: eviction takes the first (skipping
        # subscribers, which are few), so a storm of connections at the cap cannot starve
        # the sync loop.
        self.idle: dict[GateProtocol, None] = {}
        self.refused = 0  # connections turned away at the cap
        self.evicted = 0  # longest-idle connections closed to make room
        self.timed_out = 0  # connections closed for a partial line held too long
        self.sweeps = 0  # passes of the partial-line reaper
        self.subscribers: set[GateProtocol] = set()
        self.flat = FlatTracker()
        self._on_flat = on_flat
        self._servers: list[asyncio.Server] = []
        self._owned: list[str] = []  # unix socket paths this server created
        self._reaper: asyncio.Task[None] | None = None

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
        try:
            for addr in self.listen:
                if addr.kind == "unix":
                    srv = await self._bind_unix(loop, addr)
                else:
                    try:
                        srv = await loop.create_server(
                            lambda: GateProtocol(self), addr.host, addr.port,
                            reuse_address=True, backlog=BACKLOG,
                        )  # fmt: skip
                    except OSError as e:
                        raise StartupError(f"listen: cannot listen on {addr}: {_why(e)}") from None
                self._servers.append(srv)
        except BaseException:
            await self.stop()
            raise
        self._reaper = asyncio.create_task(self._reap(), name="gate-reaper")

    async def _bind_unix(self, loop: asyncio.AbstractEventLoop, addr: ListenAddr) -> asyncio.Server:
        path = addr.path
        _clear_stale_socket(path)
        # The socket is created with the final mode, never briefly wider than asked.
        old = os.umask(0o777 & ~self.socket_mode) if self.socket_mode is not None else None
        try:
            srv = await loop.create_unix_server(lambda: GateProtocol(self), path, backlog=BACKLOG)
        except OSError as e:
            raise StartupError(f"listen: cannot listen on {addr}: {_why(e)}") from None
        finally:
            if old is not None:
                os.umask(old)
        self._owned.append(path)
        try:
            if self.socket_gid is not None:
                os.chown(path, -1, self.socket_gid)
            if self.socket_mode is not None:
                os.chmod(path, self.socket_mode)
        except OSError as e:
            srv.close()
            raise StartupError(
                f"listen: cannot set the owner group or mode of {path}: {_why(e)}", 2
            ) from None
        return srv

    def evict(self) -> bool:
        """Close the longest-idle connection to make room (a subscriber, whose trading process
        waits for STATE lines, only if every connection subscribed); False if none."""
        victim = next((c for c in self.idle if c not in self.subscribers), None)
        if victim is None:
            victim = next(iter(self.idle), None)
        if victim is None:
            return False
        victim.drop(b"ERR closed: connection cap reached and this connection was the most idle\n")
        self.evicted += 1
        return True

    async def _reap(self) -> None:
        """Close connections holding a partial line for longer than `line_timeout`."""
        period = max(self.line_timeout / 4, 0.05)
        while True:
            await asyncio.sleep(period)
            self.sweeps += 1
            limit = time.monotonic() - self.line_timeout
            for conn in [c for c in self.connections if 0 < c.partial_since < limit]:
                conn.drop(b"ERR line timeout: a request line must end with a newline\n")
                self.timed_out += 1

    def bound_ports(self) -> list[int]:
        ports = []
        for srv in self._servers:
            for sock in srv.sockets:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    ports.append(int(name[1]))
        return ports

    async def stop(self) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
        servers, self._servers = self._servers, []
        for srv in servers:
            srv.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        for srv in servers:
            await srv.wait_closed()
        owned, self._owned = self._owned, []
        for path in owned:  # only what this server created: never another sidecar's socket
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def _clear_stale_socket(path: str) -> None:
    """Remove `path` only if it is a unix socket nobody listens on; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StartupError(f"listen: cannot inspect {path}: {_why(e)}", 2) from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(
            f"listen: {path} exists and is not a socket; refusing to remove it "
            "(choose another --listen path or remove it yourself)",
            2,
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError as e:
        if e.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise StartupError(f"listen: cannot tell whether {path} is in use: {_why(e)}") from None
    else:
        raise StartupError(
            f"listen: {path} is served by another live process (a second sidecar?); "
            "refusing to take it over"
        )
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket left by a crashed run
