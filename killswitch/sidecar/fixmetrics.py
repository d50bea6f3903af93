"""The FIX gateway's Prometheus metrics, read from its counters at scrape time.

It only reads the gateway's counters: nothing here runs on the relay path.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector


class FixGateway(Protocol):
    """What the collector reads of `sidecar.fixgateway.FixGateway`."""

    @property
    def counts(self) -> Mapping[tuple[bytes, str], int]: ...
    @property
    def refusals(self) -> Mapping[str, int]: ...
    @property
    def sessions(self) -> Sized: ...
    @property
    def wire(self) -> int: ...


class FixCollector(Collector):
    """The gateway's counters at scrape time: nothing is added to the relay path."""

    def __init__(self, gw: FixGateway, node: str, host: str) -> None:
        self.gw, self.node, self.host = gw, node, host

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        n, h = self.node, self.host
        msgs = CounterMetricFamily(
            "killswitch_fix_messages",
            "FIX messages the gateway relayed, by MsgType (35) and decision: allowed or blocked "
            "(orders), passed (everything else, both directions).",
            labels=["node", "host", "msgtype", "decision"],
        )
        for (mt, decision), count in sorted(self.gw.counts.items()):
            msgs.add_metric([n, h, mt.decode("ascii", "replace"), decision], count)
        yield msgs
        refused = CounterMetricFamily(
            "killswitch_fix_refused",
            "Connections closed or messages dropped by the FIX gateway, by reason.",
            labels=["node", "host", "reason"],
        )
        for reason, count in sorted(self.gw.refusals.items()):
            refused.add_metric([n, h, reason], count)
        yield refused
        sessions = GaugeMetricFamily(
            "killswitch_fix_sessions",
            "FIX sessions the gateway relays now.",
            labels=["node", "host"],
        )
        sessions.add_metric([n, h], len(self.gw.sessions))
        yield sessions
        wire = CounterMetricFamily(
            "killswitch_fix_wire_orders", "Orders the FIX gateway forwarded to a venue.",
            labels=["node", "host"],
        )  # fmt: skip
        wire.add_metric([n, h], self.gw.wire)
        yield wire
