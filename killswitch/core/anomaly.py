"""Anomaly detection for one node: the trip rules, composed into a pure `Monitor`.

It takes numbers (Redis server time in ms, orders in the sliding window, per host) and
returns frozen decisions. It must never read a clock, touch Redis, log, or act: the
aggregator and the backtest feed it the same way and act on what it returns.

Rules, each with a stable cause string (it is a metric label and an audit field):
- `max_orders`: more than `max_orders` orders in the window trips at once.
- `baseline`: the window exceeds `baseline_multiplier` x the learned baseline (and
  `min_orders`) for `breach_windows` consecutive windows, after `warmup_ms` of learning.
- `host_share`: one host sent more than `max_host_share` of the node's window volume, with
  the node at or above `min_orders`, for `breach_windows` consecutive windows.

"Consecutive windows": the rule's condition holds at every evaluation (tick) from the first
breaching tick t0 until a tick at or after t0 + (breach_windows - 1) x window_ms. So with the
default of 2, the breach must survive one full window width: a single spike leaves the
window before it can trip, while a sustained flood trips one window after the window sum
crosses the line, i.e. within two windows of its onset when it is at least `multiplier` x
the baseline.

Operator feedback: a re-arm after a kill by the `baseline` rule alone teaches the baseline
the window that tripped (`Baseline.accept`), at the first armed evaluation after `reset()`.
A re-arm after a `max_orders` or `host_share` trip teaches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from statistics import median

from killswitch.core.baseline import Baseline, BaselineParams, BaselineTrip

MAX_ORDERS = "max_orders"
BASELINE = "baseline"
HOST_SHARE = "host_share"
CAUSES = (MAX_ORDERS, BASELINE, HOST_SHARE)  # also the order rules are evaluated and reported

LEVELS = (50, 75, 90)  # warning levels, % of a limit reached
HYSTERESIS = 5  # percentage points below a level before it is left, so a value hovering
# at 75% is logged once, not every tick


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """The trip rules of one node. Durations in ms; counts are orders within one window.

    `shadow` names the causes that only report ("would have tripped"), or True for all.
    """

    max_orders: int | None = None
    window_ms: int = 10_000
    baseline_multiplier: float | None = 5.0  # None: no baseline rule (still learned)
    breach_windows: int = 2
    min_orders: int = 100
    warmup_ms: int = 300_000
    max_host_share: float | None = None  # off by default: depends on how the node balances
    haunted_ratio: float = 5.0  # report hosts this many times their peers' median
    shadow: frozenset[str] | bool = frozenset()
    half_life_ms: int = 45_000
    profile_bucket_ms: int = 300_000
    profile_half_life_ms: int = 900_000

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why}, got {getattr(self, name)!r}")

        if self.max_orders is not None and self.max_orders < 0:
            raise bad("max_orders", "must not be negative")
        if self.baseline_multiplier is not None and not self.baseline_multiplier > 1.0:
            raise bad("baseline_multiplier", "must be above 1")
        if self.breach_windows < 1:
            raise bad("breach_windows", "must be at least 1")
        if self.min_orders < 0 or self.warmup_ms < 0:
            raise bad("min_orders" if self.min_orders < 0 else "warmup_ms", "must not be negative")
        if self.max_host_share is not None and not 0.0 < self.max_host_share < 1.0:
            raise bad("max_host_share", "must be a fraction between 0 and 1")
        if not self.haunted_ratio > 1.0:
            raise bad("haunted_ratio", "must be above 1")
        if not isinstance(self.shadow, bool):
            unknown = set(self.shadow) - set(CAUSES)
            if unknown:
                raise bad("shadow", f"unknown causes {sorted(unknown)}; known: {list(CAUSES)}")
        self.baseline_params()  # validates the durations, naming the field

    def baseline_params(self) -> BaselineParams:
        return BaselineParams(
            window_ms=self.window_ms,
            half_life_ms=self.half_life_ms,
            bucket_ms=self.profile_bucket_ms,
            profile_half_life_ms=self.profile_half_life_ms,
        )

    def is_shadow(self, cause: str) -> bool:
        return self.shadow if isinstance(self.shadow, bool) else cause in self.shadow

    @property
    def causes(self) -> tuple[str, ...]:
        """The rules this config turns on, in evaluation order."""
        on = {
            MAX_ORDERS: self.max_orders is not None,
            BASELINE: self.baseline_multiplier is not None,
            HOST_SHARE: self.max_host_share is not None,
        }
        return tuple(c for c in CAUSES if on[c])


@dataclass(frozen=True, slots=True)
class Trip:
    """A rule tripped (or, when `shadow`, would have tripped) at `at_ms`."""

    cause: str
    at_ms: int
    detail: str  # one line for humans: "node sent 5231 orders in 10s, 5.2x its baseline of 1004"
    value: float  # orders in the window, or the host's share for host_share
    limit: float  # the value the rule allowed
    shadow: bool = False
    host: str | None = None  # host_share only


@dataclass(frozen=True, slots=True)
class LevelChange:
    """A rule's warning level changed; the service logs these, once per crossing."""

    cause: str
    at_ms: int
    old: int
    new: int
    value: float
    limit: float


@dataclass(frozen=True, slots=True)
class RuleStatus:
    """One rule's reading at this evaluation, for metrics and the published view."""

    cause: str
    shadow: bool
    active: bool  # could trip now (False while warming up, or below min_orders)
    value: float  # orders in the window; the top host's share for host_share
    limit: float | None  # trips above this; None until there is a baseline
    level: int  # 0, 50, 75 or 90
    breach_windows: int  # consecutive windows in breach so far


@dataclass(frozen=True, slots=True)
class HauntedHost:
    """A host sending far more than its peers."""

    host: str
    orders: int
    share: float  # of the node's window volume, 0..1
    peer_ratio: float  # orders / median of the other hosts' orders (median floored at 1)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Everything one `observe()` decided."""

    now_ms: int
    node_total: int
    expected: float | None  # baseline, orders per window; None until learned
    warm: bool  # the baseline rule is past warm-up
    trips: tuple[Trip, ...] = ()  # enforcing: the node must be killed
    shadow_trips: tuple[Trip, ...] = ()  # reported only
    warnings: tuple[LevelChange, ...] = ()
    rules: tuple[RuleStatus, ...] = ()
    haunted: tuple[HauntedHost, ...] = ()
    # The baseline trip a re-arm accepted as normal at this evaluation (see Monitor.reset).
    accepted: BaselineTrip | None = None

    @property
    def trip(self) -> Trip | None:
        """The first enforcing trip, if any (the kill needs one cause; all are reported)."""
        return self.trips[0] if self.trips else None

    def rule(self, cause: str) -> RuleStatus | None:
        return next((r for r in self.rules if r.cause == cause), None)


def next_level(percent: float, previous: int) -> int:
    """The warning level for `percent` of a limit, given the level shown so far.

    Rising takes effect at the level itself; falling only `HYSTERESIS` points below it.
    """
    rising = max((lv for lv in LEVELS if percent >= lv), default=0)
    if rising >= previous:
        return rising
    level = previous
    while level > rising and percent < level - HYSTERESIS:
        lower = [lv for lv in LEVELS if lv < level]
        level = lower[-1] if lower else 0
    return level


def haunted_hosts(
    host_totals: Mapping[str, int], node_total: int, ratio: float, min_orders: int
) -> tuple[HauntedHost, ...]:
    """Hosts sending at least `ratio` x the median of their peers, loudest first.

    The median, not the mean, so two haunted hosts do not hide each other. Nothing below
    `min_orders` on the node: 12 orders against 2 is noise, not a haunting.
    """
    if len(host_totals) < 2 or node_total <= 0 or node_total < min_orders:
        return ()
    # Removing one value never pulls the median of the rest below this one, so hosts under
    # `ratio` x it cannot qualify: on a healthy node no host gets the full computation.
    ordered = sorted(host_totals.values())
    floor = max(ordered[(len(ordered) - 2) // 2], 1.0)
    out = []
    for host, orders in host_totals.items():
        if orders < ratio * floor:
            continue
        peers = [v for h, v in host_totals.items() if h != host]
        peer_ratio = orders / max(median(peers), 1.0)
        if peer_ratio >= ratio:
            out.append(HauntedHost(host, orders, orders / node_total, peer_ratio))
    out.sort(key=lambda h: (-h.peer_ratio, h.host))
    return tuple(out)


@dataclass(slots=True)
class _Streak:
    count: int = 0  # windows in breach so far
    start_ms: int = 0  # the breach's first evaluation
    last_ms: int = 0  # when `count` last went up
    latched: bool = False  # tripped during this breach; reports again only after it clears

    def judge(self, breach: bool, now_ms: int, window_ms: int, needed: int) -> bool:
        """Count this evaluation; True exactly once per breach, when it has lasted long enough."""
        if not breach:
            self.count, self.latched = 0, False
            return False
        if self.count == 0:
            self.count, self.start_ms, self.last_ms = 1, now_ms, now_ms
        elif now_ms - self.last_ms >= window_ms:
            self.count, self.last_ms = self.count + 1, now_ms
        if self.count >= needed and not self.latched:
            self.latched = True
            return True
        return False


def _secs(ms: int) -> str:
    return f"{ms / 1000:g}s"


@dataclass(slots=True)
class _Reading:
    """One rule's condition at this evaluation, before streaks and levels."""

    cause: str
    active: bool
    breach: bool
    value: float
    limit: float | None
    detail: str = ""
    host: str | None = None


class Monitor:
    """The trip rules of one node over a learned baseline; deterministic and pure.

    `observe()` is called once per aggregator tick with the window ending at `now_ms`.
    Pass `armed=False` while the node is killed or unarmed: nothing trips and nothing is
    learned (a killed node's silence is not its normal). Call `reset()` on re-arm.
    The last `baseline` trip is kept in `baseline.trip` (persisted with it) until a re-arm
    answers it. `roster` hosts missing from `host_totals` count as having sent 0.
    """

    def __init__(
        self,
        config: MonitorConfig | None = None,
        baseline: Baseline | None = None,
        roster: Iterable[str] = (),
    ) -> None:
        self.config = config or MonitorConfig()
        params = self.config.baseline_params()
        if baseline is not None and baseline.params != params:
            raise ValueError("baseline was built for other parameters; use Baseline.from_dict")
        self.baseline = baseline if baseline is not None else Baseline(params)
        self.roster = tuple(sorted(roster))
        self._streaks = {c: _Streak() for c in self.config.causes}
        self._levels = dict.fromkeys(self.config.causes, 0)
        self._rearmed = False  # reset() was called; the next armed evaluation answers it
        self._other_trip = False  # a rule other than baseline tripped since the last reset

    def reset(self, now_ms: int) -> None:
        """The node was re-armed: breach counts and warning levels start over.

        The baseline keeps what it learned, and the first armed `observe()` after this
        accepts the last `baseline` trip as normal (`Baseline.accept`) if that trip killed
        the node (it was observed with `armed=False` since) and no other rule tripped with
        it. Not here: an aggregator calls `reset()` on its first tick whatever the state, and
        nothing is learned while the node is killed. `now_ms` is for symmetry.
        """
        del now_ms
        for cause in self._streaks:
            self._streaks[cause] = _Streak()
            self._levels[cause] = 0
        self._rearmed = True
        self._other_trip = False

    def observe(
        self,
        now_ms: int,
        node_total: int,
        host_totals: Mapping[str, int],
        *,
        armed: bool = True,
    ) -> Evaluation:
        cfg = self.config
        hosts = dict(host_totals)
        for host in self.roster:
            hosts.setdefault(host, 0)
        dt = self.baseline.advance(now_ms)
        accepted = None
        if not armed:
            self.baseline.mark_killed()
        elif self._rearmed:
            self._rearmed = False
            accepted = self.baseline.accept(now_ms)
        # Judge this window against what was learned before it, then maybe learn it.
        expected = self.baseline.expected(now_ms)
        warm = expected is not None and self.baseline.learned_ms >= cfg.warmup_ms
        readings = []
        if cfg.max_orders is not None:
            readings.append(self._max_orders(node_total, cfg.max_orders))
        base = self._baseline(node_total, expected, warm)
        if cfg.baseline_multiplier is not None:
            readings.append(base)
        if cfg.max_host_share is not None:
            readings.append(self._host_share(node_total, hosts, cfg.max_host_share))
        # Anomalous samples are never learned, or a flood would raise its own bar. Warm-up
        # learns everything: there is nothing yet to call it anomalous against.
        if armed and not (warm and base.breach):
            self.baseline.learn(now_ms, float(node_total), dt)

        trips: list[Trip] = []
        shadow_trips: list[Trip] = []
        warnings: list[LevelChange] = []
        rules: list[RuleStatus] = []
        for r in readings:
            streak = self._streaks[r.cause]
            needed = 1 if r.cause == MAX_ORDERS else cfg.breach_windows
            fired = streak.judge(armed and r.breach, now_ms, cfg.window_ms, needed)
            shadow = cfg.is_shadow(r.cause)
            if fired and r.limit is not None:
                trip = Trip(r.cause, now_ms, r.detail, r.value, r.limit, shadow, r.host)
                (shadow_trips if shadow else trips).append(trip)
            old = self._levels[r.cause]
            percent = 100.0 * r.value / r.limit if r.limit and r.active else 0.0
            new = self._levels[r.cause] = next_level(percent, old)
            if new != old:
                warnings.append(LevelChange(r.cause, now_ms, old, new, r.value, r.limit or 0.0))
            rules.append(RuleStatus(r.cause, shadow, r.active, r.value, r.limit, new, streak.count))
        if trips:
            self._remember(trips)
        return Evaluation(
            now_ms=now_ms,
            node_total=node_total,
            expected=expected,
            warm=warm,
            trips=tuple(trips),
            shadow_trips=tuple(shadow_trips),
            warnings=tuple(warnings),
            rules=tuple(rules),
            haunted=haunted_hosts(hosts, node_total, cfg.haunted_ratio, cfg.min_orders),
            accepted=accepted,
        )

    def _remember(self, trips: list[Trip]) -> None:
        """Keep a kill by the baseline rule alone for the re-arm to answer; forget it if any
        other rule trips before the re-arm (a static cap or a haunted host is not a level
        anyone should accept as normal)."""
        if self._other_trip or any(t.cause != BASELINE for t in trips):
            self._other_trip = True
            self.baseline.trip = None
            return
        streak = self._streaks[BASELINE]
        self.baseline.trip = BaselineTrip(streak.start_ms, trips[0].at_ms, trips[0].value)

    # Details are only formatted for a breach: a trip needs one, a quiet tick does not.

    def _max_orders(self, total: int, cap: int) -> _Reading:
        breach = total > cap
        reading = _Reading(MAX_ORDERS, True, breach, float(total), float(cap))
        if breach:
            reading.detail = (
                f"node sent {total} orders in {_secs(self.config.window_ms)}, over its cap of {cap}"
            )
        return reading

    def _baseline(self, total: int, expected: float | None, warm: bool) -> _Reading:
        cfg = self.config
        if expected is None or cfg.baseline_multiplier is None:
            return _Reading(BASELINE, False, False, float(total), None)
        # min_orders is a floor under the limit: a quiet node's 3 -> 40 orders is noise.
        limit = max(cfg.baseline_multiplier * expected, float(cfg.min_orders))
        breach = warm and total > limit
        reading = _Reading(BASELINE, warm, breach, float(total), limit)
        if breach:
            ratio = f"{total / expected:.1f}x" if expected >= 1.0 else "far above"
            reading.detail = (
                f"node sent {total} orders in {_secs(cfg.window_ms)}, "
                f"{ratio} its baseline of {expected:.0f}"
            )
        return reading

    def _host_share(self, total: int, hosts: Mapping[str, int], cap: float) -> _Reading:
        cfg = self.config
        if len(hosts) < 2 or total <= 0:
            # One host is always 100% of itself: the rule means nothing without peers.
            return _Reading(HOST_SHARE, False, False, 0.0, cap)
        host, orders = min(hosts.items(), key=lambda kv: (-kv[1], kv[0]))
        share = orders / total
        active = total >= cfg.min_orders
        breach = active and share > cap
        reading = _Reading(HOST_SHARE, active, breach, share, cap, host=host)
        if breach:
            peers = median(v for h, v in hosts.items() if h != host)
            reading.detail = (
                f"host {host} sent {share:.0%} of the node's {total} orders in "
                f"{_secs(cfg.window_ms)} (limit {cap:.0%}), "
                f"{orders / max(peers, 1.0):.1f}x its peers' median of {peers:g}"
            )
        return reading


__all__ = [
    "BASELINE",
    "CAUSES",
    "HOST_SHARE",
    "LEVELS",
    "MAX_ORDERS",
    "Evaluation",
    "HauntedHost",
    "LevelChange",
    "Monitor",
    "MonitorConfig",
    "RuleStatus",
    "Trip",
    "haunted_hosts",
    "next_level",
]
