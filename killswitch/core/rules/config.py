"""The trip rules' settings and the decisions they produce: pure data, no judgement.

`MonitorConfig` says which rules are on and where their lines are; `Evaluation` is what one
`Monitor.observe()` decided. Nothing here reads a clock, touches Redis or logs. The rules
themselves are in `readings` (one rule's condition at one instant) and `anomaly` (the
`Monitor` that composes them over time).

Rules, each with a stable cause string (it is a metric label and an audit field). The slow
rules judge the `window_ms` window; the fast ones the `fast_window_ms` window (1 s) beside
it, so a big flood trips within about a second while a moderate one still needs the slow
window to confirm it (multi-window, multi-burn-rate alerting):

- `max_orders`: more than `max_orders` orders in the window trips at once.
- `max_rate`: more than `max_rate` orders per second in the fast window trips at once.
  Off unless set, or derived from `max_orders` (`RATE_HEADROOM` x its average rate) when
  `max_rate_auto` is on.
- `baseline`: the window exceeds `baseline_multiplier` x the learned baseline (and
  `min_orders`) for `breach_windows` consecutive windows, after `warmup_ms` of learning.
- `baseline_fast`: the fast window exceeds `fast_multiplier` x the baseline's rate (and
  `fast_min_orders`) for `fast_breach_ms`, after warm-up.
- `host_share`: one host sent more than `max_host_share` of the node's window volume, with
  the node at or above `min_orders`, for `breach_windows` consecutive windows.
- `host_share_fast`: the same share on the fast window, at or above `fast_min_orders`, for
  `fast_breach_ms` (on with `max_host_share` unless `fast_host_share` is off).
- `runaway`: the node's volume grew by more than `runaway_growth` in each of the last
  `runaway_steps` steps of `runaway_step` windows, and the window is above `baseline_band`
  x the baseline (and `min_orders`), after warm-up: sustained growth faster than the
  baseline may follow, caught while each window is still under the multiplier.

A slow rule's breach need not be unbroken: it trips once it has been in breach for
`breach_windows - 1` windows in total within the last `breach_span` windows, so a pulsing
flood cannot reset it by dipping under the line between pulses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from statistics import median

from killswitch.core.rules.baseline import BaselineParams, BaselineTrip
from killswitch.core.settings.options import (
    CAP_PER_HOST_PER_S,
    OPTIONS,
    RATE_HEADROOM,
    RULE_GROUP,
    RULE_VERBS,
    Option,
    bound,
    default,
    default_ms,
)

MAX_ORDERS = "max_orders"
BASELINE = "baseline"
HOST_SHARE = "host_share"
MAX_RATE = "max_rate"
BASELINE_FAST = "baseline_fast"
HOST_SHARE_FAST = "host_share_fast"
RUNAWAY = "runaway"
# The registry's rules (`core.rules.registry`), in its order: the names `--shadow` accepts and
# the config turns on (`causes`), known here without loading the rules (a test keeps them equal).
CAUSES = (MAX_ORDERS, BASELINE, HOST_SHARE, MAX_RATE, BASELINE_FAST, HOST_SHARE_FAST, RUNAWAY)
# The rules that judge the fast window (`Rule.fast`): the aggregator keeps one when one is on.
FAST_CAUSES = (MAX_RATE, BASELINE_FAST, HOST_SHARE_FAST)
# The share rules of the releases whose view did not publish a rule's unit (`view.ruleview`).
SHARE_CAUSES = (HOST_SHARE, HOST_SHARE_FAST)

# The derived rate cap (`RATE_HEADROOM`, in the table of options) is that many times the
# average rate `max_orders` allows. A node may send its whole window's cap in one burst under
# `max_orders` alone; 3x keeps room for a legitimate burst while catching a flood at the
# cap's rate seconds before the window fills.

LEVELS = (50, 75, 90)  # warning levels, % of a limit reached
HYSTERESIS = 5  # percentage points below a level before it is left, so a value hovering
# at 75% is logged once, not every tick


def _field(o: Option) -> str:
    """The `MonitorConfig` field a trip rule setting sets: its key, with `_ms` for a duration
    (seconds in the table, milliseconds here)."""
    return f"{o.key}_ms" if _per(o) == 1000 else o.key


def _per(o: Option) -> int:
    return 1000 if o.bound is not None and o.bound.unit == "s" else 1


# Every option of the trip rules' group is one field of the same name (`_field`), so a rule's
# new setting is one `Option` and one field; `cli.rulecli` builds the config from `SETTINGS`.
_RULE_OPTIONS = tuple(o for o in OPTIONS if o.group == RULE_GROUP and o.verbs == RULE_VERBS)
# MonitorConfig field -> (its setting in the table, units of the field per unit of the setting)
SETTINGS: dict[str, tuple[str, int]] = {_field(o): (o.name, _per(o)) for o in _RULE_OPTIONS}
_BOUNDED = {_field(o): (o.name, _per(o), o.bound) for o in _RULE_OPTIONS if o.bound is not None}


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """The trip rules of one node. Durations in ms; counts are orders within one window
    (`fast_min_orders` within one fast window; `max_rate` per second).

    `shadow` names the causes that only report ("would have tripped"), or True for all.
    """

    # Every default is the table's (`core.settings.options`), converted to ms where it is a duration.
    max_orders: int | None = None  # None: none (the aggregator derives one: `with_static_cap`)
    window_ms: int = default_ms("window")
    baseline_multiplier: float | None = default("baseline-multiplier")  # None: no rule
    breach_windows: int = default("breach-windows")
    min_orders: int = default("min-orders")
    warmup_ms: int = default_ms("warmup")
    max_host_share: float | None = None  # off by default: depends on how the node balances
    haunted_ratio: float = default("haunted-ratio")  # hosts this many times their peers' median
    shadow: frozenset[str] | bool = frozenset()
    half_life_ms: int = default_ms("half-life")
    profile_bucket_ms: int = default_ms("profile-bucket")
    profile_half_life_ms: int = default_ms("profile-half-life")
    # The fast window and its rules; off when the window is not longer than the fast one.
    fast_window_ms: int = default_ms("fast-window")
    fast_multiplier: float | None = default("fast-multiplier")  # None: no baseline_fast rule
    fast_breach_ms: int = default_ms("fast-breach")  # how long a fast breach must hold
    fast_min_orders: int = default("fast-min-orders")
    fast_host_share: bool = default("fast-host-share")  # host_share_fast beside host_share
    max_rate: float | None = None  # orders/s in the fast window; None: derived or off
    # Derive max_rate from max_orders when it is not set. Off by default, like max_orders: a
    # rate cap is stricter than the window cap for every burst, so only the operator can
    # say a node never legitimately sends a third of its window's cap in one second.
    max_rate_auto: bool = False
    # Guarded learning (see `baseline`): a window is learned once it has aged
    # `breach_windows` windows with no rule in breach, as at most `baseline_band` x the
    # baseline, and the baseline rises by at most 2x per `baseline_doubling_ms`. None for
    # both: the learning of earlier releases (every window the baseline rule does not
    # breach, at once and in full).
    baseline_band: float | None = default("baseline-band")
    baseline_doubling_ms: int | None = default_ms("baseline-doubling")
    baseline_slow_half_life_ms: int | None = default_ms("baseline-slow-half-life")  # None: none
    # A slow breach trips once it lasted breach_windows - 1 windows within this many
    # windows; None: breach_windows + 1. breach_windows - 1 means unbroken (earlier releases).
    breach_span: int | None = None
    runaway_growth: float | None = default("runaway-growth")  # per step; None: no rule
    runaway_step: int = default("runaway-step")  # windows per step
    runaway_steps: int = default("runaway-steps")  # consecutive steps of growth

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why}, got {getattr(self, name)!r}")

        # The ranges are the table's (`core.settings.options`), the one place they are written.
        for field, (name, per, b) in _BOUNDED.items():
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, bool) or not b.lo <= value / per <= b.hi:
                raise bad(field, f"out of range: must be {b.describe()} (--{name})")
        if self.max_host_share is not None and not 0.0 < self.max_host_share < 1.0:
            raise bad("max_host_share", "must be a fraction between 0 and 1")
        if self.breach_span is not None and self.breach_span < self.breach_windows - 1:
            raise bad("breach_span", "must be at least breach_windows - 1")
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
            slow_half_life_ms=self.baseline_slow_half_life_ms,
            band=self.baseline_band,
            doubling_ms=self.baseline_doubling_ms,
            floor=self.min_orders / self.baseline_multiplier if self.baseline_multiplier else 0.0,
        )

    def unguarded(self) -> MonitorConfig:
        """These rules with the learning and breach counting of earlier releases: every
        window the baseline rule does not breach learned at once and in full, breaches
        unbroken, no slow estimate and no runaway rule. For comparison and backtests."""
        return replace(
            self,
            baseline_band=None,
            baseline_doubling_ms=None,
            baseline_slow_half_life_ms=None,
            breach_span=max(self.breach_windows - 1, 1),
            runaway_growth=None,
        )

    @property
    def guarded(self) -> bool:
        """Guarded learning is on (delayed, banded, rise-bounded); else as before it."""
        return self.baseline_band is not None or self.baseline_doubling_ms is not None

    @property
    def span_ms(self) -> int:
        """How far back a slow rule's breach time is counted."""
        span = self.breach_windows + 1 if self.breach_span is None else self.breach_span
        return span * self.window_ms

    @property
    def runaway_ms(self) -> int:
        """The history the runaway rule reads: its steps, and one more for the base."""
        return (self.runaway_steps + 1) * self.runaway_step * self.window_ms

    def is_shadow(self, cause: str) -> bool:
        return self.shadow if isinstance(self.shadow, bool) else cause in self.shadow

    @property
    def fast(self) -> bool:
        """The fast window is shorter than the window, so the fast rules add something."""
        return self.fast_window_ms < self.window_ms

    @property
    def rate_cap(self) -> float | None:
        """`max_rate` in orders per second: as set, else derived from `max_orders` (only
        with a fast window shorter than the window: otherwise the cap already is one)."""
        if self.max_rate is not None:
            return self.max_rate
        if self.max_rate_auto and self.max_orders is not None and self.fast:
            return RATE_HEADROOM * self.max_orders * 1000.0 / self.window_ms
        return None

    @property
    def fast_in_use(self) -> int | None:
        """The fast window's width when an enabled rule judges it, else None."""
        return self.fast_window_ms if set(self.causes) & set(FAST_CAUSES) else None

    @property
    def fast_scale(self) -> float:
        """Fast windows per window: a baseline in orders per window / this = per fast window."""
        return self.window_ms / self.fast_window_ms

    @property
    def causes(self) -> tuple[str, ...]:
        """The rules this config turns on, in evaluation order."""
        share = self.max_host_share is not None
        on = {
            MAX_ORDERS: self.max_orders is not None,
            BASELINE: self.baseline_multiplier is not None,
            HOST_SHARE: share,
            MAX_RATE: self.rate_cap is not None,
            BASELINE_FAST: self.fast and self.fast_multiplier is not None,
            HOST_SHARE_FAST: self.fast and share and self.fast_host_share,
            RUNAWAY: self.runaway_growth is not None,
        }
        return tuple(c for c in CAUSES if on[c])


@dataclass(frozen=True, slots=True)
class Trip:
    """A rule tripped (or, when `shadow`, would have tripped) at `at_ms`."""

    cause: str
    at_ms: int
    detail: str  # one line for humans: "node sent 5231 orders in 10s, 5.2x its baseline of 1004"
    value: float  # orders in the rule's window, or the host's share for the host-share rules
    limit: float  # the value the rule allowed
    shadow: bool = False
    host: str | None = None  # host-share rules only


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
    active: bool  # could trip now (False while warming up, or below its floor)
    value: float  # orders in the rule's window; the top host's share for the share rules
    limit: float | None  # trips above this; None until there is a baseline
    level: int  # 0, 50, 75 or 90
    breach_windows: int  # consecutive windows in breach so far (fast rules: 1 per hold)
    window_ms: int = 0  # the window the rule judges


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
    fast_total: int | None = None  # orders in the fast window, when the caller passed it

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


def default_cap(window_ms: int, hosts: int) -> int:
    """The static cap enforced when none is given: `CAP_PER_HOST_PER_S` orders per second per
    roster host, over the window (a backstop while the baseline rule warms up), within the
    range of `--max-orders`."""
    cap = round(CAP_PER_HOST_PER_S * max(hosts, 1) * window_ms / 1000)
    return int(min(max(1, cap), bound("max-orders").hi))


def with_static_cap(monitor: MonitorConfig, hosts: int) -> MonitorConfig:
    """`monitor` as the aggregator (and the backtest) runs it: its static cap derived by
    `default_cap` when none was given, and never in shadow (`--shadow all` shadows the other
    rules and leaves the cap enforcing)."""
    if monitor.max_orders is None:
        monitor = replace(monitor, max_orders=default_cap(monitor.window_ms, hosts))
    shadow = monitor.shadow
    if shadow is True:
        shadow = frozenset(c for c in CAUSES if c != MAX_ORDERS)
    elif not isinstance(shadow, bool) and MAX_ORDERS in shadow:
        shadow = shadow - {MAX_ORDERS}
    return monitor if shadow == monitor.shadow else replace(monitor, shadow=shadow)
