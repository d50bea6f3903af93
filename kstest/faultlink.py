"""One connection through a `FaultProxy`: the client's socket, its upstream socket, and two
pumps that carry bytes both ways as the proxy's mode says (pass, drop, hold, delay), never
parsing or rewriting them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import time
from typing import Protocol

CHUNK = 65536
# Chunks in flight per direction before the reader stops reading (back-pressure).
QUEUE_CHUNKS = 64


class Mode(enum.Enum):
    """What the proxy does to bytes and connections right now."""

    PASS = "pass"
    BLACKHOLE = "blackhole"
    STALL = "stall"
    RESET = "reset"
    REFUSE = "refuse"


class LinkOwner(Protocol):
    """What a link reads and counts on its proxy (`FaultProxy`)."""

    mode: Mode
    delay_s: float
    _links: set[Link]
    _to_upstream: int
    _to_client: int
    _dropped: int

    async def _while(self, mode: Mode) -> Mode: ...


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    """Abort so the peer sees RST, not FIN: linger 0 makes close() send a reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Link:
    """One proxied connection: a client socket, its upstream socket, and two pumps."""

    def __init__(
        self,
        proxy: LinkOwner,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.client_r, self.client_w = client
        self.up_r, self.up_w = upstream
        self.closed = False
        self.dead = False  # set by heal_new(): silent for good, whatever the mode
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        q_up: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        q_down: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS)
        self.tasks = [
            asyncio.create_task(self._read(self.client_r, q_up)),
            asyncio.create_task(self._write(q_up, self.up_w, upstream=True)),
            asyncio.create_task(self._read(self.up_r, q_down)),
            asyncio.create_task(self._write(q_down, self.client_w, upstream=False)),
        ]
        try:
            await asyncio.gather(*self.tasks)
        except asyncio.CancelledError:
            pass
        finally:
            self.close()

    async def _read(
        self, reader: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes] | None]
    ) -> None:
        try:
            while True:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    break
                if self.proxy.mode is Mode.BLACKHOLE or self.dead:
                    self.proxy._dropped += len(chunk)
                    continue
                await queue.put((time.monotonic() + self.proxy.delay_s, chunk))
        except OSError:
            pass
        await queue.put(None)

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        proxy = self.proxy
        while True:
            item = await queue.get()
            # Wait out a stall before deciding: a stall that turns into a blackhole drops.
            await proxy._while(Mode.STALL)
            if item is None:
                break
            deliver_at, chunk = item
            wait = deliver_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if await proxy._while(Mode.STALL) is Mode.BLACKHOLE or self.dead:
                proxy._dropped += len(chunk)
                continue
            try:
                writer.write(chunk)
                await writer.drain()
            except OSError:
                break
            if upstream:
                proxy._to_upstream += len(chunk)
            else:
                proxy._to_client += len(chunk)
        # One side hung up. In a blackhole the other side must not hear of it (that would be
        # a FIN, and a partition sends none), so keep the link open until the mode changes.
        await proxy._while(Mode.BLACKHOLE)
        if self.dead:
            await asyncio.get_running_loop().create_future()  # until aborted or stopped
        self.close()

    def abort(self, *, rst: bool) -> None:
        """Close both sockets now, dropping unsent bytes; with `rst`, peers see a reset."""
        self._finish(rst=rst, graceful=False)

    def close(self) -> None:
        """Close both sockets after their (already drained) buffers: peers see a FIN."""
        self._finish(rst=False, graceful=True)

    def _finish(self, *, rst: bool, graceful: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for w in (self.client_w, self.up_w):
            if rst:
                abort_with_rst(w)
            elif graceful:
                w.close()
            else:
                w.transport.abort()
        current = asyncio.current_task()
        for t in self.tasks:
            if t is not current:
                t.cancel()
        self.proxy._links.discard(self)
