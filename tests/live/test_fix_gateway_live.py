"""The FIX gateway between two QuickFIX engines (Debian's libquickfix, built by the test kit):
a real sidecar process relays a FIX.4.4, a FIX.4.2 and a FIXT.1.1 (FIX.5.0SP2) session to
three QuickFIX venues.

QuickFIX checks both legs at the session level (sequence numbers, BodyLength, CheckSum,
required fields against its own data dictionary); a test fails on any Reject, Logout or
sequence trouble either engine logs.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.sim.fleet import Fleet, wait_until
from kstest.fixpeer import Event, FixPeer, build
from kstest.fixpeer import parse as parse_event

HOST = "fx-01"
VERSIONS = ("FIX.4.4", "FIX.4.2", "FIXT.1.1")  # FIXT.1.1 carries FIX.5.0SP2


@dataclass
class Leg:
    """One relayed session: its QuickFIX client, its QuickFIX venue, the relay's port."""

    begin: str
    client: FixPeer
    venue: FixPeer
    relay_port: int

    def orders_at_venue(self) -> list[str]:
        return [e.fields["11"] for e in self.venue.select("app_in", f35="D")]

    def reports(self, status: str) -> list[str]:
        return [e.fields["11"] for e in self.client.select("app_in", f35="8", f39=status)]

    def in_step(self) -> bool:
        """Each end expects exactly the next MsgSeqNum the other will send."""
        (c_next, c_expect), (v_next, v_expect) = self.client.seq(), self.venue.seq()
        return c_next == v_expect and v_next == c_expect

    def faults(self) -> list[str]:
        return self.client.session_faults() + self.venue.session_faults()


@dataclass
class Gateway:
    fleet: Fleet
    legs: dict[str, Leg]
    metrics_port: int

    def status(self) -> dict[str, object]:
        _, rep = self.fleet.cli_json("status")
        host = rep["hosts"][HOST]
        assert isinstance(host, dict)
        return host

    def send_orders(self, prefix: str, n: int) -> dict[str, list[str]]:
        ids: dict[str, list[str]] = {}
        for leg in self.legs.values():
            ids[leg.begin] = [f"{prefix}-{leg.begin[-1]}-{i}" for i in range(n)]
            leg.client.send(*(f"order {i} AAPL 1 100 10.5" for i in ids[leg.begin]))
        return ids

    def wait_reports(self, ids: dict[str, list[str]], status: str, timeout: float = 30) -> None:
        for begin, want in ids.items():
            leg = self.legs[begin]
            leg.client.wait(lambda leg=leg, want=want: set(want) <= set(leg.reports(status)),
                            timeout, f"{begin}: {len(want)} reports 39={status}")  # fmt: skip

    def kill(self) -> int:
        code, rep = self.fleet.cli_json("kill", "--reason", "fix test", "--timeout", "10")
        assert code == 0, rep
        return int(rep["epoch"])

    def arm(self) -> None:
        self.fleet.arm(reason="fix test")
        self.fleet.wait_all("PONG ARMED", 15)


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def gateway(
    redis_server: EmbeddedRedis,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[Gateway]:
    """One sidecar relaying the three FIX versions, an aggregator, the node armed, every
    client logged on through the relay; every test runs with the sidecar on each event loop
    (`--event-loop`)."""
    loop: str = request.param
    build()  # compiled once (cached by the source's hash)
    url = redis_server.url
    work = tmp_path_factory.mktemp("fixgw")
    ports = {b: (free_port(), free_port()) for b in VERSIONS}
    routes = [
        a for b, (r, v) in ports.items() for a in ("--fix", f"tcp:127.0.0.1:{r}=tcp:127.0.0.1:{v}")
    ]
    metrics_port = free_port()
    fleet = Fleet(url, f"fix{time.monotonic_ns() % 10**9}", [HOST], workdir=work,
                  extra_sidecar_args=(*routes, "--line-timeout", "1", "--event-loop", loop),
                  metrics_ports={HOST: metrics_port})  # fmt: skip
    legs: dict[str, Leg] = {}
    try:
        fleet.start()
        fleet.start_aggregator("--tick", "0.05")
        fleet.wait_ready(30)
        started = fleet.sidecars[HOST].logged("SIDECAR_STARTED")
        assert [e["event_loop"] for e in started] == [loop]
        fleet.arm()
        fleet.wait_all("PONG ARMED", 15)
        for b, (relay, venue) in ports.items():
            v = FixPeer("venue", b, venue, work / b / "venue")
            c = FixPeer("client", b, relay, work / b / "client")
            legs[b] = Leg(b, c, v, relay)
        for leg in legs.values():
            leg.client.wait(
                lambda leg=leg: leg.client.count("logon"), 30, "logon through the relay"
            )
        yield Gateway(fleet, legs, metrics_port)
    finally:
        for leg in legs.values():
            leg.client.stop()
            leg.venue.stop()
        fleet.stop()


class TestKillThroughFix:
    def test_orders_kill_cancels_rearm(self, gateway: Gateway) -> None:
        """100 orders are filled; after a kill 100 more are each rejected by the relay with an
        ExecutionReport and none reaches the venue, cancels do; after a signed arm orders flow
        again; neither engine sees a Reject, a Logout or a sequence gap it cannot resolve."""
        gw = gateway
        first = gw.send_orders("a", 100)
        gw.wait_reports(first, "2")
        epoch = gw.kill()
        blocked = gw.send_orders("k", 100)
        gw.wait_reports(blocked, "8")
        for leg in gw.legs.values():
            leg.client.send(*(f"cancel x{i} {first[leg.begin][i]} AAPL 1 100" for i in range(5)))
        for leg in gw.legs.values():
            leg.venue.wait(lambda leg=leg: leg.venue.count("app_in", f35="F") >= 5, 20, "cancels")
            rejects = leg.client.select("app_in", f35="8", f39="8")
            assert {e.fields["58"] for e in rejects} == {f"killswitch killed epoch {epoch}"}
            assert {e.fields["150"] for e in rejects} == {"8"}
            assert not set(blocked[leg.begin]) & set(leg.orders_at_venue()), (
                "a blocked order reached the venue"
            )
        gw.arm()
        again = gw.send_orders("b", 20)
        gw.wait_reports(again, "2")
        for leg in gw.legs.values():
            leg.client.send("testreq from-client")  # TestRequests are answered through the relay
            leg.venue.send("testreq from-venue")
            for peer, tid in ((leg.client, "from-client"), (leg.venue, "from-venue")):
                peer.wait(
                    lambda peer=peer, tid=tid: peer.count("admin_in", f35="0", f112=tid), 20, tid
                )
            # The two ends are asked one after the other, so a heartbeat in flight between the
            # two questions reads as a gap for a moment: in step means in step once it lands.
            wait_until(leg.in_step, 10, 0.05, f"{leg.begin}: both ends in step")
            assert leg.faults() == [], leg.begin
        wait_until(lambda: gw.status()["wire"] >= 240, 15, what="wire counts forwarded orders")
        logged = {e["order_id"] for e in gw.fleet.sidecars[HOST].events("BLOCK_ORDER")}
        assert set(blocked["FIX.4.4"]) <= logged, "BLOCK_ORDER names the ClOrdID"
        with urllib.request.urlopen(f"http://127.0.0.1:{gw.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'killswitch_fix_messages_total{decision="blocked",host="fx-01",msgtype="D"' in text


class TestResend:
    def test_resend_requests_across_blocked_orders(self, gateway: Gateway) -> None:
        """A ResendRequest from each side over a stretch holding blocked orders is answered so
        both engines accept it: the client gets its rejections again, the venue gap fills for
        the blocked orders and never the orders themselves."""
        gw = gateway
        gw.kill()
        blocked = gw.send_orders("r", 10)
        gw.wait_reports(blocked, "8")
        gw.arm()
        allowed = gw.send_orders("s", 5)
        gw.wait_reports(allowed, "2")
        for leg in gw.legs.values():
            resend_both_ways(leg, blocked[leg.begin], allowed[leg.begin])


def resend_both_ways(leg: Leg, blocked: list[str], allowed: list[str]) -> None:
    """Each engine forgets 20 messages it received and asks for them again."""

    def rejections() -> list[Event]:
        return leg.client.select("app_in", f43="Y", f39="8")

    before = len(rejections())
    leg.client.send("gap 20", "testreq client-gap")  # the next venue message is "too high"
    leg.client.wait(lambda: len(rejections()) > before, 20, "the client's rejections resent")
    # The client's MsgSeqNums of the blocked orders: the venue must get gap fills there.
    slots = {int(e.fields["34"]) for e in leg.client.select("app_out", f35="D")
             if e.fields["11"] in blocked}  # fmt: skip

    def filled() -> set[int]:
        return slots & {int(e.fields["34"]) for e in leg.venue.select("admin_in", f35="4")}

    leg.venue.send("gap 20", "testreq venue-gap")
    leg.venue.wait(filled, 20, "gap fills where the blocked orders were")
    wait_until(leg.in_step, 20, what=f"{leg.begin} back in step")
    resent = {e.fields["11"] for e in leg.venue.select("app_in", f35="D", f43="Y")}
    assert resent & set(allowed), "allowed orders are resent to the venue"
    assert not set(blocked) & set(leg.orders_at_venue())
    assert leg.faults() == [], leg.begin


class TestBadPeers:
    def test_garbage_checksum_oversize_and_slow_loris(self, gateway: Gateway) -> None:
        """Garbage, a 1 MB message and a slow-loris partial message are disconnected, a bad
        checksum is dropped, each with a log line; the live sessions and the gate go on."""
        gw = gateway
        port = gw.legs["FIX.4.4"].relay_port
        bad = b"8=FIX.4.4\x019=5\x0135=0\x0110=000\x01"
        huge = b"8=FIX.4.4\x019=1048576\x0135=D\x01" + b"x" * (1 << 20)
        for payload in (
            b"GET / HTTP/1.1\r\n\r\n" + b"x" * 64,
            huge,
            b"8=FIX.4.4\x019=60\x0135=D\x01",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                try:
                    s.sendall(payload)
                    assert s.recv(100) == b"", "the relay closes the connection"
                except ConnectionResetError:
                    pass  # closed while the rest of the 1 MB was still being sent
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(bad)
            reasons = lambda: {e["reason"] for e in gw.fleet.sidecars[HOST].events("FIX_REFUSED")}  # noqa: E731
            wait_until(lambda: {"garbage", "oversize", "partial_timeout", "checksum"} <= reasons(), 15,
                       what="a FIX_REFUSED line for each")  # fmt: skip
        assert gw.fleet.ping(HOST).startswith("PONG ARMED")
        more = gw.send_orders("c", 5)
        gw.wait_reports(more, "2")
        for leg in gw.legs.values():
            assert leg.faults() == [], leg.begin


class TestRelayRestart:
    def test_sigterm_reconnect_and_sequence_recovery(self, gateway: Gateway) -> None:
        """The sidecar stops (SIGTERM) under live sessions: both engines see the connection
        close, orders sent meanwhile are recovered by resend after the restart, in step."""
        gw = gateway
        gw.fleet.sidecars[HOST].stop()
        for leg in gw.legs.values():
            for peer in (leg.client, leg.venue):
                peer.wait(lambda peer=peer: peer.count("logout") >= 1, 20, "disconnect seen")
        queued = gw.send_orders("q", 3)  # the client engine stores them, to resend
        gw.fleet.start_sidecar(HOST)
        gw.fleet.wait_all("PONG ARMED", 30)
        for leg in gw.legs.values():
            leg.client.wait(lambda leg=leg: leg.client.count("logon") >= 2, 30, "logon again")
        # Resent when the client logs on again: filled, or, if the restarted gate has not yet
        # proven the node armed, rejected by the relay; either way answered, never lost.
        for begin, ids in queued.items():
            leg = gw.legs[begin]
            leg.client.wait(lambda leg=leg, ids=ids: set(ids) <= {*leg.reports("2"), *leg.reports("8")},
                            30, f"{begin}: the queued orders answered")  # fmt: skip
            assert not set(ids) & set(leg.reports("8")) & set(leg.orders_at_venue())
        after = gw.send_orders("p", 3)
        gw.wait_reports(after, "2")
        for leg in gw.legs.values():
            wait_until(leg.in_step, 20, what=f"{leg.begin} in step")
            assert leg.faults() == [], leg.begin


def test_event_lines_parse() -> None:
    """The QuickFIX peer's report lines are read field by field (SOH printed as '|')."""
    ev = parse_event("app_in|8=FIX.4.4|9=5|35=8|58=killswitch killed epoch 3|10=000|")
    assert (ev.kind, ev.type, ev.fields["58"]) == ("app_in", "8", "killswitch killed epoch 3")
    assert Path(build()).exists()
