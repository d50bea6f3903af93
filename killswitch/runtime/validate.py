"""The converters that turn a setting's raw value (a flag's text, an environment variable, a
TOML value) into what the program runs with, refusing what is out of the table's bounds.

The bounds themselves are in `core.settings.options` (one place, which the core reads too); here is
only how they are enforced, so a flag, an environment variable and a config-file entry are
refused the same way: one line naming the setting, the value and the range. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from killswitch.core.settings.options import OPTIONS, Bound, bound, fmt_number, to_ms

__all__ = ["BOUNDS", "Bound", "bounded", "bounded_int", "check", "seconds_ms", "truthy"]

# Every bounded setting's range, by name: a view of the table, not a second copy of it.
BOUNDS: dict[str, Bound] = {o.name: o.bound for o in OPTIONS if o.bound is not None}

_fmt = fmt_number


def check(name: str, value: float) -> float:
    """`value` if it is finite and within the bound of `name`, else ValueError with the range."""
    b = bound(name)
    if not math.isfinite(value) or not b.lo <= value <= b.hi:
        raise ValueError(f"out of range: must be {b.describe()}")
    return value


def bounded(name: str) -> Callable[[Any], float]:
    """A converter for `Resolver.get`: a finite number within the bound of `name`."""
    b = bound(name)

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
    b = bound(name)

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
    """A bounded duration in seconds, returned in whole milliseconds (`core.settings.options.to_ms`)."""
    sec = bounded(name)

    def conv(v: Any) -> int:
        return to_ms(sec(v))

    return conv


_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def truthy(v: Any) -> bool:
    """A yes/no setting: a flag's True, or 1/true/yes/on (0/false/no/off) from anywhere."""
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word not in _YES + _NO:
        raise ValueError("must be one of on/off, 1/0, true/false, yes/no")
    return word in _YES


def _off(v: Any, *words: str) -> bool:
    return isinstance(v, str) and v.strip().lower() in words


def fraction(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError("must be a fraction between 0 and 1, e.g. 0.5")
    f = float(v)
    if not 0.0 < f < 1.0:  # also refuses nan
        raise ValueError("must be a fraction between 0 and 1, e.g. 0.5")
    return f


def word_or_bounded(name: str, words: dict[str, Any]) -> Callable[[Any], Any]:
    """A bounded number, or one of `words` (e.g. 'off') standing for a value."""
    num = bounded(name)

    def conv(v: Any) -> Any:
        if isinstance(v, str) and v.strip().lower() in words:
            return words[v.strip().lower()]
        return num(v)

    return conv
