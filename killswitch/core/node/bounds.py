"""Bounds on numbers read from Redis and pub/sub: whoever can write there must not be able to
crash a command or poison arithmetic with an epoch of 10^29, a float, a sign or junk.

Pure. A value is a plain ASCII decimal integer, 0 <= v <= 2^53 - 1 (exact in a Lua number
and in every JSON reader); an epoch a host accepts is also at most `MAX_EPOCH_JUMP` above the
highest it has seen, since every arm and kill moves the epoch by one.
"""

from __future__ import annotations

import math

INT_MAX = 2**53 - 1
MAX_EPOCH_JUMP = 1_000_000


def parse_uint(raw: object) -> int | None:
    """The integer in `raw` (str or int), or None for anything else (floats, signs, junk)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw if 0 <= raw <= INT_MAX else None
    if not isinstance(raw, str) or not raw or len(raw) > 16:
        return None
    if not (raw.isascii() and raw.isdigit()):
        return None
    value = int(raw)
    return value if value <= INT_MAX else None


def uint_or(raw: object, default: int = 0) -> int:
    """`parse_uint`, with `default` for anything that is not a bounded integer."""
    value = parse_uint(raw)
    return default if value is None else value


def plausible_epoch(epoch: int, seen: int) -> bool:
    """An epoch a host may move to from the highest it has seen (`seen`)."""
    return 0 < epoch <= INT_MAX and epoch <= seen + MAX_EPOCH_JUMP


def parse_float(raw: object, default: float = 0.0) -> float:
    """A finite, non-negative rate or duration; `default` for anything else."""
    try:
        value = float(str(raw))
    except ValueError:
        return default
    if not math.isfinite(value) or value < 0 or value > 1e12:
        return default
    return value
