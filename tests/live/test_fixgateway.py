"""The FIX gateway's asyncio shell and its settings, in-process with raw sockets (the live
tests between two QuickFIX engines are in test_fix_gateway_live.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from killswitch.core.enforce.fixwire import Framer, encode
from killswitch.core.enforce.gate import Gate
from killswitch.core.node.state import HostView, NodeState
from killswitch.runtime.config import ConfigError, ListenAddr
from killswitch.runtime.convert import parse_fix_route
from killswitch.sidecar.fixgateway import FixGateway
from killswitch.sidecar.fixmetrics import FixCollector
from killswitch.sim.embedded import free_port
from killswitch.sim.fleet import wait_until_async


def tcp(port: int) -> ListenAddr:
    return ListenAddr("tcp", host="127.0.0.1", port=port)


def nos(seq: int, clordid: bytes, mt: bytes = b"D") -> bytes:
    return encode(b"FIX.4.4", [
        (b"35", mt), (b"49", b"C"), (b"56", b"V"), (b"34", b"%d" % seq),
        (b"52", b"20260101-00:00:00.000"), (b"11", clordid), (b"55", b"AAPL"), (b"54", b"1"),
        (b"38", b"10"), (b"44", b"1.5"),
    ])  # fmt: skip


class Venue:
    """A venue that records every message it gets and answers a TestRequest's id."""

    def __init__(self) -> None:
        self.got: list[bytes] = []
        self.port = free_port()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer()
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(writer.close)
            await self._relay(reader, writer, framer)

    async def _relay(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, framer: Framer
    ) -> None:
        while data := await reader.read(65536):
            for m in framer.feed(data):
                self.got.append(m)
                if b"\x0135=1\x01" in m:
                    token = m.split(b"\x01112=")[1].split(b"\x01")[0]
                    writer.write(encode(b"FIX.4.4", [(b"35", b"0"), (b"49", b"V"), (b"56", b"C"),
                                                     (b"34", b"7"), (b"52", b"x"), (b"112", token)]))  # fmt: skip


@pytest.fixture
async def relay() -> AsyncIterator[tuple[FixGateway, Venue, int, Gate]]:
    """A gateway on an armed gate, relaying to a raw venue."""
    gate = Gate("n", "h")
    gate.apply(HostView(1, NodeState.ARMED, NodeState.ARMED, 1, 1), time.monotonic() + 3600)
    venue = Venue()
    server = await asyncio.start_server(venue.serve, "127.0.0.1", venue.port)
    port = free_port()
    gw = FixGateway(gate, [(tcp(port), tcp(venue.port))], logger=structlog.get_logger(),
                    partial_timeout=0.3)  # fmt: skip
    await gw.start()
    try:
        yield gw, venue, port, gate
    finally:
        await gw.stop()
        server.close()
        await server.wait_closed()


class TestRelay:
    async def test_allowed_order_passes_blocked_order_gets_a_report(
        self, relay: tuple[FixGateway, Venue, int, Gate]
    ) -> None:
        """An allowed order reaches the venue as sent; after a kill the next one does not, and
        the client gets the rejecting ExecutionReport in the Heartbeat's slot."""
        gw, venue, port, gate = relay
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(nos(2, b"ok-1"))
        await wait_until_async(lambda: venue.got, 5, what="the order at the venue")
        assert venue.got == [nos(2, b"ok-1")] and gw.wire == 1
        gate.apply(HostView(2, NodeState.KILLED, NodeState.KILLED, 2, 1), time.monotonic() + 3600)
        writer.write(nos(3, b"no-1"))
        reply = await asyncio.wait_for(reader.read(65536), 5)
        assert b"\x0135=8\x01" in reply and b"\x0111=no-1\x01" in reply and b"\x0134=7\x01" in reply
        assert b"58=killswitch killed epoch 2\x01" in reply
        assert [m for m in venue.got if b"no-1" in m] == []
        assert gw.counts[(b"D", "blocked")] == 1 and gw.wire == 1
        writer.close()
        await writer.wait_closed()

    async def test_unknown_msgtypes_share_one_label(
        self, relay: tuple[FixGateway, Venue, int, Gate]
    ) -> None:
        """A peer's made-up MsgType is counted as "other": it cannot add metric series."""
        gw, venue, port, _ = relay
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(nos(2, b"x", mt=b"ZZZ"))
        await wait_until_async(lambda: venue.got, 5, what="relayed")
        assert gw.counts[(b"other", "passed")] == 1
        samples = {s.labels["msgtype"] for m in FixCollector(gw, "n", "h").collect() for s in m.samples
                   if "msgtype" in s.labels}  # fmt: skip
        assert "ZZZ" not in samples and {"D", "F", "other"} <= samples
        writer.close()
        await writer.wait_closed()

    async def test_slow_loris_is_disconnected_and_logged(
        self, relay: tuple[FixGateway, Venue, int, Gate]
    ) -> None:
        """A peer holding part of a message past the timeout is closed with FIX_REFUSED."""
        gw, _, port, _ = relay
        with capture_logs() as logs:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(nos(2, b"half")[:30])
            assert await asyncio.wait_for(reader.read(100), 5) == b""
        assert [e["reason"] for e in logs if e["event"] == "FIX_REFUSED"] == ["partial_timeout"]
        assert gw.refusals["partial_timeout"] == 1
        writer.close()
        await writer.wait_closed()

    async def test_unreachable_venue_closes_the_client(self) -> None:
        """With the venue down the client is disconnected and the failure logged."""
        gw = FixGateway(Gate("n", "h"), [(tcp(port := free_port()), tcp(free_port()))],
                        logger=structlog.get_logger())  # fmt: skip
        await gw.start()
        try:
            with capture_logs() as logs:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                assert await asyncio.wait_for(reader.read(100), 5) == b""
                writer.close()
                await writer.wait_closed()
            assert any(e["event"] == "FIX_UPSTREAM_FAILED" for e in logs)
        finally:
            await gw.stop()

    async def test_sessions_over_the_cap_are_refused(self, tmp_path: Path) -> None:
        """At the session cap a newcomer is closed with a log line; a unix listener works."""
        venue = Venue()
        server = await asyncio.start_server(venue.serve, "127.0.0.1", venue.port)
        path = str(tmp_path / "fix.sock")
        gw = FixGateway(Gate("n", "h"), [(ListenAddr("unix", path=path), tcp(venue.port))],
                        logger=structlog.get_logger(), max_sessions=1)  # fmt: skip
        await gw.start()
        try:
            with capture_logs() as logs:
                _, first = await asyncio.open_unix_connection(path)
                await wait_until_async(lambda: gw.sessions, 5, what="the first session")
                reader, second = await asyncio.open_unix_connection(path)
                assert await asyncio.wait_for(reader.read(100), 5) == b""
            assert [e["reason"] for e in logs if e["event"] == "FIX_REFUSED"] == [
                "too_many_sessions"
            ]
            assert len(gw.sessions) == 1
            for w in (first, second):
                w.close()
                await w.wait_closed()
        finally:
            await gw.stop()
            server.close()
            await server.wait_closed()

    def test_report_and_metrics_without_routes(self) -> None:
        """Without --fix nothing is reported to Redis; the metrics still start at 0."""
        gw = FixGateway(Gate("n", "h"), [], logger=None)
        assert gw.report_fields() == ()
        reg = CollectorRegistry()
        reg.register(FixCollector(gw, "n", "h"))
        assert reg.get_sample_value("killswitch_fix_sessions", {"node": "n", "host": "h"}) == 0
        labels = {"node": "n", "host": "h", "reason": "garbage"}
        assert reg.get_sample_value("killswitch_fix_refused_total", labels) == 0


class TestRouteSetting:
    @pytest.mark.parametrize(
        ("value", "listen", "upstream"),
        [
            ("tcp:127.0.0.1:9878=tcp:10.0.0.5:9878", "tcp:127.0.0.1:9878", "tcp:10.0.0.5:9878"),
            ("tcp:[::1]:1=tcp:venue.example:2", "tcp:::1:1", "tcp:venue.example:2"),
            ("unix:/tmp/a=b.sock=tcp:10.0.0.5:1", "unix:/tmp/a=b.sock", "tcp:10.0.0.5:1"),
        ],
    )
    def test_routes(self, value: str, listen: str, upstream: str) -> None:
        """LISTEN=UPSTREAM splits at the last '=' that starts an address."""
        a, b = parse_fix_route(value)
        assert (str(a), str(b)) == (listen, upstream)

    @pytest.mark.parametrize(
        "value",
        ["tcp:127.0.0.1:9878", "tcp:1.2.3.4:1=udp:1.2.3.4:2", "=tcp:a:1", "tcp:a:x=tcp:b:1"],
    )
    def test_bad_routes_name_the_setting(self, value: str) -> None:
        """A value that is not LISTEN=UPSTREAM is refused naming `fix` and the value."""
        with pytest.raises(ConfigError, match="fix: "):
            parse_fix_route(value)
