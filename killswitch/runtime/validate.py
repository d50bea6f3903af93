"""The safe range of every numeric setting, and the converters that enforce it.

One table (`BOUNDS`) says what each setting may be; `bounded(name)` gives the converter
that `Resolver.get` applies, so a flag, an environment variable and a config-file entry are
refused the same way: one line naming the setting, the value and the range. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Bound:
    lo: float
    hi: float
    unit: str = ""
    whole: bool = False  # a count or a port, not a duration

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{_fmt(self.lo)}..{_fmt(self.hi)}{unit}"


DAY = 86_400.0

# Why these ranges: `stale-after` is how long a host cut off from Redis may keep trading,
# so it is capped at 10 s; below 0.2 s a normal Redis hiccup closes every gate. The rest
# keep durations finite and small enough that ms arithmetic stays exact, and counts far
# from what Redis or the monitor would overflow on.
BOUNDS: dict[str, Bound] = {
    "stale-after": Bound(0.2, 10.0, "s"),
    "flush-interval": Bound(0.01, 5.0, "s"),
    "metrics-port": Bound(1, 65535, whole=True),
    "tick": Bound(0.01, 10.0, "s"),
    "window": Bound(0.1, 3600.0, "s"),
    "confirm-timeout": Bound(0.1, 3600.0, "s"),
    "lease-ttl": Bound(0.5, 60.0, "s"),
    "timeout": Bound(0.1, 3600.0, "s"),
    "expires": Bound(1.0, DAY, "s"),  # a pending arm request; a day keeps it from lingering
    "interval": Bound(0.05, 60.0, "s"),
    "limit": Bound(1, 100_000, whole=True),
    "max-orders": Bound(1, 10**9, whole=True),
    "min-orders": Bound(0, 10**9, whole=True),
    "breach-windows": Bound(1, 1000, whole=True),
    "baseline-multiplier": Bound(1.0001, 1e6),
    "haunted-ratio": Bound(1.0001, 1e6),
    "warmup": Bound(0.0, 7 * DAY, "s"),
    "half-life": Bound(0.1, 30 * DAY, "s"),
    "profile-bucket": Bound(1.0, DAY, "s"),
    "profile-half-life": Bound(0.1, 30 * DAY, "s"),
    "baseline-band": Bound(1.0, 1e6),
    "baseline-doubling": Bound(1.0, 30 * DAY, "s"),
    "baseline-slow-half-life": Bound(0.1, 30 * DAY, "s"),
    "breach-span": Bound(1, 1000, whole=True),
    "runaway-growth": Bound(1.0001, 1e6),
    "runaway-step": Bound(1, 1000, whole=True),
    "runaway-steps": Bound(1, 100, whole=True),
    "rearm-after": Bound(0.0, 30 * DAY, "s"),
    "rate": Bound(0.001, 1e6, "orders/s"),
    "duration": Bound(0.001, 30 * DAY, "s"),
    "fast-window": Bound(0.1, 3600.0, "s"),
    "fast-breach": Bound(0.0, 3600.0, "s"),
    "max-rate": Bound(0.001, 1e9, "orders/s"),
    "max-conns": Bound(1, 100_000, whole=True),
    "line-timeout": Bound(0.1, 600.0, "s"),
    "max-limit-refusals": Bound(1, 10**9, whole=True),
    "limit-window": Bound(0.1, 3600.0, "s"),
    "limit-min-hosts": Bound(1, 10_000, whole=True),
    "attest-interval": Bound(0.1, 3600.0, "s"),  # checks for a changed size or mtime
    "on-kill-grace": Bound(0.0, 30.0, "s"),  # never past the on-kill command's own 30 s timeout
}


def _fmt(x: float) -> str:
    return f"{x:g}" if not float(x).is_integer() or abs(x) < 1e7 else f"{int(x)}"


def check(name: str, value: float) -> float:
    """`value` if it is finite and within the bound of `name`, else ValueError with the range."""
    b = BOUNDS[name]
    if not math.isfinite(value) or not b.lo <= value <= b.hi:
        raise ValueError(f"out of range: must be {b.describe()}")
    return value


def bounded(name: str) -> Callable[[Any], float]:
    """A converter for `Resolver.get`: a finite number within the bound of `name`."""
    b = BOUNDS[name]

    def conv(v: Any) -> float:
        if isinstance(v, bool):
            raise ValueError(f"must be a number in {b.describe()}")
        try:
            f = float(v)
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"not a number; must be {b.describe()}") from None
        return check(name, f)

    return conv


def bounded_int(name: str) -> Callable[[Any], int]:
    """A converter for `Resolver.get`: a whole number within the bound of `name`."""
    b = BOUNDS[name]

    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise ValueError(f"must be a whole number in {b.describe()}")
        if isinstance(v, float):
            if not (math.isfinite(v) and v.is_integer()):
                raise ValueError(f"must be a whole number in {b.describe()}")
            i = int(v)
        else:
            text = str(v).strip()
            if not (text.lstrip("-").isascii() and text.lstrip("-").isdigit()) or len(text) > 20:
                raise ValueError(f"not a whole number; must be {b.describe()}")
            i = int(text)
        check(name, i)
        return i

    return conv


def seconds_ms(name: str) -> Callable[[Any], int]:
    """A bounded duration in seconds, returned in whole milliseconds (at least 1 unless 0)."""
    sec = bounded(name)

    def conv(v: Any) -> int:
        s = sec(v)
        return 0 if s == 0 else max(round(s * 1000), 1)

    return conv
