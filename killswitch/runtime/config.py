"""Typed settings, resolved once at start-up: flag, then environment, then config file, then default.

Errors name the bad field and where it came from. Nothing here touches Redis or sockets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from killswitch.core.settings.options import (
    ENV_PREFIX,
    OPTIONS,
    VERBS,
    Option,
    closest,
    config_keys,
    default,
    option,
    options_of,
)
from killswitch.runtime.convert import (
    ConfigError,
    ListenAddr,
    converter,
    file_mode,
    group_id,
    host_name,
    listen_host,
    node_name,
    parse_listen,
    positive_float,
    positive_int,
    str_list,
)

__all__ = [
    "DEFAULT_REDIS", "ConfigError", "ListenAddr", "Resolver", "file_mode", "group_id",
    "host_name", "listen_host", "load_config_file", "node_name", "parse_listen",
    "positive_float", "positive_int", "str_list",
]  # fmt: skip

DEFAULT_REDIS: str = default("redis")


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


_TABLE: Any = object()  # "take it from the table"


class Resolver:
    """Looks a setting up in flags, then its environment variable, then the config file, then
    the table's default (`core.settings.options`), converting each with the table's converter.

    The config file may hold a setting at top level or in a `[<command>]` table; the table
    wins. Flag values of None mean "not given". `resolve()` converts every setting of the
    verb at once, so a verb refuses a bad value before it does anything; `get()` afterwards
    returns what was resolved.
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
        self.verb = section
        self.values: dict[str, Any] = {}

    def option(self, name: str) -> Option | None:
        try:
            return option(name, self.verb if self.verb in VERBS else "")
        except KeyError:
            return None

    def resolve(self) -> dict[str, Any]:
        """Every setting of the verb, converted and checked (the first bad one: ConfigError)."""
        for o in options_of(self.verb):
            if o.name not in self.values:
                self.values[o.name] = self.get(o.name)
        return self.values

    def get(self, name: str, default: Any = _TABLE, conv: Any = _TABLE) -> Any:
        """The setting's value; `default` and `conv` only for a name the table does not hold."""
        if default is _TABLE and conv is _TABLE and name in self.values:
            return self.values[name]
        opt = self.option(name)
        if opt is None and (default is _TABLE or conv is _TABLE):
            raise KeyError(f"{name!r} is not a setting of {self.verb or 'any verb'}")
        convert = converter(opt) if conv is _TABLE and opt is not None else conv
        found = self.source(name, opt)
        if found is None:
            if default is not _TABLE:
                return default
            return None if opt is None or opt.default is None else convert(opt.default)
        _, where, raw = found
        try:
            return convert(raw)
        except ConfigError:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            raise ConfigError(f"{name}: bad value {raw!r} from {where}: {e}") from None

    def source(self, name: str, opt: Option | None = None) -> tuple[str, str, Any] | None:
        """(flag | env | file, where, raw value) of the first source that gives `name`."""
        opt = opt or self.option(name)
        for kind, where, raw in self._sources(name, opt):
            # '' is "not given", except for a setting where it means "none" (Option.empty)
            if raw is not None and (raw != "" or (opt is not None and opt.empty)):
                return kind, where, raw
        return None

    def _sources(self, name: str, opt: Option | None = None) -> list[tuple[str, str, Any]]:
        opt = opt or self.option(name)
        key = name.replace("-", "_")
        sources = [("flag", f"--{name}", self.flags.get(opt.attr if opt else key))]
        if opt is None or not opt.flags_only:
            env = opt.env_var if opt else ENV_PREFIX + key.upper()
            if env:
                sources.append(("env", env, self.env.get(env)))
            keys = (key, name, *(opt.aliases if opt else ()))
            sources.append(("file", f"config [{key}]", self._from_config(keys)))
        return sources

    def _from_config(self, keys: tuple[str, ...]) -> Any:
        # Accept both `stale_after` and `stale-after` (the flag's spelling) in the file.
        for table in (self.section, self.config):
            for k in keys:
                if k in table and not isinstance(table[k], dict):
                    return table[k]
        return None

    def require(self, name: str, conv: Any = _TABLE, hint: str = "") -> Any:
        value = self.get(name, _MISSING, conv) if conv is not _TABLE else self.get(name)
        if value is None or value is _MISSING:
            opt = self.option(name)
            env = opt.env_var if opt else ENV_PREFIX + name.replace("-", "_").upper()
            where = f"--{name} or set {env}" if env else f"--{name}"
            raise ConfigError(f"{name}: required; give {where}{hint}")
        return value


_MISSING: Any = object()


def unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """One line per key of a config file that no verb takes (or, in a `[VERB]` table, that
    verb does not take), naming the closest known key. Every verb refuses the same file."""
    problems = []
    for k, v in config.items():
        if k in VERBS and isinstance(v, dict):
            known = config_keys(k)
            problems += [_unknown(f"[{k}] {kk}", kk, known, k) for kk in v if kk not in known]
        elif k in VERBS:
            problems.append(f"config [{k}]: must be a table of {k}'s settings")
        elif k not in config_keys():
            problems.append(_unknown(k, k, config_keys(), ""))
    return problems


def _unknown(where: str, key: str, known: frozenset[str], verb: str) -> str:
    line = f"config {where}: unknown key"
    if verb and key in config_keys():
        takers = sorted(
            {v for o in OPTIONS if key in (o.key, o.name) and not o.flags_only for v in o.verbs}
        )
        return f"{line}: {verb} does not take it (it is a setting of {', '.join(takers)})"
    near = closest(key.replace("-", "_"), (k for k in known if "-" not in k))
    return f"{line}; did you mean {near}?" if near else f"{line} (see killswitch config --check)"


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
