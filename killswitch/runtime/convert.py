"""What each kind of setting in `core.settings.options` is converted with, and the value parsers
behind them (listen addresses, names, socket modes, groups, the rules' special words).

Every converter takes a raw value (a flag's text, an environment variable, a TOML value)
and returns the typed value or raises ValueError saying what is wrong; `Resolver` adds the
setting's name and source. Touches no Redis and no sockets (a group name is looked up).
"""

from __future__ import annotations

import grp
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from killswitch.core.node.names import InvalidName, check_name, check_roster
from killswitch.core.settings.options import Option
from killswitch.runtime.validate import (
    bounded,
    bounded_int,
    fraction,
    seconds_ms,
    truthy,
    word_or_bounded,
)


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True, slots=True)
class ListenAddr:
    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


def parse_listen(value: str) -> ListenAddr:
    """`unix:/path` or `tcp:HOST:PORT` (HOST may be an IPv6 literal in brackets)."""
    if value.startswith("unix:"):
        path = value[5:]
        if not path:
            raise ConfigError("listen: unix: needs a socket path, e.g. unix:/run/ks/gate.sock")
        return ListenAddr("unix", path=path)
    if value.startswith("tcp:"):
        host, sep, port = value[4:].rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
            raise ConfigError(f"listen: {value!r} is not tcp:HOST:PORT, e.g. tcp:127.0.0.1:7000")
        return ListenAddr("tcp", host=host, port=int(port))
    raise ConfigError(f"listen: {value!r} must start with unix: or tcp:")


def parse_fix_route(value: str) -> tuple[ListenAddr, ListenAddr]:
    """`LISTEN=UPSTREAM` of `--fix`, each side `tcp:HOST:PORT` or `unix:/path`."""
    cut = max(value.rfind("=tcp:"), value.rfind("=unix:"))
    if cut <= 0:
        raise ConfigError(
            f"fix: {value!r} is not LISTEN=UPSTREAM, e.g. tcp:127.0.0.1:9878=tcp:10.0.0.5:9878"
        )
    try:
        return parse_listen(value[:cut]), parse_listen(value[cut + 1 :])
    except ConfigError as e:
        raise ConfigError(f"fix: {value!r}: {e}") from None


def node_name(v: Any) -> str:
    try:
        return check_name("node", str(v))
    except InvalidName as e:
        raise ValueError(str(e)) from None


def host_name(v: Any) -> str:
    try:
        return check_name("host", str(v))
    except InvalidName as e:
        raise ValueError(str(e)) from None


def positive_float(v: Any) -> float:
    f = float(v)
    if not (f > 0 and math.isfinite(f)):
        raise ValueError("must be a positive, finite number")
    return f


def positive_int(v: Any) -> int:
    if isinstance(v, float) and not v.is_integer():
        raise ValueError("must be a whole number")
    i = int(v)
    if i <= 0:
        raise ValueError("must be a positive whole number")
    return i


def str_list(v: Any) -> list[str]:
    if isinstance(v, list):
        return [str(x) for x in v]
    return [p.strip() for p in str(v).split(",") if p.strip()]


def listen_host(v: Any) -> str:
    """An address to bind an HTTP server on: an IP literal or a host name, no port."""
    text = str(v).strip().strip("[]")
    if not text or any(c.isspace() for c in text) or "/" in text or len(text) > 253:
        raise ValueError("must be an address such as 127.0.0.1, 0.0.0.0 or ::")
    return text


def file_mode(v: Any) -> int:
    """Permission bits in octal, e.g. 660 or 0o660."""
    text = str(v).strip().lower().removeprefix("0o")
    if not text or len(text) > 4 or any(c not in "01234567" for c in text):
        raise ValueError("must be octal permission bits 0..777, e.g. 660")
    mode = int(text, 8)
    if mode > 0o777:
        raise ValueError("must be octal permission bits 0..777, e.g. 660")
    return mode


def group_id(v: Any) -> int:
    """A group name or numeric id that exists on this machine."""
    text = str(v).strip()
    try:
        return grp.getgrgid(int(text)).gr_gid if text.isdigit() else grp.getgrnam(text).gr_gid
    except (KeyError, OverflowError):
        raise ValueError("no such group on this machine") from None


def roster(v: Any) -> tuple[str, ...]:
    try:
        return check_roster(str_list(v))
    except InvalidName as e:
        raise ValueError(str(e)) from None


def shadow(v: Any) -> frozenset[str] | bool:
    """`--shadow`: a comma list of rule causes, or 'all' (True)."""
    from killswitch.core.rules.config import CAUSES  # only for the rule verbs

    names = [p.strip() for p in (v if isinstance(v, list) else str(v).split(",")) if p.strip()]
    if names == ["all"]:
        return True
    unknown = sorted(set(names) - set(CAUSES))
    if unknown:
        raise ValueError(f"unknown rules {unknown}; known: {', '.join(CAUSES)} or 'all'")
    return frozenset(names)


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return str(v)

    return conv


def _listen_all(v: Any) -> tuple[ListenAddr, ...]:
    return tuple(parse_listen(x) for x in str_list(v))


def _fix_routes(v: Any) -> tuple[tuple[ListenAddr, ListenAddr], ...]:
    return tuple(parse_fix_route(x) for x in str_list(v))


def _listen_one(v: Any) -> str:
    return str(parse_listen(str(v)))


def converter(opt: Option) -> Callable[[Any], Any]:
    """The converter of `opt`'s kind (a flag's text, an env value or a TOML value in)."""
    kind, name = opt.kind, opt.name
    if kind == "int":
        return bounded_int(name)
    if kind == "float":
        return bounded(name)
    if kind == "choice":
        return _choice(opt.choices)
    if kind == "multiplier":  # a number, or 'off'
        return word_or_bounded(name, {"off": None, "none": None})
    if kind == "rate":  # (max_rate, max_rate_auto)
        num = bounded(name)
        words = {"auto": (None, True), "off": (None, False), "none": (None, False)}
        return lambda v: words[v.strip().lower()] if _is_word(v, words) else (num(v), False)
    if kind == "rearm":  # milliseconds, or None for never
        ms = seconds_ms(name)
        never = {"never": None, "none": None, "off": None}
        return lambda v: None if _is_word(v, never) else ms(v)
    return _SIMPLE[kind]


def _is_word(v: Any, words: dict[str, Any]) -> bool:
    return isinstance(v, str) and v.strip().lower() in words


_SIMPLE: dict[str, Callable[[Any], Any]] = {
    "str": str,
    "flag": truthy,
    "switch": truthy,
    "list": str_list,
    "node": node_name,
    "host": host_name,
    "listen": _listen_all,
    "listen1": _listen_one,
    "fixroute": _fix_routes,
    "bind": listen_host,
    "mode": file_mode,
    "group": group_id,
    "roster": roster,
    "fraction": fraction,
    "shadow": shadow,
}
