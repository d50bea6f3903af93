"""Local pre-trade limits: the per-order checks a gate makes with no network call.

Pure: no file, no clock, no logging. The caller passes the time (the host's monotonic
clock) so the rate limit is a token bucket that tests drive by hand. What a limit cannot
check it refuses: an order without a price under a notional limit is over it, because the
gate cannot prove it is not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FIELDS = ("max_qty", "max_notional", "max_orders_per_s")


class LimitsError(ValueError):
    """A limits file that does not describe limits; the message names the bad field."""


@dataclass(frozen=True, slots=True)
class Limit:
    """One set of limits; None means no limit of that kind."""

    max_qty: int | None = None
    max_notional: float | None = None
    max_orders_per_s: float | None = None

    def over(self, qty: int, price: float) -> str:
        """Which static limit (qty or notional) the order breaks; "" when none."""
        if self.max_qty is not None and qty > self.max_qty:
            return "max_qty"
        if self.max_notional is not None and (price <= 0 or qty * price > self.max_notional):
            return "max_notional"
        return ""


class TokenBucket:
    """`rate` orders per second sustained, bursts up to `rate` (one second's worth).

    Kept as GCRA (the "virtual scheduling" form of a token bucket): one float, the
    theoretical arrival time `tat` of the next order, so a check is a max, a compare and
    an add. An order is within the rate while `tat - now <= tau`, where
    tau = (capacity - 1) / rate is how far ahead of schedule a full bucket may run.
    `now` is monotonic seconds from the caller; a clock that goes backwards adds nothing.
    """

    __slots__ = ("capacity", "interval", "rate", "tat", "tau")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.interval = 1.0 / rate
        # The 1e-6 of an interval absorbs float error summed over a burst of adds.
        self.tau = (self.capacity - 1.0 + 1e-6) * self.interval
        self.tat = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False (nothing spent) if the rate is exceeded."""
        tat = self.tat if self.tat > now else now
        if tat - now > self.tau:
            return False
        self.tat = tat + self.interval
        return True


@dataclass(frozen=True, slots=True)
class Limits:
    """The host-wide limits and the per-symbol tables that override them field by field."""

    default: Limit = field(default_factory=Limit)
    symbols: Mapping[str, Limit] = field(default_factory=dict)
    # Symbols whose table sets max_orders_per_s itself: they get a bucket of their own.
    own_rate: frozenset[str] = frozenset()

    def for_symbol(self, symbol: str) -> Limit:
        return self.symbols.get(symbol.upper(), self.default)


class LimitChecker:
    """Applies `Limits` to orders: static checks, then the rate bucket.

    Symbols whose table sets its own `max_orders_per_s` get a bucket of their own; every
    other order draws from the host's bucket. An order refused by a static limit spends no
    token, so a stream of oversized orders cannot starve the good ones.

    `check()` is on the order path: it is written flat (no nested calls, limits
    precomputed as plain floats with infinity for "none") because every call costs.
    """

    __slots__ = ("_default", "_rules", "limits", "refused")

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        rate = limits.default.max_orders_per_s
        host_bucket = TokenBucket(rate, now) if rate is not None else None
        self._default = _rule(limits.default, host_bucket)
        self._rules: dict[str, tuple[float, float, TokenBucket | None]] = {}
        for sym, lim in limits.symbols.items():
            bucket: TokenBucket | None
            if sym in limits.own_rate and lim.max_orders_per_s is not None:
                bucket = TokenBucket(lim.max_orders_per_s, now)
            else:
                bucket = host_bucket
            self._rules[sym] = _rule(lim, bucket)
        self.refused: dict[str, int] = dict.fromkeys(FIELDS, 0)

    def check(self, symbol: str, qty: int, price: float, now: float) -> str:
        """ "" when the order is within every limit, else the name of the limit it breaks."""
        # symbols compare in upper case (scope.canonical_symbol), as scoped kills do
        max_qty, max_notional, b = self._rules.get(symbol.upper(), self._default)
        if qty > max_qty:
            self.refused["max_qty"] += 1
            return "max_qty"
        if max_notional < _INF and (price <= 0.0 or qty * price > max_notional):
            self.refused["max_notional"] += 1
            return "max_notional"
        if b is not None:  # TokenBucket.take(), inlined
            tat = b.tat if b.tat > now else now
            if tat - now > b.tau:
                self.refused["max_orders_per_s"] += 1
                return "max_orders_per_s"
            b.tat = tat + b.interval
        return ""


_INF = float("inf")


def _rule(lim: Limit, bucket: TokenBucket | None) -> tuple[float, float, TokenBucket | None]:
    return (
        _INF if lim.max_qty is None else lim.max_qty,
        _INF if lim.max_notional is None else lim.max_notional,
        bucket,
    )


def parse_limits(data: Mapping[str, Any]) -> Limits:
    """Limits from a parsed TOML document; LimitsError names the first bad field."""
    unknown = set(data) - set(FIELDS) - {"symbols"}
    if unknown:
        raise LimitsError(f"unknown limit {sorted(unknown)[0]!r}; expected one of {FIELDS}")
    default = _limit(data, "", Limit())
    raw_symbols = data.get("symbols", {})
    if not isinstance(raw_symbols, Mapping):
        raise LimitsError('symbols must be a table of [symbols."SYM"] tables')
    symbols: dict[str, Limit] = {}
    for sym, table in raw_symbols.items():
        where = f'symbols."{sym}"'
        if not isinstance(table, Mapping):
            raise LimitsError(f"{where} must be a table")
        bad = set(table) - set(FIELDS)
        if bad:
            raise LimitsError(
                f"{where}: unknown limit {sorted(bad)[0]!r}; expected one of {FIELDS}"
            )
        if str(sym).upper() in symbols:  # one canonical form: MSFT and msft are one symbol
            raise LimitsError(f"{where}: the same symbol as another table (case is ignored)")
        symbols[str(sym).upper()] = _limit(table, where + ".", default)
    own = frozenset(str(k).upper() for k, t in raw_symbols.items() if "max_orders_per_s" in t)
    return Limits(default, symbols, own)


def _limit(table: Mapping[str, Any], where: str, base: Limit) -> Limit:
    qty = _number(table, "max_qty", where, integer=True)
    notional = _number(table, "max_notional", where, integer=False)
    rate = _number(table, "max_orders_per_s", where, integer=False)
    return Limit(
        max_qty=base.max_qty if qty is None else int(qty),
        max_notional=base.max_notional if notional is None else notional,
        max_orders_per_s=base.max_orders_per_s if rate is None else rate,
    )


def _number(table: Mapping[str, Any], key: str, where: str, *, integer: bool) -> float | None:
    if key not in table:
        return None
    v = table[key]
    ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok_type or not math.isfinite(v) or v <= 0:
        kind = "a positive whole number" if integer else "a positive number"
        raise LimitsError(f"{where}{key} must be {kind}, got {v!r}")
    return float(v)
