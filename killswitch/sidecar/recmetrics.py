"""The flight recorder's Prometheus metrics, read at scrape time from the ring's header and
the recording's plain counters: the order path counts nothing for them.

Registered only when the sidecar has a ring (`--recorder ''` exports none of these).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from killswitch.runtime.ring import Ring

NS = 1_000_000_000


class Recording(Protocol):
    """What the collector reads of `sidecar.recording.Recording`."""

    @property
    def ring(self) -> Ring | None: ...
    @property
    def freezes(self) -> int: ...
    @property
    def failures(self) -> Mapping[str, int]: ...
    @property
    def frozen_bytes(self) -> int: ...


class RecorderCollector:
    """`killswitch_recorder_*` of one sidecar (node, host labels; `reason` on failures)."""

    def __init__(self, rec: Recording, node: str, host: str) -> None:
        self.rec = rec
        self.labels = [node, host]

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterable[Any]:
        rec, ring, names = self.rec, self.rec.ring, ["node", "host"]
        out: list[Any] = []
        if ring is not None:  # closed on stop: the last scrape has no ring figures
            written = ring.next_seq() - ring.started
            capacity = ring.slots - 1
            wraps = (ring.next_seq() - 1) // ring.slots - (ring.started - 1) // ring.slots
            out += [
                _one(CounterMetricFamily, "killswitch_recorder_records", "Gate decisions this "
                     "sidecar wrote into its flight recorder's ring.", names, self.labels,
                     written),
                _one(CounterMetricFamily, "killswitch_recorder_dropped", "Gate decisions the "
                     "flight recorder could not write (values it could not pack, a closed ring).",
                     names, self.labels, ring.dropped),
                _one(GaugeMetricFamily, "killswitch_recorder_capacity_records", "Records the "
                     "ring holds (--recorder-size); the oldest is overwritten past that.",
                     names, self.labels, capacity),
                _one(CounterMetricFamily, "killswitch_recorder_wraps", "Times this sidecar's "
                     "writes went round the ring (each overwrote its oldest records).",
                     names, self.labels, wraps),
                _one(GaugeMetricFamily, "killswitch_recorder_writer_info", "1, labelled with "
                     "what writes each record: native (the C writer) or python.",
                     [*names, "writer"], [*self.labels, ring.writer], 1),
                _one(GaugeMetricFamily, "killswitch_recorder_span_seconds", "Wall time from the "
                     "oldest record the ring holds to the newest: below --recorder-freeze, a "
                     "kill's freeze cannot reach its whole span back.", names, self.labels,
                     ring.span_ns() / NS),
            ]  # fmt: skip
        failed = CounterMetricFamily(
            "killswitch_recorder_freeze_failures", "Frozen files of a kill that could not be "
            "written, by reason (no_space, permission, io, other).", labels=[*names, "reason"],
        )  # fmt: skip
        for reason, n in rec.failures.items():
            failed.add_metric([*self.labels, reason], n)
        out += [
            _one(CounterMetricFamily, "killswitch_recorder_freezes", "Frozen files written (a "
                 "kill's records before it, then its completion --recorder-freeze s later).",
                 names, self.labels, rec.freezes),
            failed,
            _one(GaugeMetricFamily, "killswitch_recorder_frozen_bytes", "Size of the frozen "
                 "file this sidecar wrote last (0 before the first).", names, self.labels,
                 rec.frozen_bytes),
        ]  # fmt: skip
        return out


def _one(kind: Any, name: str, doc: str, names: list[str], labels: list[str], v: float) -> Any:
    m = kind(name, doc, labels=names)
    m.add_metric(labels, v)
    return m
