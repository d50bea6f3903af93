"""Sliding-window sums of order counts across the hosts of a node.

Pure: it takes timestamps (milliseconds of Redis server time) and counts, never reads a
clock or Redis. The aggregator feeds it flow entries; the backtest feeds it a CSV.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Mapping


class SlidingWindow:
    """Orders per host within the last `width_ms` milliseconds, ending at the newest `now`.

    An entry at time t counts for a window ending at `now` when `now - width_ms < t <= now`.
    Entries may arrive out of order across hosts (each host flushes on its own schedule);
    they are kept sorted by time, so the window is exact whatever the arrival order.
    """

    __slots__ = ("_by_host", "_entries", "_total", "width_ms")

    def __init__(self, width_ms: int) -> None:
        if width_ms <= 0:
            raise ValueError("window width must be positive")
        self.width_ms = width_ms
        self._entries: deque[tuple[int, str, int]] = deque()
        self._by_host: dict[str, int] = {}
        self._total = 0

    def add(self, ts_ms: int, host: str, count: int) -> None:
        if count <= 0:
            return
        entry = (ts_ms, host, count)
        if self._entries and ts_ms < self._entries[-1][0]:
            bisect.insort(self._entries, entry)  # rare: a late entry; the deque stays sorted
        else:
            self._entries.append(entry)
        self._by_host[host] = self._by_host.get(host, 0) + count
        self._total += count

    def advance(self, now_ms: int) -> None:
        """Drop entries that fell out of the window ending at `now_ms`."""
        cutoff = now_ms - self.width_ms
        entries = self._entries
        while entries and entries[0][0] <= cutoff:
            _, host, count = entries.popleft()
            left = self._by_host[host] - count
            if left:
                self._by_host[host] = left
            else:
                del self._by_host[host]
            self._total -= count

    def clear(self) -> None:
        self._entries.clear()
        self._by_host.clear()
        self._total = 0

    @property
    def total(self) -> int:
        return self._total

    @property
    def by_host(self) -> Mapping[str, int]:
        return self._by_host


class NodeWindows:
    """The node's window and, when the rules use one, the fast window beside it.

    Both are fed the same entries and end at the same instant, so the fast rules judge the
    newest `fast_ms` of exactly the flow the slow rules judge.
    """

    __slots__ = ("fast", "slow")

    def __init__(self, width_ms: int, fast_ms: int | None = None) -> None:
        self.slow = SlidingWindow(width_ms)
        self.fast = SlidingWindow(fast_ms) if fast_ms is not None else None

    def add(self, ts_ms: int, host: str, count: int) -> None:
        self.slow.add(ts_ms, host, count)
        if self.fast is not None:
            self.fast.add(ts_ms, host, count)

    def advance(self, now_ms: int) -> None:
        self.slow.advance(now_ms)
        if self.fast is not None:
            self.fast.advance(now_ms)

    def clear(self) -> None:
        self.slow.clear()
        if self.fast is not None:
            self.fast.clear()

    @property
    def fast_total(self) -> int | None:
        return None if self.fast is None else self.fast.total

    @property
    def fast_by_host(self) -> Mapping[str, int] | None:
        return None if self.fast is None else self.fast.by_host
