"""Replay recorded per-host order counts through the live `Monitor`, in virtual time.

Pure: it parses text and ticks a virtual clock; it must never read files, a clock or Redis
(the CLI reads the file and prints). It feeds the same `SlidingWindow` and the same
`Monitor.observe()` the aggregator does, at the same tick, so a rule that trips here trips
there at the same point of the same traffic.

CSV format, one row per host per flush (or per second, or whatever was recorded)::

    timestamp,host,count
    2012-08-01T09:30:00.100-04:00,or-01,12
    1343827800.2,or-02,9

- `timestamp`: epoch seconds (an int or float, e.g. `1343827800.25`) or ISO-8601; an
  ISO time without an offset is UTC. A bare number is always epoch seconds.
- `host`: a host name (`[a-z0-9][a-z0-9._-]{0,62}`); `count`: orders since the host's
  previous row, a non-negative integer.
- The header row is optional; blank lines and lines starting with `#` are skipped. Rows
  need not be sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from killswitch.core.node.names import InvalidName, check_name
from killswitch.core.rules.anomaly import Monitor, MonitorConfig
from killswitch.core.rules.baseline import Baseline
from killswitch.core.rules.window import NodeWindows
from killswitch.core.settings.options import default_ms

HEADER = ("timestamp", "host", "count")
# A kill is re-armed by two approvers after someone looked at it: a minute is quick. Re-arming
# at once (0) would turn one long flood into a trip per tick for the static cap.
REARM_AFTER_MS = default_ms("rearm-after")  # `backtest --rearm-after`


class CsvError(ValueError):
    """A row of a counts CSV is malformed; the message starts with `line N:`."""


@dataclass(frozen=True, slots=True)
class FlowEvent:
    """`count` orders sent by `host`, recorded at `ts_ms` (epoch milliseconds)."""

    ts_ms: int
    host: str
    count: int


@dataclass(frozen=True, slots=True)
class TripRecord:
    """A trip found by a backtest: when, which rule, and what the window held."""

    at_ms: int
    cause: str
    detail: str
    shadow: bool
    node_total: int
    limit: float
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    """The outcome of `replay()`."""

    trips: tuple[TripRecord, ...]
    ticks: int
    baseline: dict[str, str]  # the learned baseline at the end, in the Redis hash layout


def _parse_ts(raw: str, line: int) -> int:
    try:
        seconds = float(raw)
    except ValueError:
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise CsvError(
                f"line {line}: timestamp {raw!r} is neither epoch seconds nor ISO-8601"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    if not math.isfinite(seconds) or seconds < 0:
        raise CsvError(f"line {line}: timestamp {raw!r} is not a time after 1970")
    return round(seconds * 1000)


def read_counts_csv(text: str) -> list[FlowEvent]:
    """Parse `timestamp,host,count` rows into events sorted by time (stable per host)."""
    events: list[FlowEvent] = []
    seen_row = False
    for line, row in enumerate(text.splitlines(), start=1):
        stripped = row.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = [f.strip() for f in stripped.split(",")]
        if not seen_row and tuple(f.lower() for f in fields) == HEADER:
            seen_row = True
            continue
        seen_row = True
        if len(fields) != 3:
            raise CsvError(
                f"line {line}: expected 3 fields timestamp,host,count, got {len(fields)}"
            )
        raw_ts, host, raw_count = fields
        ts_ms = _parse_ts(raw_ts, line)
        try:
            check_name("host", host)
        except InvalidName as e:
            raise CsvError(f"line {line}: {e}") from None
        if not raw_count.isdecimal():
            raise CsvError(f"line {line}: count {raw_count!r} is not a non-negative integer")
        events.append(FlowEvent(ts_ms, host, int(raw_count)))
    events.sort(key=lambda e: e.ts_ms)
    return events


def replay(
    events: Iterable[FlowEvent],
    config: MonitorConfig,
    *,
    tick_ms: int = default_ms("tick"),
    rearm_after_ms: int | None = REARM_AFTER_MS,
    baseline: Mapping[str, str] | None = None,
    roster: Sequence[str] = (),
) -> Replay:
    """Tick a virtual clock over the events, exactly as the live aggregator would.

    Ticks fall on multiples of `tick_ms`, from the first event to the last; each tick adds
    the events with `ts_ms <= now`, slides the window to end at `now` and calls
    `observe()`. Hosts count as roster members (0 when silent) from their first row on,
    plus any `roster` given.

    After an enforcing trip the node is killed: for `rearm_after_ms` (default one minute)
    it is observed with `armed=False` (nothing learned, nothing trips), then re-armed with
    `reset()`, as if two approvers had re-armed it. A flood that is still going then trips
    again, so the record shows how long it lasted. 0 re-arms at the next tick; None stops
    at the first enforcing trip. The recorded traffic is replayed as recorded either way:
    what the node would have sent while killed is unknowable. The re-arm is what teaches
    the baseline a `baseline` trip's level (see `Monitor.reset`), as live: only when the
    node was observed killed first, so `0` (no killed tick) and None teach nothing.

    `baseline` starts from a stored baseline (`Baseline.to_dict()`), e.g. yesterday's.
    """
    if tick_ms <= 0:
        raise ValueError(f"tick_ms must be positive, got {tick_ms}")
    if rearm_after_ms is not None and rearm_after_ms < 0:
        raise ValueError(f"rearm_after_ms must not be negative, got {rearm_after_ms}")
    ordered = sorted(events, key=lambda e: e.ts_ms)
    params = config.baseline_params()
    learned = Baseline.from_dict(baseline, params) if baseline is not None else None
    monitor = Monitor(config, learned)
    if not ordered:
        return Replay((), 0, monitor.baseline.to_dict())

    window = NodeWindows(config.window_ms, config.fast_in_use)
    hosts = dict.fromkeys(sorted(roster), 0)
    trips: list[TripRecord] = []
    killed_until: int | None = None
    now = -(-ordered[0].ts_ms // tick_ms) * tick_ms  # first tick at or after the first event
    end = ordered[-1].ts_ms
    i = ticks = 0
    while True:
        while i < len(ordered) and ordered[i].ts_ms <= now:
            e = ordered[i]
            window.add(e.ts_ms, e.host, e.count)
            hosts.setdefault(e.host, 0)
            i += 1
        window.advance(now)
        if killed_until is not None and now >= killed_until:
            monitor.reset(now)
            killed_until = None
        slow, fast = window.slow, window.fast
        totals = {h: slow.by_host.get(h, 0) for h in hosts}
        ev = monitor.observe(
            now,
            slow.total,
            totals,
            armed=killed_until is None,
            fast_total=None if fast is None else fast.total,
            fast_hosts=None if fast is None else {h: fast.by_host.get(h, 0) for h in hosts},
        )
        ticks += 1
        for t in (*ev.trips, *ev.shadow_trips):
            trips.append(
                TripRecord(t.at_ms, t.cause, t.detail, t.shadow, ev.node_total, t.limit, t.host)
            )
        if ev.trips:
            if rearm_after_ms is None:
                break
            killed_until = now + rearm_after_ms
        if now >= end:
            break
        now += tick_ms
    return Replay(tuple(trips), ticks, monitor.baseline.to_dict())


def backtest(
    events: Iterable[FlowEvent],
    config: MonitorConfig,
    tick_ms: int = default_ms("tick"),
    *,
    rearm_after_ms: int | None = REARM_AFTER_MS,
    baseline: Mapping[str, str] | None = None,
) -> list[TripRecord]:
    """The trips (enforcing and shadow) `config` would have produced on `events`."""
    result = replay(
        events, config, tick_ms=tick_ms, rearm_after_ms=rearm_after_ms, baseline=baseline
    )
    return list(result.trips)
