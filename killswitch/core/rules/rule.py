"""What a trip rule is: the interface every rule of the registry (`core.rules.registry`)
implements, what it reads at one instant (`Instant`) and what it returns (`Reading`).

A rule is one stateless object in a module of its own (`core.rules.trips`). The `Monitor`
keeps the state (breach streaks, warning levels, the history) and asks each enabled rule,
in the registry's order, for its reading. Nothing here reads a clock, touches Redis or logs.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from killswitch.core.rules.config import MonitorConfig

# How `status` shows a rule's value and limit (published with each rule in the view).
ORDERS = "orders"  # orders in the rule's window
SHARE = "share"  # a fraction of the node's orders, shown as a percentage
GROWTH = "growth"  # growth per step, shown as +N%/step
UNITS = (ORDERS, SHARE, GROWTH)


@dataclass(slots=True)
class Reading:
    """One rule's condition at this evaluation, before streaks and levels."""

    cause: str
    active: bool
    breach: bool
    value: float
    limit: float | None
    detail: str = ""
    host: str | None = None


def secs(ms: int) -> str:
    return f"{ms / 1000:g}s"


def fast_hold(cfg: MonitorConfig) -> tuple[int, int]:
    """How long a fast rule's breach must hold: `fast_breach_ms`, long enough to filter one
    tick's noise (a late flush lands two flushes in one window), short enough to cost no
    more than a tick; 0 trips at the first breaching evaluation."""
    return (cfg.fast_breach_ms, 2) if cfg.fast_breach_ms > 0 else (1, 1)


class History:
    """The node's window sums by evaluation time while armed, for a rule that reads a trend
    (runaway). The `Monitor` adds one per armed evaluation and starts it over otherwise."""

    __slots__ = ("times", "totals")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.totals: list[int] = []

    def add(self, now_ms: int, total: int, keep_ms: int) -> None:
        self.times.append(now_ms)
        self.totals.append(total)
        drop = bisect.bisect_left(self.times, now_ms - keep_ms - 1)
        if drop > len(self.times) // 2:  # trim in bulk: amortised O(1) per evaluation
            del self.times[:drop], self.totals[:drop]

    def at(self, t_ms: int) -> int | None:
        """The window sum of the last evaluation at or before `t_ms` (None: not that old)."""
        i = bisect.bisect_right(self.times, t_ms) - 1
        return None if i < 0 else self.totals[i]


@dataclass(frozen=True, slots=True)
class Instant:
    """What every rule may read at one evaluation: the windows ending at `now_ms` (hosts on
    the roster that sent nothing count as 0) and what the baseline expects of the window."""

    now_ms: int
    armed: bool
    node_total: int  # orders in the window
    hosts: Mapping[str, int]  # orders in the window, per host
    fast_total: int | None  # orders in the fast window; None: not given (fast rules inactive)
    fast_hosts: Mapping[str, int] | None
    expected: float | None  # the baseline, orders per window; None until learned
    warm: bool  # past warm-up, with a baseline
    history: History


class Rule(ABC):
    """One trip rule. Subclasses set `cause` and implement `read`; the rest has the
    defaults of a cap (on when the config names it, trips at the first breaching
    evaluation, teaches nothing)."""

    cause: str  # the stable cause string: a metric label and an audit field
    options: tuple[str, ...] = ()  # the settings it reads, in the table of options
    unit: str = ORDERS  # how `status` shows its value and limit (`UNITS`)
    fast: bool = False  # it judges the fast window, not the window
    # Its breach is counted over the last `breach_span` windows, gaps allowed (`Span`),
    # until it lasted `breach_windows - 1` windows; else `hold()` says how long it must hold.
    spans: bool = False

    def enabled(self, cfg: MonitorConfig) -> bool:
        """This config turns the rule on: by default, it is among `cfg.causes` (the product's
        rules are switched on there, where `--shadow` and the view also read it)."""
        return self.cause in cfg.causes

    @abstractmethod
    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        """Its condition at this instant (format `detail` only for a breach)."""

    def hold(self, cfg: MonitorConfig) -> tuple[int, int]:
        """(step_ms, steps needed) for a breach to trip, unless `spans`."""
        del cfg
        return 1, 1

    def teaches(self, cfg: MonitorConfig, value: float, node_total: int) -> float | None:
        """The window level a re-arm after this rule's trip teaches the baseline as normal,
        from the trip's value; None: a re-arm teaches nothing (the default)."""
        del cfg, value, node_total
        return None

    def width(self, cfg: MonitorConfig) -> int:
        """The window it judges, in ms."""
        return cfg.fast_window_ms if self.fast else cfg.window_ms

    def view(self, cfg: MonitorConfig) -> dict[str, str]:
        """Its own fields in the aggregator's view hash, beside its entry in `rules`."""
        del cfg
        return {}
