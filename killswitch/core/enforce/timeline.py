"""The flight recorder's timeline: several hosts' records merged, filtered and cut around a
kill.

Pure: decoded entries in, entries out (`core.enforce.recfmt` decodes; nothing here reads a file).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from killswitch.core.enforce.recfmt import Decoded, Entry

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Span:
    """Wall-time bounds in ns (None: open) and a host filter (empty: every host)."""

    since_ns: int | None = None
    until_ns: int | None = None
    hosts: frozenset[str] = frozenset()

    def keeps(self, e: Entry) -> bool:
        if self.hosts and e.host not in self.hosts:
            return False
        if self.since_ns is not None and e.t_ns < self.since_ns:
            return False
        return self.until_ns is None or e.t_ns <= self.until_ns


def merge(files: Iterable[Sequence[Entry]]) -> list[Entry]:
    """One timeline, oldest first; equal times ordered by host, then by the host's seq."""
    return sorted((e for f in files for e in f), key=lambda e: (e.t_ns, e.host, e.seq))


def kill_time(entries: Sequence[Entry], epoch: int) -> int | None:
    """When this host applied the kill at `epoch`: its kill marker, else its first record at
    that epoch or later (a host whose marker was overwritten); None: not in these records."""
    first = None
    for e in entries:
        if e.epoch == epoch and e.decision == "kill":
            return e.t_ns
        if first is None and e.epoch >= epoch:
            first = e.t_ns
    return first


def around(files: Sequence[Decoded], epoch: int, default_s: int) -> list[Entry]:
    """Every host's records from its freeze span before its kill at `epoch` to as long after
    (a frozen file of that epoch is taken whole), merged."""
    runs: list[list[Entry]] = []
    for d in files:
        h = d.header
        if h.epoch == epoch and h.kill_ns:
            runs.append(list(d.entries))
            continue
        t = kill_time(d.entries, epoch)
        if t is None:
            continue
        span = (h.freeze_s or default_s) * NS
        runs.append([e for e in d.entries if t - span <= e.t_ns <= t + span])
    return merge(runs)


def select(files: Sequence[Decoded], span: Span, epoch: int | None, default_s: int) -> list[Entry]:
    """What `killswitch recorder` prints: around a kill or everything, then the span's cut."""
    merged = (
        around(files, epoch, default_s)
        if epoch is not None
        else merge([list(d.entries) for d in files])
    )
    return [e for e in merged if span.keeps(e)]
