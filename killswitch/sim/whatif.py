"""What other monitors would have done on recorded traffic: a per-host limit and a
Prometheus-style alert, evaluated on the same per-host counts killswitch saw.

Pure: recorded `FlowEvent`s (Redis server time, orders per host per flush) in, a `Verdict`
out. It must never read a clock or Redis. The counts should be what the order routers
*tried* to send (allowed plus blocked): after killswitch kills the node the routers keep
trying, and those attempts are exactly what would have gone out under a monitor that did
not stop them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from killswitch.core.rules.backtest import FlowEvent
from killswitch.core.rules.window import SlidingWindow
from killswitch.core.settings.options import default_ms


@dataclass(frozen=True, slots=True)
class Verdict:
    """When a monitor acted on the anomaly, and how many orders went out after it began."""

    monitor: str
    acted_ms: int | None  # when it tripped (or the alert fired); None: never during the run
    orders_after_onset: int  # orders sent from the onset until it acted (or the run's end)
    detail: str

    def after_onset_s(self, onset_ms: int) -> float | None:
        return None if self.acted_ms is None else round((self.acted_ms - onset_ms) / 1000.0, 3)


def per_host_limit(
    events: Sequence[FlowEvent],
    cap: int,
    window_ms: int,
    onset_ms: int,
    *,
    tick_ms: int = default_ms("tick"),
) -> Verdict:
    """Each host checks only its own volume: more than `cap` orders in its own `window_ms`
    stops that host (and only it; its peers keep trading). Evaluated every `tick_ms`."""
    ordered = sorted(events, key=lambda e: e.ts_ms)
    if not ordered:
        return Verdict("per_host_limit", None, 0, "no traffic")
    windows: dict[str, SlidingWindow] = {}
    stopped: dict[str, int] = {}
    i = 0
    now = -(-ordered[0].ts_ms // tick_ms) * tick_ms
    while True:
        while i < len(ordered) and ordered[i].ts_ms <= now:
            e = ordered[i]
            windows.setdefault(e.host, SlidingWindow(window_ms)).add(e.ts_ms, e.host, e.count)
            i += 1
        for host, w in windows.items():
            w.advance(now)
            if host not in stopped and w.total > cap:
                stopped[host] = now
        if i >= len(ordered):
            break
        now += tick_ms
    sent = sum(
        e.count
        for e in ordered
        if e.ts_ms >= onset_ms and (e.host not in stopped or e.ts_ms <= stopped[e.host])
    )
    first = min(stopped.values(), default=None)
    if first is None:
        detail = (
            f"no host ever sent more than its own cap of {cap} orders per {window_ms / 1000:g}s"
        )
    else:
        names = ", ".join(sorted(stopped, key=stopped.__getitem__))
        detail = f"stopped {names} (each over its own cap of {cap}); the others kept trading"
    return Verdict("per_host_limit", first, sent, detail)


def prometheus_alert(
    events: Sequence[FlowEvent],
    threshold_per_s: float,
    onset_ms: int,
    *,
    scrape_ms: int,
    range_ms: int,
    for_ms: int,
) -> Verdict:
    """`sum(rate(orders_total[range])) > threshold` with `for: for_ms`, scraped every
    `scrape_ms` and evaluated at that interval (Prometheus' rate() without its edge
    extrapolation: the increase between the first and last sample in the range). An alert
    stops nothing by itself: the count runs until it fires, and a human acts after that."""
    ordered = sorted(events, key=lambda e: e.ts_ms)
    if not ordered:
        return Verdict("prometheus_alert", None, 0, "no traffic")
    start, end = ordered[0].ts_ms, ordered[-1].ts_ms
    samples: list[tuple[int, int]] = []  # (scrape time, counter value)
    counter, i = 0, 0
    pending_since: int | None = None
    fired: int | None = None
    t = start
    while t <= end + scrape_ms and fired is None:
        while i < len(ordered) and ordered[i].ts_ms <= t:
            counter += ordered[i].count
            i += 1
        samples.append((t, counter))
        in_range = [s for s in samples if s[0] > t - range_ms]
        rate = 0.0
        if len(in_range) >= 2:
            (t0, c0), (t1, c1) = in_range[0], in_range[-1]
            rate = (c1 - c0) * 1000.0 / (t1 - t0)
        if rate > threshold_per_s:
            pending_since = t if pending_since is None else pending_since
            if t - pending_since >= for_ms:
                fired = t
        else:
            pending_since = None
        t += scrape_ms
    sent = sum(
        e.count for e in ordered if e.ts_ms >= onset_ms and (fired is None or e.ts_ms <= fired)
    )
    rule = (
        f"rate > {threshold_per_s:g}/s over {range_ms / 1000:g}s, for {for_ms / 1000:g}s, "
        f"scraped every {scrape_ms / 1000:g}s"
    )
    detail = f"fired ({rule}); a human still has to act" if fired else f"never fired ({rule})"
    return Verdict("prometheus_alert", fired, sent, detail)


def orders_after(events: Sequence[FlowEvent], onset_ms: int) -> int:
    """Orders in `events` from `onset_ms` on (e.g. what killswitch actually let through)."""
    return sum(e.count for e in events if e.ts_ms >= onset_ms)


def resting_at(events: Sequence[FlowEvent], at_ms: int, rest_ms: int) -> int:
    """Orders still resting at `at_ms` when each order rests `rest_ms` after it was sent.

    What a monitor that only blocks (or only alerts) leaves working at the venue when it acts.
    """
    return sum(e.count for e in events if at_ms - rest_ms < e.ts_ms <= at_ms)
