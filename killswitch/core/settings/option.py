"""What a setting is: its name, kind, default, bound, environment variable, help and verbs
(`Option`), and the arithmetic every module shares on it (seconds to milliseconds, number
formatting, the closest known name). The table itself is `core.settings.options`.

Pure: imports nothing but the standard library, reads no file and no environment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "KILLSWITCH_"
DAY = 86_400.0

# Every verb, in the order `--help` lists them.
VERBS = (
    "sidecar", "aggregator", "arm", "resume", "rollout", "kill", "status", "watch", "audit",
    "forget", "demo", "backtest", "export", "recorder", "loadgen", "alertsink", "config",
)  # fmt: skip

# The static cap an aggregator (and a backtest) enforces when no --max-orders is given: this
# many orders per second per roster host, over the window. A backstop that is always active
# (the baseline rule spends its first --warmup learning), set far above normal flow.
CAP_PER_HOST_PER_S = 1000
# The derived rate cap: this many times the average rate `max_orders` allows (--max-rate auto).
RATE_HEADROOM = 3.0


@dataclass(frozen=True, slots=True)
class Bound:
    """The safe range of a numeric setting, in the unit the operator writes."""

    lo: float
    hi: float
    unit: str = ""
    whole: bool = False  # a count or a port, not a duration

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{fmt_number(self.lo)}..{fmt_number(self.hi)}{unit}"


@dataclass(frozen=True, slots=True)
class Option:
    """One setting. `kind` names its converter (`runtime.validate.CONVERTERS`)."""

    name: str  # the flag without `--`; the config key is the same with `_` (either works)
    verbs: tuple[str, ...]
    help: str
    kind: str = "str"
    default: Any = None  # as typed by an operator; None: not set
    bound: Bound | None = None
    metavar: str | None = None
    derived: str = ""  # the default in words, when it is computed rather than a value
    unset: str = ""  # what no value means, in words ("off"), when the default is None
    env: str | None = None  # None: KILLSWITCH_<NAME>; "": no environment variable
    dest: str = ""  # the parsed flag's attribute; "": the name with `_`
    flags_only: bool = False  # never read from the environment or a config file
    repeat: bool = False  # the flag may be given several times (a list)
    choices: tuple[str, ...] = ()
    group: str = ""  # the --help section it is listed under
    exclusive: str = ""  # options sharing this name exclude each other
    hidden: bool = False  # accepted but not shown in --help (a retired flag's refusal)
    aliases: tuple[str, ...] = ()  # other config-file keys accepted for it
    empty: bool = False  # '' is a value ("none": no file), not "not given" (the default)

    @property
    def key(self) -> str:
        """Its config-file key (the flag's spelling `stale-after` is accepted too)."""
        return self.name.replace("-", "_")

    @property
    def attr(self) -> str:
        return self.dest or self.key

    @property
    def env_var(self) -> str:
        if self.flags_only or self.env == "":
            return ""
        return self.env or ENV_PREFIX + self.key.upper()

    @property
    def is_flag(self) -> bool:
        """A switch given without a value (`--json`)."""
        return self.kind == "flag"

    def default_text(self) -> str:
        """The default as `--help` and the README state it."""
        if self.derived:
            return f"derived: {self.derived}"
        if self.default is None:
            return self.unset
        if self.is_flag:
            return "off" if not self.default else "on"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float | int):
            unit = f" {self.bound.unit}" if self.bound and self.bound.unit == "s" else ""
            return f"{fmt_number(self.default)}{unit}"
        return str(self.default)


def fmt_number(x: float) -> str:
    return f"{int(x)}" if float(x).is_integer() else f"{x:g}"


def to_ms(seconds: float) -> int:
    """A duration in seconds as whole milliseconds: at least 1 unless it is 0."""
    return 0 if seconds == 0 else max(round(seconds * 1000), 1)


def S(lo: float, hi: float) -> Bound:
    return Bound(lo, hi, "s")


def N(lo: int, hi: int) -> Bound:
    return Bound(lo, hi, whole=True)


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known name `word` most likely meant (a typo, or a prefix of one), or None."""
    import difflib  # only on a refusal

    names = sorted(set(known))
    starts = [k for k in names if k.startswith(word) and word]
    if len(starts) == 1:
        return starts[0]
    found = difflib.get_close_matches(word, starts or names, n=1, cutoff=0.6)
    return found[0] if found else None
