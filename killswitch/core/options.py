"""Every setting of every verb, declared once: name, kind, default, bound, environment
variable, help and the verbs that take it.

The command-line parsers, the environment and config-file resolution, the validation,
`killswitch config --check`, `--help` and the README's settings table are all produced from
`OPTIONS`; the services' typed settings and the trip rules read their defaults and bounds
here too. Pure data and arithmetic: it must never import anything but the standard library
(core modules read their bounds from it), never read a file or the environment.

A default is given as an operator would type it (seconds for durations, `off` for a rule
that is off) and goes through the same converter as a flag's value. Durations are seconds
here; `to_ms` is the one place they become milliseconds.
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
    "demo", "backtest", "export", "loadgen", "config",
)  # fmt: skip
SERVICES = ("sidecar", "aggregator")
OPERATOR = ("arm", "resume", "rollout", "kill", "status")  # judge liveness: --stale-after
RULE_VERBS = ("aggregator", "backtest")  # the trip rules' flags: one definition for both

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


ALL = VERBS
_BOUND_HELP = (
    "the liveness bound: a sidecar blocks every order when no Redis round trip succeeded for "
    "this long; status, arm and kill count a host silent this long as not alive, whatever it "
    "claims (the same setting, so one config file sets both)"
)
_FLEET = "every node of the fleet (every node registered in this Redis), not one --node"
_SCOPE_VERBS = ("arm", "resume", "kill")
_AGG_RULES = "trip rules"
_BURST = "limit-burst rule"

OPTIONS: tuple[Option, ...] = (
    # -- common to every verb -------------------------------------------------------------
    Option("redis", ALL, "Redis URL; redis+sentinel://h1:p1,h2:p2/service and "
           "redis+cluster://h1:p,h2:p/ also work", metavar="URL",
           default="redis://127.0.0.1:6379/0", env="KILLSWITCH_REDIS_URL", group="common",
           aliases=("redis_url",)),
    Option("node", ALL, "the logical node", kind="node", metavar="NAME", group="common"),
    Option("config", ALL, "TOML config file: settings at top level or in a [VERB] table",
           metavar="PATH", group="common", flags_only=True),
    Option("operators", ALL, "the operators' public keys, an OpenSSH allowed-signers file: "
           'one line `<principal> namespaces="killswitch" <key-type> <base64>` per key. '
           "Sidecars and aggregators open/treat as armed only arms signed by two of them; "
           "without it a sidecar never opens", metavar="PATH", group="common"),
    Option("log-format", ALL, "log format", kind="choice", choices=("json", "console"),
           derived="console on a terminal, else json", group="common"),
    # -- shared by several verbs ----------------------------------------------------------
    Option("stale-after", ("sidecar", *OPERATOR), _BOUND_HELP, kind="float", default=1.0,
           bound=S(0.2, 10.0), metavar="S"),
    Option("json", ("arm", "resume", "rollout", "kill", "status", "audit", "demo", "backtest"),
           "print one JSON object on stdout", kind="flag", default=False),
    Option("metrics-port", SERVICES, "serve Prometheus /metrics (and the sidecar's /healthz) "
           "on this port", kind="int", bound=N(1, 65535), metavar="P"),
    Option("metrics-listen", SERVICES, "address /metrics binds to (0.0.0.0 to be scraped "
           "from another host or container)", kind="bind", default="127.0.0.1",
           metavar="ADDR"),
    Option("tick", ("aggregator", "backtest"), "seconds between evaluations",
           kind="float", default=0.1, bound=S(0.01, 10.0), metavar="S"),
    Option("on-haunted", ("aggregator", "demo"), "when the host-share rule trips: kill the "
           "node, or isolate: kill only the haunted host (a scoped kill, lifted by arm --host)",
           kind="choice", choices=("kill", "isolate"), default="kill"),
    # -- sidecar --------------------------------------------------------------------------
    Option("host", ("sidecar",), "this host's name on the node's roster", kind="host",
           metavar="HOST"),
    Option("listen", ("sidecar",), "gate address, unix:/path or tcp:127.0.0.1:PORT "
           "(repeatable)", kind="listen", repeat=True, metavar="ADDR"),
    Option("flush-interval", ("sidecar",), "seconds between Redis round trips; an idle host "
           "(no orders, nothing to confirm) makes one every third of --stale-after instead",
           kind="float", default=0.1, bound=S(0.01, 5.0), metavar="S"),
    Option("state-dir", ("sidecar",), "where the highest seen epoch is kept across restarts",
           metavar="DIR", derived="$STATE_DIRECTORY (systemd), else "
           "$XDG_STATE_HOME/killswitch, else ~/.local/state/killswitch, else "
           "/var/lib/killswitch, whichever is writable first; else a directory under the temp "
           "dir, with a warning"),
    Option("socket-mode", ("sidecar",), "permission bits of unix gate sockets in octal, e.g. "
           "660", kind="mode", metavar="MODE", unset="the umask"),
    Option("socket-group", ("sidecar",), "group that owns unix gate sockets (with "
           "--socket-mode 660: who may trade)", kind="group", metavar="GROUP"),
    Option("max-conns", ("sidecar",), "gate connections at once; at the cap the oldest "
           "connection that never sent a request makes room, else the newcomer gets ERR",
           kind="int", default=1024, bound=N(1, 100_000), metavar="N"),
    Option("line-timeout", ("sidecar",), "close a gate connection holding a partial request "
           "line this long", kind="float", default=5.0, bound=S(0.1, 600.0), metavar="S"),
    Option("limits", ("sidecar",), "local pre-trade limits (TOML: max_qty, max_notional, "
           'max_orders_per_s, [symbols."SYM"] overrides); an order over one gets BLOCK ... '
           "limit", metavar="PATH"),
    Option("on-kill", ("sidecar",), "shell command run once per kill epoch (e.g. a venue "
           "mass-cancel), in a process group of its own; its result (exit N, timeout after "
           "30 s, interrupted) is reported in status --json. On stop a running command gets "
           "--on-kill-grace to finish, then its whole group gets SIGTERM and, 2 s later, "
           "SIGKILL", metavar="CMD"),
    Option("on-kill-grace", ("sidecar",), "seconds a running --on-kill command may still "
           "finish when the sidecar stops (never past its 30 s timeout). Give the service "
           "manager's stop timeout at least this plus 5 s", kind="float", default=10.0,
           bound=S(0.0, 30.0), metavar="S"),
    Option("attest", ("sidecar",), "a file or glob whose bytes are part of this host's "
           "release (repeatable): the trading binary, its config, its flag files, the "
           "--limits file. Hashed (SHA-256) at start, on SIGHUP and when a file's size or "
           "mtime changes; a file that cannot be read blocks this host; a roster running "
           "different releases is split", kind="list", repeat=True, metavar="PATH"),
    Option("attest-interval", ("sidecar",), "seconds between checks for changed attested "
           "files (their size or mtime)", kind="float", default=2.0, bound=S(0.1, 3600.0),
           metavar="S"),
    # -- aggregator -----------------------------------------------------------------------
    Option("hosts", ("aggregator",), "the node's roster: proposed until the first signed "
           "arm, then only a signed arm changes it", kind="roster", metavar="H1,H2,..."),
    Option("confirm-timeout", ("aggregator",), "name unconfirmed hosts after this long",
           kind="float", default=5.0, bound=S(0.1, 3600.0), metavar="S"),
    Option("instance", ("aggregator",), "this aggregator's name in the leader lease and "
           "metrics", metavar="NAME", derived="hostname-pid"),
    Option("lease-ttl", ("aggregator",), "leader lease: a standby takes over this long after "
           "the leader stops", kind="float", default=2.0, bound=S(0.5, 60.0), metavar="S"),
    Option("fleet-max-orders", ("aggregator",), "firm-wide cap: kill every node of the fleet "
           "(cause fleet_cap) when more than N orders were sent across all nodes within "
           "--window (one aggregator of the fleet, the fleet lease holder, sums and acts)",
           kind="int", bound=N(1, 10**9), metavar="N", unset="off"),
    Option("require-durable", ("aggregator",), "refuse to start (exit 2) unless Redis runs "
           "with appendonly (use in production)", kind="flag", default=False),
    Option("audit-log", ("aggregator",), "append the node's audit chain to this JSONL file, "
           "so the trail survives a wiped Redis ('' for none)", metavar="PATH",
           derived="audit-NODE.jsonl in the sidecar's default --state-dir"),
    Option("max-limit-refusals", ("aggregator",), "kill the node when the hosts' local "
           "--limits refuse more than N orders within --limit-window on at least "
           "--limit-min-hosts hosts", kind="int", bound=N(1, 10**9), metavar="N",
           unset="off", group=_BURST),
    Option("limit-window", ("aggregator",), "the limit-burst rule's window", kind="float",
           default=1.0, bound=S(0.1, 3600.0), metavar="S", group=_BURST),
    Option("limit-min-hosts", ("aggregator",), "hosts the limit-burst rule needs",
           kind="int", default=2, bound=N(1, 10_000), metavar="N", group=_BURST),
    # -- the trip rules: aggregator and backtest ------------------------------------------
    Option("max-orders", RULE_VERBS, "static cap: kill when more than N orders were sent "
           "across the node within --window (never shadowed by the aggregator)", kind="int",
           bound=N(1, 10**9), metavar="N",
           derived=f"{CAP_PER_HOST_PER_S:,} orders/s per roster host over --window",
           group=_AGG_RULES),
    Option("window", RULE_VERBS, "sliding window in seconds", kind="float", default=10.0,
           bound=S(0.1, 3600.0), metavar="S", group=_AGG_RULES),
    Option("baseline-multiplier", RULE_VERBS, "kill when the window holds more than X times "
           "the learned baseline ('off' disables the rule)", kind="multiplier", default=5.0,
           bound=Bound(1.0001, 1e6), metavar="X", group=_AGG_RULES),
    Option("breach-windows", RULE_VERBS, "consecutive windows a baseline or host-share breach "
           "must last", kind="int", default=2, bound=N(1, 1000), metavar="N", group=_AGG_RULES),
    Option("min-orders", RULE_VERBS, "the baseline and host-share rules never trip a window "
           "below N orders", kind="int", default=100, bound=N(0, 10**9), metavar="N",
           group=_AGG_RULES),
    Option("warmup", RULE_VERBS, "seconds of learning before the baseline rule may trip",
           kind="float", default=300.0, bound=S(0.0, 7 * DAY), metavar="S", group=_AGG_RULES),
    Option("max-host-share", RULE_VERBS, "kill when one host sends more than this fraction "
           "of the window, e.g. 0.5", kind="fraction", metavar="F", unset="off",
           group=_AGG_RULES),
    Option("haunted-ratio", RULE_VERBS, "report a host as haunted at X times its peers' "
           "median", kind="float", default=5.0, bound=Bound(1.0001, 1e6), metavar="X",
           group=_AGG_RULES),
    Option("shadow", RULE_VERBS, "rules that only report ('would have tripped at ...'), "
           "never kill: a comma list of {causes}, or 'all'", kind="shadow", metavar="RULES",
           unset="none", group=_AGG_RULES),
    Option("max-rate", RULE_VERBS, "rate cap: kill when more than N orders per second were "
           "sent across the node within --fast-window; 'auto' derives it from --max-orders "
           f"({RATE_HEADROOM:g}x its average rate)", kind="rate", default="off",
           bound=Bound(0.001, 1e9, "orders/s"), metavar="N", group=_AGG_RULES),
    Option("fast-window", RULE_VERBS, "the fast window of the fast rules (baseline_fast, "
           "host_share_fast, max_rate), in seconds; they are off unless it is shorter than "
           "--window", kind="float", default=1.0, bound=S(0.1, 3600.0), metavar="S",
           group=_AGG_RULES),
    Option("fast-multiplier", RULE_VERBS, "baseline_fast: kill when the fast window holds "
           "more than X times the baseline's rate ('off' disables the rule)",
           kind="multiplier", default=8.0, bound=Bound(1.0001, 1e6), metavar="X",
           group=_AGG_RULES),
    Option("fast-breach", RULE_VERBS, "seconds a fast breach must hold, to filter one tick's "
           "noise (0 trips at the first breaching tick)", kind="float", default=0.1,
           bound=S(0.0, 3600.0), metavar="S", group=_AGG_RULES),
    Option("fast-min-orders", RULE_VERBS, "the fast baseline and host-share rules never trip "
           "a fast window below N orders", kind="int", default=50, bound=N(0, 10**9),
           metavar="N", group=_AGG_RULES),
    Option("fast-host-share", RULE_VERBS, "host_share_fast: the --max-host-share limit on the "
           "fast window too (with --max-host-share)", kind="switch", default=True,
           metavar="on|off", group=_AGG_RULES),
    Option("half-life", RULE_VERBS, "half-life of the baseline's moving average in seconds",
           kind="float", default=45.0, bound=S(0.1, 30 * DAY), metavar="S", group=_AGG_RULES),
    Option("profile-bucket", RULE_VERBS, "width of a time-of-day profile bucket in seconds",
           kind="float", default=300.0, bound=S(1.0, DAY), metavar="S", group=_AGG_RULES),
    Option("profile-half-life", RULE_VERBS, "half-life of a profile bucket, in time spent in "
           "it", kind="float", default=900.0, bound=S(0.1, 30 * DAY), metavar="S",
           group=_AGG_RULES),
    # -- arm, resume, rollout -------------------------------------------------------------
    Option("key", ("arm", "resume", "rollout"), "your SSH private key, or its .pub when the "
           "private key is in ssh-agent; signed by `ssh-keygen -Y sign -n killswitch`",
           metavar="PATH"),
    Option("roster", ("arm", "resume"), "the roster both operators sign", kind="list",
           metavar="H1,H2,...", derived="the pending request's, else the stored roster (the "
           "last signed one or the aggregator's proposal)"),
    Option("reason", ("arm", "resume", "rollout"), "why (signed and audited)", metavar="TEXT"),
    Option("expires", ("arm", "resume", "rollout"), "a new pending request expires after this "
           "many seconds", kind="float", default=600.0, bound=S(1.0, DAY), metavar="S"),
    Option("timeout", ("arm", "resume", "kill"), "seconds to wait for every roster host to "
           "confirm", kind="float", default=5.0, bound=S(0.1, 3600.0), metavar="S"),
    Option("approver", ("arm", "resume"), "retired: approvals are signatures", kind="list",
           repeat=True, flags_only=True, hidden=True),
    Option("release", ("rollout",), "begin a rollout to this release (a digest from "
           "`status --json` releases)", metavar="DIGEST", flags_only=True, exclusive="step"),
    Option("promote", ("rollout",), "let every host run the new release", kind="flag",
           default=False, flags_only=True, exclusive="step"),
    Option("abort", ("rollout",), "end the rollout: all back to `from`", kind="flag",
           default=False, flags_only=True, exclusive="step"),
    Option("hosts", ("rollout",), "with --release: the canary hosts (roster hosts)",
           kind="list", metavar="H1,H2,...", flags_only=True),
    # -- kill -----------------------------------------------------------------------------
    Option("reason", ("kill",), "why (audited; required)", metavar="TEXT"),
    Option("operator", ("kill",), "who (audited)", metavar="NAME", derived="$USER"),
    Option("key", ("kill",), "optional: your SSH key (or its .pub with ssh-agent); the kill "
           "is then recorded as by the principal whose signature verifies against "
           "--operators. A kill never needs it and never waits more than 2 s for it "
           "(unsigned if signing fails)", metavar="PATH"),
    Option("fleet", ("kill",), f"kill {_FLEET}; proven when every roster host of every node "
           "confirmed (exit 3 names the node/host pairs that did not)", kind="flag",
           default=False),
    Option("host", _SCOPE_VERBS, "one host only (proof from that host; the rest of the node "
           "is untouched); arm lifts that host's scoped kill", kind="host", metavar="H",
           dest="scope_host", flags_only=True, exclusive="scope"),
    Option("symbol", _SCOPE_VERBS, "one symbol on every host (proof from every roster host); "
           "arm lifts that symbol's scoped kill", metavar="S", dest="scope_symbol",
           flags_only=True, exclusive="scope"),
    # -- status, watch --------------------------------------------------------------------
    Option("fleet", ("status", "watch"), f"one line per node: {_FLEET}", kind="flag",
           default=False),
    Option("interval", ("watch",), "seconds between redraws", kind="float", default=0.5,
           bound=S(0.05, 60.0), metavar="S"),
    Option("once", ("watch",), "print one frame and exit (scripts)", kind="flag",
           default=False),
    # -- audit ----------------------------------------------------------------------------
    Option("limit", ("audit",), "only the newest N entries (still oldest first)", kind="int",
           bound=N(1, 100_000), metavar="N", unset="all"),
    Option("verify", ("audit",), "check the hash chain: exit 0 when whole, 4 naming the first "
           "entry altered, removed or inserted (or a cut-off tail)", kind="flag",
           default=False),
    Option("file", ("audit",), "with --verify: also verify an aggregator's local copy "
           "(--audit-log) and that Redis still holds every entry of it", metavar="PATH"),
    # -- demo -----------------------------------------------------------------------------
    Option("realtime", ("demo",), "no time compression: production windows (10 s) and rules, "
           "fast rules on, about two minutes; its figures are real-time figures", kind="flag",
           default=False),
    # -- backtest, export -----------------------------------------------------------------
    Option("counts", ("backtest",), "recorded per-host counts: timestamp,host,count rows "
           "(see `killswitch export`)", metavar="FILE.csv"),
    Option("baseline", ("backtest",), "start from a stored baseline: a JSON object in the "
           "layout of the node's baseline hash (e.g. yesterday's), instead of learning from "
           "nothing", metavar="FILE.json"),
    Option("rearm-after", ("backtest",), "after a trip, re-arm this many seconds later as "
           "operators would ('never' stops at the first trip)", kind="rearm", default=60.0,
           bound=S(0.0, 30 * DAY), metavar="S"),
    Option("hosts", ("export",), "hosts to export", kind="roster", metavar="H1,H2,...",
           derived="the node's roster"),
    Option("attempted", ("export",), "count blocked orders too (what the routers tried to "
           "send), not only allowed ones", kind="flag", default=False),
    # -- loadgen --------------------------------------------------------------------------
    Option("listen", ("loadgen",), "the sidecar's gate address (unix:/path or "
           "tcp:HOST:PORT)", kind="listen1", metavar="ADDR"),
    Option("rate", ("loadgen",), "orders per second", kind="float", default=100.0,
           bound=Bound(0.001, 1e6, "orders/s"), metavar="R"),
    Option("duration", ("loadgen",), "stop after S seconds", kind="float",
           bound=S(0.001, 30 * DAY), metavar="S", unset="run until stopped"),
    Option("name", ("loadgen",), "prefix of order ids", default="router", metavar="NAME"),
    # -- config ---------------------------------------------------------------------------
    Option("check", ("config",), "validate the config file for every verb (or VERB): unknown "
           "keys and bad values exit 2, one line each; print every resolved setting and its "
           "source (flag, env, file, default)", kind="flag", default=False, flags_only=True),
)  # fmt: skip


def options_of(verb: str) -> tuple[Option, ...]:
    """The options `verb` takes, in table order."""
    return tuple(o for o in OPTIONS if verb in o.verbs)


def option(name: str, verb: str = "") -> Option:
    """The option `name` of `verb` (any verb's, when none is given). KeyError if none."""
    for o in OPTIONS:
        if o.name == name and (not verb or verb in o.verbs):
            return o
    raise KeyError(f"{name!r} is not a setting of {verb or 'any verb'}")


def default(name: str, verb: str = "") -> Any:
    """The table's default of a setting (as typed: seconds for durations)."""
    return option(name, verb).default


def default_ms(name: str, verb: str = "") -> int:
    """The default of a duration setting, in milliseconds."""
    return to_ms(float(option(name, verb).default))


def bound(name: str) -> Bound:
    b = option(name).bound
    if b is None:
        raise KeyError(f"{name!r} has no bound")
    return b


def config_keys(verb: str = "") -> frozenset[str]:
    """The keys a config file may hold (for `verb`, or for any verb), both spellings."""
    opts = options_of(verb) if verb else OPTIONS
    return frozenset(k for o in opts if not o.flags_only for k in (o.key, o.name, *o.aliases))


def closest(word: str, known: Iterable[str]) -> str | None:
    """The known name `word` most likely meant (a typo, or a prefix of one), or None."""
    import difflib  # only on a refusal

    names = sorted(set(known))
    starts = [k for k in names if k.startswith(word) and word]
    if len(starts) == 1:
        return starts[0]
    found = difflib.get_close_matches(word, starts or names, n=1, cutoff=0.6)
    return found[0] if found else None
