"""Typed settings, resolved once at start-up: flag, then environment, then config file, then default.

Errors name the bad field and where it came from. Nothing here touches Redis or sockets.
"""

from __future__ import annotations

import grp
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from killswitch.core.names import InvalidName, check_name

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
ENV_PREFIX = "KILLSWITCH_"

T = TypeVar("T")


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


def load_config_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    import tomllib  # only with a config file: it costs a cold `kill` about 6 ms

    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config: file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config: {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config: {path} is not valid UTF-8 TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e}") from None


class Resolver:
    """Looks a setting up in flags, then `KILLSWITCH_<NAME>`, then the config file, then default.

    The config file may hold a setting at top level or in a `[<command>]` table; the table
    wins. Flag values of None mean "not given".
    """

    def __init__(
        self,
        flags: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
        config: Mapping[str, Any] | None = None,
        section: str = "",
    ) -> None:
        self.flags = flags
        self.env = os.environ if env is None else env
        self.config = dict(config or {})
        sect = self.config.get(section, {}) if section else {}
        self.section = sect if isinstance(sect, dict) else {}

    def _sources(self, name: str) -> list[tuple[str, Any]]:
        key = name.replace("-", "_")
        return [
            (f"--{name}", self.flags.get(key)),
            (ENV_PREFIX + key.upper(), self.env.get(ENV_PREFIX + key.upper())),
            (f"config [{key}]", self._from_config(key, name)),
        ]

    def given_empty(self, name: str) -> bool:
        """True when the first source that gives `name` gives '' (an explicit "none")."""
        return next((raw == "" for _, raw in self._sources(name) if raw is not None), False)

    def get(self, name: str, default: T, conv: Callable[[Any], T]) -> T:
        for where, raw in self._sources(name):
            if raw is None or raw == "":
                continue
            try:
                return conv(raw)
            except (ValueError, TypeError, OverflowError) as e:
                raise ConfigError(f"{name}: bad value {raw!r} from {where}: {e}") from None
        return default

    def _from_config(self, key: str, name: str) -> Any:
        # Accept both `stale_after` and `stale-after` (the flag's spelling) in the file.
        for table in (self.section, self.config):
            for k in (key, name):
                if k in table and not isinstance(table[k], dict):
                    return table[k]
        return None

    def require(self, name: str, conv: Callable[[Any], T], hint: str = "") -> T:
        missing = object()
        value = self.get(name, missing, conv)
        if value is missing:
            env = ENV_PREFIX + name.replace("-", "_").upper()
            raise ConfigError(f"{name}: required; give --{name} or set {env}{hint}")
        return value  # type: ignore[return-value]


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


STATE_DIR_HELP = (
    "$STATE_DIRECTORY (systemd), else $XDG_STATE_HOME/killswitch, else "
    "~/.local/state/killswitch, else /var/lib/killswitch, whichever is writable first; "
    "else a directory under the temp dir, with a warning"
)


def _writable(path: Path) -> bool:
    """True if `path` is a writable directory, or could be created under a writable one."""
    p = path
    while not p.exists():
        if p.parent == p:
            return False
        p = p.parent
    return p.is_dir() and os.access(p, os.W_OK | os.X_OK)


SYSTEM_STATE_DIR = "/var/lib/killswitch"


def pick_state_dir(
    env: Mapping[str, str] | None = None, system_dir: str = SYSTEM_STATE_DIR
) -> tuple[str, str]:
    """The default state directory and a warning ("" if none) about it.

    Works for a user with no home (the container image runs as `nobody`): the temp-dir
    fallback keeps the sidecar running, but a reboot forgets the highest epoch seen there,
    so it warns loudly.
    """
    env = os.environ if env is None else env
    candidates: list[Path] = []
    if env.get("STATE_DIRECTORY"):
        candidates.append(Path(env["STATE_DIRECTORY"].split(":")[0]))
    if env.get("XDG_STATE_HOME"):
        candidates.append(Path(env["XDG_STATE_HOME"]) / "killswitch")
    home = env.get("HOME") or ""
    if home and Path(home).is_dir():
        candidates.append(Path(home) / ".local" / "state" / "killswitch")
    candidates.append(Path(system_dir))
    for c in candidates:
        if _writable(c):
            return str(c), ""
    import tempfile  # only on this fallback: it costs a cold `kill` about 6 ms

    fallback = Path(tempfile.gettempdir()) / f"killswitch-{os.getuid()}"
    return str(fallback), (
        f"no writable state directory ({', '.join(str(c) for c in candidates)}); using "
        f"{fallback}, which a reboot may wipe: give --state-dir on persistent storage"
    )


def default_state_dir() -> str:
    return pick_state_dir()[0]


# Linux's sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_UNIX_PATH = 107


def check_listen_path(addr: ListenAddr) -> None:
    """Refuse a unix socket path that cannot work, before anything binds."""
    if addr.kind != "unix":
        return
    raw = os.fsencode(addr.path)
    if len(raw) > MAX_UNIX_PATH:
        raise ConfigError(
            f"listen: unix socket path {addr.path!r} is {len(raw)} bytes; the limit is "
            f"{MAX_UNIX_PATH} (use a shorter directory)"
        )
    parent = Path(addr.path).parent
    if not parent.is_dir():
        raise ConfigError(f"listen: directory {str(parent)!r} of {addr} does not exist")


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
