"""When a sidecar makes its Redis round trip, and when an idle one may skip it: pure.

The sync loop wakes every flush interval. A round trip reports counts, confirms, and reads the
node; it is also the gate's lease and the host's liveness in the aggregator's eyes. While
nothing moves (no orders, no state to confirm, no notice, the last trip succeeded) there is
nothing to report and nothing new to read but the lease, so an idle host only renews it,
`LEASES_PER_STALE` times per `stale_after`. A kill still arrives at once: its pub/sub notice
wakes the loop, and a woken loop always makes the trip. An order after a quiet spell is
reported at the next wake-up, one flush interval at most, as before.
"""

from __future__ import annotations

IDLE_MAX_S = 1.0  # an idle host renews at least once a second, whatever stale_after says
LEASES_PER_STALE = 3  # renewals per stale_after: one may fail and be retried in time


def idle_every(flush_interval: float, stale_after: float) -> float:
    """Seconds between round trips of an idle host; never less than the flush interval."""
    return max(flush_interval, min(stale_after / LEASES_PER_STALE, IDLE_MAX_S))


def trip_due(
    *,
    now: float,
    last_trip: float | None,
    moved: bool,
    woken: bool,
    flush_interval: float,
    every: float,
) -> bool:
    """Whether to make the round trip now.

    `last_trip` is when the last successful one was sent (None: none yet, or the last one
    failed, so retry at once); `moved` is whether anything to report changed since it.
    Half a flush interval of slack keeps a loop that wakes a little early from skipping a
    whole extra interval.
    """
    if woken or moved or last_trip is None:
        return True
    return now - last_trip >= every - flush_interval / 2
