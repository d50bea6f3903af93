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

    `now` is monotonic seconds from the caller; a clock that goes backwards adds nothing.
    """

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False (nothing spent) if the rate is exceeded."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class Limits:
    """The host-wide limits and the per-symbol tables that override them field by field."""

    default: Limit = field(default_factory=Limit)
    symbols: Mapping[str, Limit] = field(default_factory=dict)

    def for_symbol(self, symbol: str) -> Limit:
        return self.symbols.get(symbol, self.default)


class LimitChecker:
    """Applies `Limits` to orders: static checks, then the rate bucket.

    Symbols whose table sets its own `max_orders_per_s` get a bucket of their own; every
    other order draws from the host's bucket. An order refused by a static limit spends no
    token, so a stream of oversized orders cannot starve the good ones.
    """

    __slots__ = ("_buckets", "_host_bucket", "limits", "refused")

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        rate = limits.default.max_orders_per_s
        self._host_bucket = TokenBucket(rate, now) if rate is not None else None
        self._buckets: dict[str, TokenBucket | None] = {}
        for sym, lim in limits.symbols.items():
            if lim.max_orders_per_s is None:
                self._buckets[sym] = self._host_bucket
            else:
                self._buckets[sym] = TokenBucket(lim.max_orders_per_s, now)
        self.refused: dict[str, int] = dict.fromkeys(FIELDS, 0)

    def check(self, symbol: str, qty: int, price: float, now: float) -> str:
        """ "" when the order is within every limit, else the name of the limit it breaks."""
        lim = self.limits.symbols.get(symbol)
        if lim is None:
            lim = self.limits.default
            bucket = self._host_bucket
        else:
            bucket = self._buckets[symbol]
        why = lim.over(qty, price)
        if not why and bucket is not None and not bucket.take(now):
            why = "max_orders_per_s"
        if why:
            self.refused[why] += 1
        return why


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
        symbols[str(sym)] = _limit(table, where + ".", default)
    return Limits(default, symbols)


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
