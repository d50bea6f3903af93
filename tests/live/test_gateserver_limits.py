"""`GateServer` at its edges on real sockets: a client that stops reading, the connection
requests (SUBSCRIBE, FLAT), late callbacks on a dropped connection, and listen paths it
must refuse."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.protocol import state_line
from killswitch.core.node.state import HostView, NodeState
from killswitch.runtime.config import ListenAddr
from killswitch.runtime.errors import StartupError
from killswitch.sidecar.gateserver import GateProtocol, GateServer
from kstest import wait_until_async

T0 = 1000.0
PONG = b"PONG ARMED 3\n"
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    await wait_until_async(cond, within, 0.001)


async def ask(conn: Conn, line: bytes) -> bytes:
    reader, writer = conn
    writer.write(line + b"\n")
    await writer.drain()
    async with asyncio.timeout(5):
        return await reader.readline()


@pytest.fixture
def gate() -> Gate:
    """A gate armed at epoch 3 whose lease does not run out during the test."""
    g = Gate("smars", "or-01", clock=lambda: T0, log=CapturingLogger())
    view = HostView(max_epoch=3, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=3)
    g.apply(view, lease_deadline=T0 + 3600)
    return g


def kill(gate: Gate, epoch: int) -> None:
    view = HostView(max_epoch=epoch, max_state=NodeState.KILLED, state=NodeState.KILLED,
                    epoch=epoch)  # fmt: skip
    gate.apply(view, lease_deadline=T0 + 3600)


@pytest.fixture
def flats() -> list[int]:
    """The host's proven-flat epoch each time the server called its sidecar back on a FLAT."""
    return []


@pytest.fixture
async def tcp(gate: Gate, flats: list[int]) -> AsyncIterator[GateServer]:
    srv = GateServer(
        gate, [ListenAddr("tcp", host="127.0.0.1", port=0)], logger=CapturingLogger(),
        on_flat=lambda: flats.append(srv.flat.flat_epoch),
    )  # fmt: skip
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@contextlib.asynccontextmanager
async def client(srv: GateServer, rcvbuf: int | None = None) -> AsyncIterator[Conn]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window it advertises is small from the start
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    [port] = srv.bound_ports()
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def only(srv: GateServer) -> GateProtocol:
    [proto] = srv.connections
    return proto


class TestFlowControl:
    """A client that sends without reading its replies."""

    async def test_server_stops_reading_until_the_client_reads_and_loses_no_reply(
        self, tcp: GateServer, gate: Gate
    ) -> None:
        """When replies pile up the server pauses reading that client; once the client reads,
        every request is answered in order and the server reads again."""
        async with client(tcp, rcvbuf=4096) as (reader, writer):
            await until(lambda: len(tcp.connections) == 1)
            proto = only(tcp)
            assert proto.transport is not None
            server_sock = proto.transport.get_extra_info("socket")
            server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            sent = 0
            async with asyncio.timeout(30):
                while proto.transport.is_reading():
                    writer.write(b"PING\n" * 500)
                    sent += 500
                    await asyncio.sleep(0)  # a yield, not a wait: the server shares this loop
            assert not proto.transport.is_reading()
            assert proto.transport.get_write_buffer_size() > 0
            async with asyncio.timeout(30):
                got = await reader.readexactly(len(PONG) * sent)
            assert got == PONG * sent
            assert proto.transport.is_reading()
            assert await ask((reader, writer), b"ORDER o1 AAPL BUY 1") == b"ALLOW o1 3\n"
            assert gate.allowed == 1 and tcp.connections == {proto}


class TestDroppedConnection:
    """Callbacks that reach a protocol after the server dropped its connection."""

    async def test_late_data_and_flow_callbacks_are_ignored(
        self, gate: Gate, tmp_path: Path
    ) -> None:
        """A connection evicted at the cap answers nothing, counts no order and survives a
        second drop and late pause/resume calls."""
        sock = tmp_path / "d.sock"
        srv = GateServer(
            gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger(), max_conns=1
        )
        await srv.start()
        try:
            silent = await asyncio.open_unix_connection(str(sock))
            await until(lambda: len(srv.connections) == 1)
            evicted = only(srv)
            talker = await asyncio.open_unix_connection(str(sock))
            assert await ask(talker, b"PING") == PONG
            assert evicted.transport is None and srv.evicted == 1
            evicted.data_received(b"ORDER late AAPL BUY 1\n")
            evicted.pause_writing()
            evicted.resume_writing()
            evicted.drop(b"ERR twice\n")
            async with asyncio.timeout(5):
                assert (await silent[0].readline()).startswith(b"ERR closed")
                assert await silent[0].read() == b""
            assert gate.allowed == 0 and srv.evicted == 1
            assert await ask(talker, b"ORDER o1 AAPL BUY 1") == b"ALLOW o1 3\n"
            for _, w in (silent, talker):
                w.close()
        finally:
            await srv.stop()


class TestSessionRequests:
    """SUBSCRIBE and FLAT belong to a connection, not to one order."""

    @pytest.mark.parametrize(
        ("line", "reply"),
        [
            (b"FLAT 4", b"ERR FLAT needs SUBSCRIBE first on this connection\n"),
            (b"SUBSCRIBE now", b"ERR usage: SUBSCRIBE, or FLAT <epoch>\n"),
            (b"SUBSCRIBEx", b"ERR usage: SUBSCRIBE, or FLAT <epoch>\n"),
        ],
        ids=["flat-unsubscribed", "subscribe-with-args", "subscribe-glued"],
    )
    async def test_session_requests_refused_before_subscribing(
        self, tcp: GateServer, line: bytes, reply: bytes
    ) -> None:
        """A FLAT without SUBSCRIBE, or a malformed SUBSCRIBE, is refused and subscribes nothing."""
        async with client(tcp) as conn:
            assert await ask(conn, line) == reply
            assert tcp.subscribers == set()

    @pytest.mark.parametrize(
        ("line", "reply"),
        [
            (b"FLAT", b"ERR usage: FLAT <epoch>\n"),
            (b"FLAT four", b"ERR usage: FLAT <epoch>\n"),
            (b"FLAT 0", b"ERR bad epoch: a positive whole number\n"),
            (b"FLAT 3", b"ERR epoch 3 is not the kill being flattened (4)\n"),
            (b"FLAT 5", b"ERR epoch 5 is not the kill being flattened (4)\n"),
        ],
        ids=["no-epoch", "not-a-number", "zero", "older-epoch", "newer-epoch"],
    )
    async def test_bad_flat_is_refused_and_proves_nothing(
        self, tcp: GateServer, gate: Gate, flats: list[int], line: bytes, reply: bytes
    ) -> None:
        """A FLAT that is malformed or names another epoch leaves the host not flat."""
        async with client(tcp) as conn:
            assert await ask(conn, b"SUBSCRIBE") == b"STATE ARMED 3 armed\n"
            kill(gate, 4)
            tcp.flat.killed(4, tcp.subscribers)
            assert await ask(conn, line) == reply
            assert tcp.flat.flat_epoch == 0 and tcp.flat.owed == 1
            assert flats == []

    async def test_flat_without_a_kill_is_refused(self, tcp: GateServer) -> None:
        """Before any kill there is nothing to flatten."""
        async with client(tcp) as conn:
            assert await ask(conn, b"SUBSCRIBE") == b"STATE ARMED 3 armed\n"
            assert await ask(conn, b"FLAT 3") == b"ERR no kill to flatten\n"

    async def test_kill_is_pushed_to_live_subscribers_and_flat_wakes_the_sidecar(
        self, tcp: GateServer, gate: Gate, flats: list[int]
    ) -> None:
        """A published STATE reaches every live subscriber (one that hung up is forgotten),
        and the FLATs of all of them make the host flat and call the sidecar back each time."""
        async with client(tcp) as a, client(tcp) as b:
            assert await ask(a, b"SUBSCRIBE") == b"STATE ARMED 3 armed\n"
            assert await ask(b, b"SUBSCRIBE") == b"STATE ARMED 3 armed\n"
            async with client(tcp) as gone:
                assert await ask(gone, b"SUBSCRIBE") == b"STATE ARMED 3 armed\n"
            await until(lambda: len(tcp.connections) == 2)
            assert len(tcp.subscribers) == 2  # the one that hung up left with its connection
            kill(gate, 4)
            tcp.flat.killed(4, tcp.subscribers)
            tcp.publish(state_line(*gate.status()))
            for reader, _ in (a, b):
                async with asyncio.timeout(5):
                    assert await reader.readline() == b"STATE KILLED 4 killed\n"
            assert await ask(a, b"FLAT 4") == b"OK FLAT 4\n"
            assert tcp.flat.owed == 1 and tcp.flat.flat_epoch == 0
            assert await ask(b, b"FLAT 4") == b"OK FLAT 4\n"
            assert tcp.flat.owed == 0 and tcp.flat.flat_epoch == 4
            assert flats == [0, 4]

    async def test_publish_forgets_a_subscriber_the_server_just_dropped(
        self, gate: Gate, tmp_path: Path
    ) -> None:
        """A subscriber the server closed itself (as the reaper does) and a push in the same
        turn of the loop: the push skips it and forgets it; the client hears only why."""
        sock = tmp_path / "p.sock"
        srv = GateServer(gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger())
        await srv.start()
        try:
            conn = await asyncio.open_unix_connection(str(sock))
            assert await ask(conn, b"SUBSCRIBE") == b"STATE ARMED 3 armed\n"
            proto = only(srv)
            proto.drop(b"ERR line timeout: a request line must end with a newline\n")
            assert srv.subscribers == {proto}  # connection_lost has not run yet
            srv.publish(b"STATE KILLED 4 killed\n")
            assert srv.subscribers == set()
            async with asyncio.timeout(5):
                assert (await conn[0].readline()).startswith(b"ERR line timeout")
                assert await conn[0].read() == b""
            conn[1].close()
        finally:
            await srv.stop()


class TestListenRefusals:
    """Unix listen paths the server must refuse at start, each with a one-line reason."""

    async def test_directory_that_does_not_exist(self, gate: Gate, tmp_path: Path) -> None:
        """A socket path in a missing directory is a startup error naming the address."""
        path = tmp_path / "missing" / "g.sock"
        srv = GateServer(gate, [ListenAddr("unix", path=str(path))], logger=CapturingLogger())
        with pytest.raises(StartupError, match=r"listen: cannot listen on .*No such file"):
            await srv.start()
        assert srv.bound_ports() == [] and not path.exists()

    async def test_path_under_a_regular_file(self, gate: Gate, tmp_path: Path) -> None:
        """A socket path whose parent is a file cannot even be inspected, and says so."""
        parent = tmp_path / "afile"
        parent.write_text("keep me\n")
        path = parent / "g.sock"
        srv = GateServer(gate, [ListenAddr("unix", path=str(path))], logger=CapturingLogger())
        with pytest.raises(StartupError, match=rf"listen: cannot inspect {path}: Not a directory"):
            await srv.start()
        assert parent.read_text() == "keep me\n"

    async def test_wedged_listener_is_not_taken_over(self, gate: Gate, tmp_path: Path) -> None:
        """A socket whose owner listens but never accepts (its backlog full) may still be
        live: the server refuses to take it over rather than guess."""
        path = tmp_path / "w.sock"
        owner = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        owner.bind(str(path))
        owner.listen(0)
        queued: list[socket.socket] = []
        try:
            while True:  # fill the accept queue nobody drains
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                queued.append(c)
                try:
                    c.connect(str(path))
                except BlockingIOError:
                    break
            srv = GateServer(gate, [ListenAddr("unix", path=str(path))], logger=CapturingLogger())
            with pytest.raises(StartupError, match=r"listen: cannot tell whether .* is in use"):
                await srv.start()
            assert path.is_socket()
        finally:
            for c in queued:
                c.close()
            owner.close()
