"""What a FIX client sends before the gateway's venue leg is up, on both event loops the
sidecar runs on (`--event-loop`): relayed in order once the venue connects, or named in a log
line when it cannot be, never dropped silently.

uvloop starts reading an accepted connection after `connection_made` whatever that asked, so
under it the client's first bytes reach the gateway before the venue leg exists; asyncio
reads nothing until the gateway resumes the client leg. A venue whose accept queue is full
makes the venue leg slow to connect on both, without a sleep anywhere.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import structlog
import uvloop
from structlog.testing import capture_logs

from killswitch.core.enforce.fixwire import Framer, encode, msg_type
from killswitch.core.enforce.gate import Gate
from killswitch.core.node.state import HostView, NodeState
from killswitch.runtime.config import ListenAddr
from killswitch.runtime.eventloop import LOOPS, loop_factory, running
from killswitch.sidecar.fixgateway import HOLD_MAX, FixGateway, FixSession
from killswitch.sim.embedded import free_port
from killswitch.sim.fleet import wait_until_async


def tcp(port: int) -> ListenAddr:
    return ListenAddr("tcp", host="127.0.0.1", port=port)


def nos(seq: int, clordid: bytes) -> bytes:
    return encode(b"FIX.4.4", [
        (b"35", b"D"), (b"49", b"C"), (b"56", b"V"), (b"34", b"%d" % seq),
        (b"52", b"20260101-00:00:00.000"), (b"11", clordid), (b"55", b"AAPL"), (b"54", b"1"),
        (b"38", b"10"), (b"44", b"1.5"),
    ])  # fmt: skip


class SlowVenue:
    """A venue listener whose accept queue is full (backlog 0, one connection waiting): the
    kernel drops a new SYN until `free()`, so a connection to it completes only at the SYN's
    first retransmission after that (about a second)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port))

    def free(self) -> None:
        self.sock.accept()[0].close()
        self.filler.close()

    def close(self) -> None:
        self.filler.close()
        self.sock.close()

    async def accept(self) -> socket.socket:
        self.sock.setblocking(False)
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(self.sock), 10)
        return conn


async def read_messages(conn: socket.socket, n: int) -> list[bytes]:
    """The first `n` FIX messages the venue gets on `conn` (fewer: the connection ended)."""
    loop, framer, got = asyncio.get_running_loop(), Framer(), []
    while len(got) < n:
        data = await asyncio.wait_for(loop.sock_recv(conn, 65536), 10)
        if not data:
            break
        got += framer.feed(data)
    return got


def armed_gateway(venue_port: int) -> tuple[FixGateway, int]:
    gate = Gate("n", "h")
    gate.apply(HostView(1, NodeState.ARMED, NodeState.ARMED, 1, 1), time.monotonic() + 3600)
    port = free_port()
    return FixGateway(gate, [(tcp(port), tcp(venue_port))], logger=structlog.get_logger()), port


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        runner.run(main())


@pytest.mark.parametrize("loop", LOOPS)
class TestBeforeTheVenue:
    def test_orders_sent_before_the_venue_connects_reach_it_in_order(self, loop: str) -> None:
        """A burst larger than any one read (2,000 orders, about 290 KB) and one order more,
        written while the venue leg is still connecting, reach the venue once it connects:
        all of them, in order."""
        burst = [nos(i + 2, b"early-%d" % i) for i in range(2000)]
        last = nos(2002, b"early-last")

        async def main() -> None:
            venue = SlowVenue()
            gw, port = armed_gateway(venue.port)
            await gw.start()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"".join(burst))
                await wait_until_async(lambda: gw.sessions, 5, what="the session")
                writer.write(last)
                venue.free()
                conn = await venue.accept()
                assert await read_messages(conn, 2001) == [*burst, last]
                assert gw.wire == 2001
                conn.close()
                writer.close()
            finally:
                await gw.stop()
                venue.close()

        run_on(loop, main)

    def test_orders_held_across_a_kill_are_judged_when_relayed(self, loop: str) -> None:
        """Orders read while the node was armed but held until the venue connects, with a
        kill in between, are judged by the gate when relayed: none reaches the venue (each
        slot carries the relay's TestRequest), every one is counted blocked."""
        held = [nos(i + 2, b"held-%d" % i) for i in range(5)]

        async def main() -> None:
            venue = SlowVenue()
            gw, port = armed_gateway(venue.port)
            await gw.start()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"".join(held))
                await wait_until_async(lambda: gw.sessions, 5, what="the session")
                assert gw.gate.hold(2)  # a kill notice while the orders wait for the venue
                venue.free()
                conn = await venue.accept()
                got = await read_messages(conn, len(held))
                assert [msg_type(m) for m in got] == [b"1"] * len(held), got
                assert not any(b"held-" in m for m in got)
                assert gw.wire == 0 and gw.gate.blocked == len(held)
                conn.close()
                writer.close()
            finally:
                await gw.stop()
                venue.close()

        run_on(loop, main)

    def test_a_client_that_leaves_meanwhile_still_has_its_order_relayed(self, loop: str) -> None:
        """An order followed by the client's close, both before the venue connects: the
        venue gets the order (as over a plain TCP hop), then the session ends."""

        async def main() -> None:
            venue = SlowVenue()
            gw, port = armed_gateway(venue.port)
            await gw.start()
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(nos(2, b"left-1"))
                await wait_until_async(lambda: gw.sessions, 5, what="the session")
                writer.close()
                await writer.wait_closed()
                venue.free()
                conn = await venue.accept()
                assert await read_messages(conn, 2) == [nos(2, b"left-1")]  # then the close
                await wait_until_async(lambda: not gw.sessions, 5, what="the session closed")
                conn.close()
            finally:
                await gw.stop()
                venue.close()

        run_on(loop, main)


def test_held_bytes_are_named_when_the_venue_cannot_be_reached() -> None:
    """On uvloop the client's first read is held while the venue connects; when the venue
    then refuses, those bytes are named in a FIX_DROPPED line, not lost without a word."""

    async def main() -> None:
        venue = SlowVenue()
        gw, port = armed_gateway(venue.port)
        await gw.start()
        try:
            with capture_logs() as logs:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(nos(2, b"lost-1"))
                await wait_until_async(lambda: any(s.early for s in gw.sessions), 5,
                                       what="the order held")  # fmt: skip
                venue.close()  # the SYN's retransmission is refused: the venue is down
                assert await asyncio.wait_for(reader.read(100), 10) == b""
            dropped = [e for e in logs if e["event"] == "FIX_DROPPED"]
            assert [(e["side"], e["bytes"]) for e in dropped] == [
                ("client", len(nos(2, b"lost-1")))
            ]
            assert any(e["event"] == "FIX_UPSTREAM_FAILED" for e in logs)
            writer.close()
        finally:
            await gw.stop()

    run_on("uvloop", main)


class _Transport:
    """A transport that ignores pause_reading (and resume_reading): what a loop that read on
    regardless would do."""

    def __init__(self) -> None:
        self.closed = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1) if name == "peername" else None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_what_a_client_may_send_before_the_venue_is_bounded() -> None:
    """Past HOLD_MAX bytes before the venue is up the session is refused (early_data) with a
    log line naming what was dropped, whatever the loop did with pause_reading."""
    gw = FixGateway(Gate("n", "h"), [], logger=structlog.get_logger())
    session = FixSession(gw, tcp(1), 1)
    session.c.transport = _Transport()  # type: ignore[assignment]
    chunk = nos(2, b"x") * (HOLD_MAX // len(nos(2, b"x")))
    with capture_logs() as logs:
        session.c.data_received(chunk)
        assert not session.closed
        session.c.data_received(chunk)
    assert session.closed and session.c.transport.closed  # type: ignore[union-attr]
    assert gw.refusals["early_data"] == 1
    assert [e["bytes"] for e in logs if e["event"] == "FIX_DROPPED"] == [2 * len(chunk)]


def test_the_loops_are_what_they_say() -> None:
    """`--event-loop uvloop` runs on uvloop's loop, `asyncio` on asyncio's, and each is named."""
    for name in LOOPS:
        with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
            loop = runner.get_loop()
            assert isinstance(loop, uvloop.Loop) == (name == "uvloop")
            assert runner.run(_running()) == name


async def _running() -> str:
    return running()
