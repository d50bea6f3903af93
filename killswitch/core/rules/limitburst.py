"""The limit-burst rule: local limits refusing orders on several hosts at once is a node signal.

One host refusing orders over its limits is that host's gate doing its job. Refusals from
several hosts of one node inside one window look like Knight: the same bad release or bad
input on every host, each one held back locally, the node as a whole still trying. The
rule kills the node (cause `limit_burst`) when more than `max_refusals` limit refusals
came from at least `min_hosts` hosts within `window_ms`. Pure: Redis server time in, no
clock; the aggregator feeds it flow entries and the backtest feeds it a CSV.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from killswitch.core.rules.window import SlidingWindow
from killswitch.core.settings.options import default_ms

LIMIT_BURST = "limit_burst"


@dataclass(frozen=True, slots=True)
class LimitBurstConfig:
    max_refusals: int  # more than this many limit refusals in the window trips
    window_ms: int = 1000
    min_hosts: int = 2  # refusals from fewer hosts are left to those hosts' gates


@dataclass(frozen=True, slots=True)
class BurstTrip:
    at_ms: int
    refusals: int
    hosts: tuple[str, ...]

    @property
    def detail(self) -> str:
        return (
            f"{self.refusals} orders refused by local limits on {len(self.hosts)} hosts "
            f"({', '.join(self.hosts)}) within the window"
        )


class LimitBurst:
    """Feed `add()` with limit refusals, call `observe()` at each grid point."""

    def __init__(self, cfg: LimitBurstConfig) -> None:
        self.cfg = cfg
        self.window = SlidingWindow(cfg.window_ms)
        self._latched = False  # one trip per breach: re-armed when the burst is over
        self._pending: list[tuple[int, str, int]] = []  # read ahead of the evaluation grid

    def add(self, ts_ms: int, host: str, refusals: int) -> None:
        """Rows may arrive ahead of the grid point being evaluated; they count from theirs."""
        self._pending.append((ts_ms, host, refusals))

    def reset(self, since_ms: int = 0) -> None:
        """A new arm at `since_ms`: refusals before it never count against it."""
        self.window.clear()
        self._pending = [p for p in self._pending if p[0] >= since_ms]
        self._latched = False

    def observe(self, at_ms: int) -> BurstTrip | None:
        ready = sorted(p for p in self._pending if p[0] <= at_ms)
        if ready:
            self._pending = [p for p in self._pending if p[0] > at_ms]
            for row in ready:
                self.window.add(*row)
        self.window.advance(at_ms)
        total = self.window.total
        hosts = tuple(sorted(self.window.by_host))
        breach = total > self.cfg.max_refusals and len(hosts) >= self.cfg.min_hosts
        if not breach:
            self._latched = False
            return None
        if self._latched:
            return None
        self._latched = True
        return BurstTrip(at_ms, total, hosts)


def backtest(
    rows: Iterable[tuple[int, str, int]], cfg: LimitBurstConfig, tick_ms: int = default_ms("tick")
) -> list[BurstTrip]:
    """Replay (server ms, host, refusals) rows on the aggregator's grid; every trip it makes."""
    ordered = sorted(rows)
    if not ordered:
        return []
    rule = LimitBurst(cfg)
    trips: list[BurstTrip] = []
    for row in ordered:
        rule.add(*row)
    start = ordered[0][0] // tick_ms * tick_ms
    end = ordered[-1][0] + cfg.window_ms + tick_ms
    for at in range(start, end, tick_ms):
        trip = rule.observe(at)
        if trip is not None:
            trips.append(trip)
    return trips
