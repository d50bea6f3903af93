"""The order rate a host reports: orders a second over about the last second."""

from __future__ import annotations

from collections import deque


class OrderRate:
    """Orders a second from (monotonic time, total orders) samples, one per round trip,
    over the samples of about the last second (at least the two newest)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=64)

    def update(self, now: float, total: int) -> float:
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > 1.0:
            self._samples.popleft()
        t0, c0 = self._samples[0]
        return (total - c0) / (now - t0) if now > t0 else 0.0
