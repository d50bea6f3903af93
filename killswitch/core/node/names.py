"""Validation of node and host names, done before any name reaches Redis.

Pure: no I/O. A name that fails here must never be formatted into a key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


class InvalidName(ValueError):
    """A node or host name outside `[a-z0-9][a-z0-9._-]{0,62}`."""


def check_name(kind: str, value: str) -> str:
    """Return `value` if it is a valid node/host name, else raise InvalidName naming `kind`."""
    if not isinstance(value, str) or NAME_RE.fullmatch(value) is None:
        raise InvalidName(
            f"invalid {kind} name {value!r}: must match [a-z0-9][a-z0-9._-]{{0,62}} "
            "(lower-case letters, digits, '.', '_', '-'; at most 63 characters)"
        )
    return value


def check_roster(hosts: Iterable[str]) -> tuple[str, ...]:
    """Validate a roster: at least one host, every name valid, no duplicates; sorted."""
    seen: list[str] = []
    for h in hosts:
        check_name("host", h)
        if h in seen:
            raise InvalidName(f"host {h!r} appears twice in the roster")
        seen.append(h)
    if not seen:
        raise InvalidName("the roster is empty: give at least one host")
    return tuple(sorted(seen))
