"""`GateServer` on real sockets (TCP port 0 and a unix socket), driven by asyncio stream clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.protocol import MAX_LINE
from killswitch.core.node.state import HostView, NodeState
from killswitch.runtime.config import ListenAddr
from killswitch.runtime.errors import StartupError
from killswitch.sidecar.gateserver import GateProtocol, GateServer
from kstest import wait_until_async

T0 = 1000.0
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[], Awaitable[Conn]]


async def until(cond: Callable[[], bool], within: float = 5.0) -> None:
    """Wait for `cond` on the event loop the server shares with us (server internals that
    signal nothing, so polled), with a deadline."""
    await wait_until_async(cond, within, 0.001)


async def replies(reader: asyncio.StreamReader, n: int, within: float = 5.0) -> list[bytes]:
    async with asyncio.timeout(within):
        return [await reader.readline() for _ in range(n)]


async def ask(conn: Conn, line: bytes) -> bytes:
    reader, writer = conn
    writer.write(line + b"\n")
    await writer.drain()
    [reply] = await replies(reader, 1)
    return reply


@pytest.fixture
def gate() -> Gate:
    """A gate armed at epoch 3 whose lease does not run out during the test."""
    g = Gate("smars", "or-01", clock=lambda: T0, log=CapturingLogger())
    view = HostView(max_epoch=3, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=3)
    g.apply(view, lease_deadline=T0 + 3600)
    return g


@pytest.fixture
async def server(gate: Gate, tmp_path: Path) -> AsyncIterator[GateServer]:
    sock = tmp_path / "g.sock"
    assert len(str(sock)) < 100, "unix socket paths are limited to ~108 bytes"
    srv = GateServer(
        gate,
        [ListenAddr("tcp", host="127.0.0.1", port=0), ListenAddr("unix", path=str(sock))],
        logger=CapturingLogger(),
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture(params=["tcp", "unix"])
async def connect(request: pytest.FixtureRequest, server: GateServer) -> AsyncIterator[Connect]:
    """Opens client connections to the server over one transport; closes them after the test."""
    writers: list[asyncio.StreamWriter] = []

    async def open_one() -> Conn:
        if request.param == "tcp":
            [port] = server.bound_ports()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        else:
            [unix] = [a for a in server.listen if a.kind == "unix"]
            reader, writer = await asyncio.open_unix_connection(unix.path)
        writers.append(writer)
        return reader, writer

    try:
        yield open_one
    finally:
        for w in writers:
            w.close()
        for w in writers:
            # the server, or the test itself, may already have cut this connection
            with contextlib.suppress(ConnectionError):
                await w.wait_closed()


def protocol_of(server: GateServer) -> GateProtocol:
    [proto] = server.connections
    return proto


def holding(server: GateServer, partial: bytes) -> Callable[[], bool]:
    """True once the server's one connection holds `partial` (or is discarding a long line)."""

    def cond() -> bool:
        if len(server.connections) != 1:
            return False
        proto = protocol_of(server)
        return proto.discarding or proto.buf == partial

    return cond


class TestGateServer:
    async def test_bound_ports_gives_the_tcp_port(self, server: GateServer) -> None:
        """Port 0 binds a real ephemeral port, and only the TCP listener reports one."""
        [port] = server.bound_ports()
        assert 0 < port < 65536

    async def test_ping(self, connect: Connect) -> None:
        """A PING on a fresh connection reports the gate's state and epoch."""
        assert await ask(await connect(), b"PING") == b"PONG ARMED 3\n"

    async def test_pipelined_orders_in_order(self, connect: Connect, gate: Gate) -> None:
        """1000 ORDER lines in one write get 1000 replies, in order, each echoing its id."""
        reader, writer = await connect()
        writer.write(b"".join(f"ORDER id-{i} AAPL BUY {i + 1}\n".encode() for i in range(1000)))
        await writer.drain()
        got = await replies(reader, 1000)
        assert got == [f"ALLOW id-{i} 3\n".encode() for i in range(1000)]
        assert (gate.allowed, gate.blocked) == (1000, 0)

    async def test_split_request_answered_when_complete(
        self, connect: Connect, server: GateServer, gate: Gate
    ) -> None:
        """A request arriving in pieces is held until its newline, then answered once."""
        reader, writer = await connect()
        sent = b""
        for piece in (b"ORD", b"ER o-7 AA", b"PL SELL 25 18", b"7.5"):
            writer.write(piece)
            await writer.drain()
            sent += piece
            await until(holding(server, sent))
            assert (gate.allowed, gate.blocked) == (0, 0)
        writer.write(b"\nPI")
        await writer.drain()
        assert await replies(reader, 1) == [b"ALLOW o-7 3\n"]
        writer.write(b"NG\r\n")
        assert await replies(reader, 1) == [b"PONG ARMED 3\n"]
        assert (gate.allowed, gate.blocked) == (1, 0)

    @pytest.mark.parametrize("chunk", [10_240, 1000, 333])
    async def test_long_line_one_err_then_recovers(
        self, connect: Connect, server: GateServer, gate: Gate, chunk: int
    ) -> None:
        """A 10 KB line gets one ERR line too long, however it arrives, and the next PING works."""
        reader, writer = await connect()
        line = b"ORDER big AAPL BUY 5 " + b"9" * (10_240 - 21)
        for i in range(0, len(line), chunk):
            writer.write(line[i : i + chunk])
            await writer.drain()
            await until(holding(server, line[: i + chunk]))  # each chunk arrives on its own
        assert await replies(reader, 1) == [b"ERR line too long\n"]
        writer.write(b"\nPING\n")
        await writer.drain()
        assert await replies(reader, 1) == [b"PONG ARMED 3\n"]
        assert (gate.allowed, gate.blocked) == (0, 0)

    async def test_long_line_with_newline_in_one_write(self, connect: Connect) -> None:
        """A whole over-long line (newline included) gets exactly one ERR before the next reply."""
        reader, writer = await connect()
        writer.write(b"x" * 10_240 + b"\nPING\n")
        await writer.drain()
        assert await replies(reader, 2) == [b"ERR line too long\n", b"PONG ARMED 3\n"]

    async def test_max_line_is_served(self, connect: Connect) -> None:
        """A line of exactly MAX_LINE bytes sent in two pieces is parsed, not refused."""
        reader, writer = await connect()
        head = b"ORDER edge AAPL BUY 5 "
        line = head + b"1" * (MAX_LINE - len(head))
        writer.write(line[:600])
        await writer.drain()
        writer.write(line[600:] + b"\n")
        await writer.drain()
        assert await replies(reader, 1) == [b"ALLOW edge 3\n"]

    @pytest.mark.parametrize("split", [None, MAX_LINE, MAX_LINE + 1])
    async def test_max_line_with_crlf_regardless_of_segmentation(
        self, connect: Connect, server: GateServer, split: int | None
    ) -> None:
        """A MAX_LINE-byte request ended by CRLF gets the same reply however the stream splits it."""
        reader, writer = await connect()
        head = b"ORDER crlf AAPL BUY 5 "
        data = head + b"1" * (MAX_LINE - len(head)) + b"\r\n"
        if split is not None:
            writer.write(data[:split])
            await writer.drain()
            # make the server see the first piece on its own before the rest arrives
            await until(holding(server, data[:split]))
            data = data[split:]
        writer.write(data)
        await writer.drain()
        assert await replies(reader, 1) == [b"ALLOW crlf 3\n"]

    @pytest.mark.parametrize(
        "line",
        [b"ORDER o-1 AAPL BUY \xff\xfe", b"\xc3\x28", b"PING\xff", b"\xed\xa0\x80"],
    )
    async def test_invalid_utf8(self, connect: Connect, gate: Gate, line: bytes) -> None:
        """Invalid UTF-8 gets ERR invalid utf-8 and the connection stays open."""
        conn = await connect()
        assert await ask(conn, line) == b"ERR invalid utf-8\n"
        assert await ask(conn, b"PING") == b"PONG ARMED 3\n"
        assert (gate.allowed, gate.blocked) == (0, 0)

    async def test_garbage_leaves_counts_alone(self, connect: Connect, gate: Gate) -> None:
        """A burst of malformed lines gets one ERR each and never moves a count."""
        reader, writer = await connect()
        garbage = [
            b"",
            b"ORDER",
            b"ORDER o-1 AAPL buy 1",
            b"ORDER o-1 AAPL BUY 0",
            b"ORDER o-1 AAPL BUY 5 nan",
            b"\x00\x01\x02",
            b"PING PING",
            b"ALLOW o-1 3",
            b"\x1b[2J",
            "ORDER o-1 AAPL BUY \uff11\uff12".encode(),  # full-width 12,
        ]
        writer.write(b"\n".join(garbage) + b"\nPING\n")
        await writer.drain()
        got = await replies(reader, len(garbage) + 1)
        assert all(r.startswith(b"ERR ") for r in got[:-1]), got
        assert got[-1] == b"PONG ARMED 3\n"
        assert (gate.allowed, gate.blocked) == (0, 0)

    async def test_blocked_orders_counted(
        self, connect: Connect, gate: Gate, server: GateServer
    ) -> None:
        """After a kill, pipelined orders are each blocked and counted once."""
        killed = HostView(max_epoch=4, max_state=NodeState.KILLED, state=NodeState.KILLED, epoch=4)
        gate.apply(killed, lease_deadline=T0 + 3600)
        reader, writer = await connect()
        writer.write(b"".join(f"ORDER k{i} AAPL BUY 1\n".encode() for i in range(50)))
        await writer.drain()
        assert await replies(reader, 50) == [f"BLOCK k{i} 4 killed\n".encode() for i in range(50)]
        assert (gate.allowed, gate.blocked) == (0, 50)

    @pytest.mark.slow
    async def test_abrupt_connections_leave_server_answering(
        self, connect: Connect, server: GateServer, gate: Gate
    ) -> None:
        """500 connections reset mid-request leave the server serving and its counts intact."""
        for _ in range(5):
            conns = [await connect() for _ in range(100)]
            for i, (_, writer) in enumerate(conns):
                if i % 3 == 0:
                    writer.write(b"ORDER half-")  # a request cut off by the reset
                elif i % 3 == 1:
                    writer.write(b"PING\nPING\nORDER x")
                writer.transport.abort()
            await until(lambda: len(server.connections) == 0)
        conn = await connect()
        assert await ask(conn, b"PING") == b"PONG ARMED 3\n"
        assert gate.blocked == 0
        assert gate.allowed == 0
        assert await ask(conn, b"ORDER after AAPL BUY 1") == b"ALLOW after 3\n"

    async def test_many_clients_each_get_their_own_replies(
        self, connect: Connect, gate: Gate
    ) -> None:
        """Concurrent clients pipelining at once each get their own ids back, in order."""
        conns = [await connect() for _ in range(20)]
        for c, (_, writer) in enumerate(conns):
            writer.write(b"".join(f"ORDER c{c}-{i} AAPL BUY 1\n".encode() for i in range(50)))
        got = await asyncio.gather(*(replies(reader, 50) for reader, _ in conns))
        for c, lines in enumerate(got):
            assert lines == [f"ALLOW c{c}-{i} 3\n".encode() for i in range(50)]
        assert gate.allowed == 1000


class TestGateServerLifecycle:
    async def test_stop_is_idempotent_and_removes_socket(self, gate: Gate, tmp_path: Path) -> None:
        """stop() twice is harmless and removes the unix socket file; start() twice binds once."""
        sock = tmp_path / "life.sock"
        srv = GateServer(gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger())
        await srv.start()
        await srv.start()
        assert sock.exists()
        reader, writer = await asyncio.open_unix_connection(str(sock))
        assert await ask((reader, writer), b"PING") == b"PONG ARMED 3\n"
        await srv.stop()
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # the server closed our connection
        writer.close()
        await writer.wait_closed()
        await srv.stop()
        assert not sock.exists()
        assert srv.bound_ports() == []

    async def test_stale_socket_file_is_replaced(self, gate: Gate, tmp_path: Path) -> None:
        """A socket left by a crashed run (nobody listening) does not stop the server binding."""
        sock = tmp_path / "stale.sock"
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(sock))
        dead.close()  # the file stays, as after a crash
        assert stat.S_ISSOCK(sock.lstat().st_mode)
        srv = GateServer(gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger())
        await srv.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(sock))
            assert await ask((reader, writer), b"PING") == b"PONG ARMED 3\n"
            writer.close()
            await writer.wait_closed()
        finally:
            await srv.stop()

    async def test_regular_file_at_listen_path_is_refused_and_kept(
        self, gate: Gate, tmp_path: Path
    ) -> None:
        """A file that is not a socket is never removed: start() refuses (exit 2) naming it."""
        path = tmp_path / "important.db"
        path.write_text("precious")
        srv = GateServer(gate, [ListenAddr("unix", path=str(path))], logger=CapturingLogger())
        with pytest.raises(StartupError, match="not a socket") as info:
            await srv.start()
        assert info.value.code == 2
        assert path.read_text() == "precious"

    async def test_live_socket_of_another_server_is_not_taken_over(
        self, gate: Gate, tmp_path: Path
    ) -> None:
        """A second server on a path a live one serves refuses, and the first keeps serving."""
        sock = tmp_path / "live.sock"
        first = GateServer(gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger())
        await first.start()
        try:
            second = GateServer(
                gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger()
            )
            with pytest.raises(StartupError, match="another live process"):
                await second.start()
            await second.stop()  # must not remove the first server's socket
            reader, writer = await asyncio.open_unix_connection(str(sock))
            assert await ask((reader, writer), b"PING") == b"PONG ARMED 3\n"
            writer.close()
            await writer.wait_closed()
        finally:
            await first.stop()

    async def test_tcp_port_in_use_is_one_line_startup_error(self, gate: Gate) -> None:
        """Binding a TCP port another socket holds raises StartupError naming the address."""
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        try:
            srv = GateServer(
                gate, [ListenAddr("tcp", host="127.0.0.1", port=port)], logger=CapturingLogger()
            )
            with pytest.raises(StartupError, match=f"tcp:127.0.0.1:{port}") as info:
                await srv.start()
            assert "\n" not in str(info.value)
        finally:
            holder.close()

    @pytest.mark.parametrize(("mode", "umask"), [(0o660, 0o000), (0o600, 0o022), (0o666, 0o077)])
    async def test_socket_mode_is_exact_whatever_the_umask(
        self, gate: Gate, tmp_path: Path, mode: int, umask: int
    ) -> None:
        """--socket-mode sets the unix socket's permission bits exactly, not via the umask."""
        sock = tmp_path / "m.sock"
        old = os.umask(umask)
        try:
            srv = GateServer(
                gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger(),
                socket_mode=mode, socket_gid=os.getgid(),
            )  # fmt: skip
            await srv.start()
        finally:
            os.umask(old)
        try:
            assert stat.S_IMODE(sock.stat().st_mode) == mode
            assert sock.stat().st_gid == os.getgid()
        finally:
            await srv.stop()


class TestGateServerLimits:
    """No client, or crowd of clients, can lock a real client out of the gate."""

    async def test_partial_line_is_closed_after_line_timeout(
        self, gate: Gate, tmp_path: Path
    ) -> None:
        """A client holding a line without its newline gets ERR line timeout and is closed."""
        sock = tmp_path / "t.sock"
        srv = GateServer(
            gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger(), line_timeout=0.2
        )
        await srv.start()
        try:
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(b"PING\nORDER 1 AAPL BU")
            await writer.drain()
            async with asyncio.timeout(10):
                assert await reader.readline() == b"PONG ARMED 3\n"
                assert (await reader.readline()).startswith(b"ERR line timeout")
                assert await reader.read() == b""
            assert srv.timed_out == 1 and gate.allowed == 0
            writer.close()
        finally:
            await srv.stop()

    async def test_idle_complete_lines_are_not_timed_out(self, gate: Gate, tmp_path: Path) -> None:
        """A client that only ever sends whole lines may stay idle past the line timeout."""
        sock = tmp_path / "i.sock"
        srv = GateServer(
            gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger(), line_timeout=0.1
        )
        await srv.start()
        try:
            conn = await asyncio.open_unix_connection(str(sock))
            assert await ask(conn, b"PING") == b"PONG ARMED 3\n"
            # Several reaper passes, each well past the line timeout since the last request.
            sweeps = srv.sweeps
            await until(lambda: srv.sweeps >= sweeps + 8, 10.0)
            assert len(srv.connections) == 1
            assert await ask(conn, b"PING") == b"PONG ARMED 3\n"
            assert srv.timed_out == 0
            conn[1].close()
        finally:
            await srv.stop()

    async def test_cap_evicts_silent_connections_for_a_real_client(
        self, gate: Gate, tmp_path: Path
    ) -> None:
        """At the cap, the longest-idle connection (here one that never spoke) makes room."""
        sock = tmp_path / "c.sock"
        srv = GateServer(
            gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger(), max_conns=8
        )
        await srv.start()
        try:
            squatters = [await asyncio.open_unix_connection(str(sock)) for _ in range(8)]
            await until(lambda: len(srv.connections) == 8)
            real = await asyncio.open_unix_connection(str(sock))
            assert await ask(real, b"ORDER r1 AAPL BUY 1") == b"ALLOW r1 3\n"
            assert srv.evicted == 1 and len(srv.connections) == 8
            async with asyncio.timeout(5):
                assert (await squatters[0][0].readline()).startswith(b"ERR closed")
            for _, w in [*squatters, real]:
                w.close()
        finally:
            await srv.stop()

    async def test_flood_of_clients_that_pinged_once_cannot_hold_every_slot(
        self, gate: Gate, tmp_path: Path
    ) -> None:
        """Every slot held by a client that said PING once: a newcomer is served and the
        longest-idle one is closed, then the next; a busy client is never the one closed."""
        sock = tmp_path / "f.sock"
        srv = GateServer(
            gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger(), max_conns=4
        )
        await srv.start()
        try:
            flood = [await asyncio.open_unix_connection(str(sock)) for _ in range(4)]
            for c in flood:
                assert await ask(c, b"PING") == b"PONG ARMED 3\n"
            assert await ask(flood[0], b"ORDER busy AAPL BUY 1") == b"ALLOW busy 3\n"
            for i, idle in enumerate((flood[1], flood[2]), 1):
                newcomer = await asyncio.open_unix_connection(str(sock))
                assert await ask(newcomer, b"ORDER n AAPL BUY 1") == b"ALLOW n 3\n"
                async with asyncio.timeout(5):
                    assert (await idle[0].readline()).startswith(b"ERR closed")
                    assert await idle[0].read() == b""
                assert srv.evicted == i and srv.refused == 0 and len(srv.connections) == 4
                flood.append(newcomer)
            assert await ask(flood[0], b"PING") == b"PONG ARMED 3\n"  # busy: never evicted
            for _, w in flood:
                w.close()
        finally:
            await srv.stop()

    async def test_subscribers_are_evicted_last(self, gate: Gate, tmp_path: Path) -> None:
        """A subscribed trading process idle longest keeps its slot while another can go."""
        sock = tmp_path / "s.sock"
        srv = GateServer(
            gate, [ListenAddr("unix", path=str(sock))], logger=CapturingLogger(), max_conns=2
        )
        await srv.start()
        try:
            sub = await asyncio.open_unix_connection(str(sock))
            assert await ask(sub, b"SUBSCRIBE") == b"STATE ARMED 3 armed\n"
            other = await asyncio.open_unix_connection(str(sock))
            assert await ask(other, b"PING") == b"PONG ARMED 3\n"
            newcomer = await asyncio.open_unix_connection(str(sock))
            assert await ask(newcomer, b"PING") == b"PONG ARMED 3\n"
            async with asyncio.timeout(5):
                assert (await other[0].readline()).startswith(b"ERR closed")
            assert len(srv.subscribers) == 1 and srv.evicted == 1
            for _, w in (sub, other, newcomer):
                w.close()
        finally:
            await srv.stop()
