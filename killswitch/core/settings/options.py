"""Every setting of every verb, declared once: name, kind, default, bound, environment
variable, help and the verbs that take it.

The command-line parsers, the environment and config-file resolution, the validation,
`killswitch config --check`, `--help` and the README's settings table are all produced from
`OPTIONS` (the services' and the trip rules' part is `core.settings.serviceoptions`; what an option
is, `core.settings.option`); the services' typed settings and the trip rules read their defaults and
bounds here too. Pure data: it imports nothing but those two (core modules read their bounds
from it) and never reads a file or the environment.

A default is given as an operator would type it (seconds for durations, `off` for a rule
that is off) and goes through the same converter as a flag's value. Durations are seconds
here; `to_ms` is the one place they become milliseconds.
"""

from __future__ import annotations

from typing import Any

from killswitch.core.settings.option import (
    CAP_PER_HOST_PER_S,
    DAY,
    ENV_PREFIX,
    RATE_HEADROOM,
    VERBS,
    Bound,
    N,
    Option,
    S,
    closest,
    fmt_number,
    to_ms,
)
from killswitch.core.settings.serviceoptions import (
    RULE_GROUP,
    RULE_VERBS,
    SERVICE_OPTIONS,
    SERVICES,
)

__all__ = [
    "CAP_PER_HOST_PER_S", "ENV_PREFIX", "OPTIONS", "RATE_HEADROOM", "RULE_GROUP", "RULE_VERBS",
    "SERVICES", "VERBS", "Bound", "Option", "bound", "closest", "config_keys", "default", "default_ms",
    "fmt_number", "option", "options_of", "to_ms",
]  # fmt: skip

ALL = VERBS
OPERATOR = ("arm", "resume", "rollout", "kill", "status", "forget")  # liveness: --stale-after
_BOUND_HELP = (
    "the liveness bound: a sidecar blocks every order when no Redis round trip succeeded for "
    "this long; status, arm and kill count a host silent this long as not alive, whatever it "
    "claims (the same setting, so one config file sets both)"
)
_FLEET = "every node of the fleet (every node registered in this Redis), not one --node"
_SCOPE_VERBS = ("arm", "resume", "kill")

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
    Option("log-level", ALL, "the least severe log events written (console logs honour "
           "NO_COLOR)", kind="choice", choices=("debug", "info", "warning", "error"),
           default="info", group="common"),
    # -- shared by several verbs ----------------------------------------------------------
    Option("stale-after", ("sidecar", *OPERATOR), _BOUND_HELP, kind="float", default=1.0,
           bound=S(0.2, 10.0), metavar="S"),
    Option("json", ("arm", "resume", "rollout", "kill", "status", "audit", "forget", "demo",
                    "backtest", "recorder"),
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
    *SERVICE_OPTIONS,
    # -- arm, resume, rollout -------------------------------------------------------------
    Option("key", ("arm", "resume", "rollout"), "your SSH private key, or its .pub when the "
           "private key is in ssh-agent; signed by `ssh-keygen -Y sign -n killswitch`",
           metavar="PATH"),
    Option("roster", ("arm", "resume"), "the roster both operators sign", kind="list",
           metavar="H1,H2,...", derived="the pending request's, else the stored roster (the "
           "last signed one or the aggregator's proposal)"),
    Option("reason", ("arm", "resume", "rollout"), "why (signed and audited)", metavar="TEXT"),
    Option("expires", ("arm", "resume", "rollout", "forget"), "a new pending request expires "
           "after this many seconds", kind="float", default=600.0, bound=S(1.0, DAY), metavar="S"),
    Option("timeout", ("arm", "resume", "kill"), "seconds to wait for every roster host to "
           "confirm", kind="float", default=5.0, bound=S(0.1, 3600.0), metavar="S"),
    # Retired, but still read from every source (flag, KILLSWITCH_APPROVER, the file) so that
    # an old set-up is told why it no longer arms instead of meeting another error first.
    Option("approver", ("arm", "resume"), "retired: approvals are signatures", kind="list",
           repeat=True, hidden=True),
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
    Option("fleet", ("kill", "status", "watch"), f"{_FLEET}: kill proves every roster host of "
           "every node confirmed (exit 3 names the node/host pairs that did not); status and "
           "watch show one line per node", kind="flag", default=False),
    Option("host", _SCOPE_VERBS, "one host only (proof from that host; the rest of the node "
           "is untouched); arm lifts that host's scoped kill", kind="host", metavar="H",
           dest="scope_host", flags_only=True, exclusive="scope"),
    Option("symbol", _SCOPE_VERBS, "one symbol on every host (proof from every roster host); "
           "arm lifts that symbol's scoped kill", metavar="S", dest="scope_symbol",
           flags_only=True, exclusive="scope"),
    Option("fence", ("kill",), "also raise every host's network kill fence (sidecar --fence): "
           "every connection to the venue endpoints refused and cut, cancels included; exit 3 "
           "names a host that did not prove it. The next verified arm lifts it", kind="flag",
           default=False, flags_only=True, dest="net_fence"),
    # -- status, watch --------------------------------------------------------------------
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
    # -- forget ---------------------------------------------------------------------------
    Option("host", ("forget",), "an off-roster host: remove what it left in Redis (audited; a "
           "roster host or one still reporting is refused)", kind="host", metavar="H",
           flags_only=True),
    Option("key", ("forget",), "your SSH key (or its .pub with ssh-agent): remove the node "
           "(--node) from the fleet registry, signed by two operators like arm",
           metavar="PATH"),
    Option("reason", ("forget",), "why (audited; signed with --key)", metavar="TEXT"),
    Option("operator", ("forget",), "with --host: who (audited)", metavar="NAME",
           derived="$USER"),
    # -- demo -----------------------------------------------------------------------------
    Option("plot", ("demo",), "also write a chart of the replay to PATH (.svg or .png): node "
           "and per-host volume, the trip, orders after onset per monitor (needs matplotlib: "
           "the plot extra)", metavar="PATH"),
    Option("realtime", ("demo",), "no time compression: production windows (10 s) and rules, "
           "fast rules on, about two minutes; its figures are real-time figures", kind="flag",
           default=False),
    # -- backtest, export -----------------------------------------------------------------
    Option("counts", ("backtest",), "recorded per-host counts: timestamp,host,count rows "
           "(see `killswitch export`)", metavar="FILE.csv"),
    Option("scenario", ("backtest",), "replay a scenario of the library instead of --counts "
           "(post_burst_flood, runaway_1m, pulse, normal_day_3, ...; docs/ANOMALY.md), from "
           "its own baseline unless --baseline is given", metavar="NAME"),
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
    # -- recorder -------------------------------------------------------------------------
    Option("around", ("recorder",), "only the records from each host's freeze span before its "
           "kill at EPOCH to as long after (a frozen file of that epoch is taken whole)",
           kind="int", bound=N(1, 2**53 - 1), metavar="EPOCH", flags_only=True),
    Option("since", ("recorder",), "only records at or after T (ISO 8601, UTC when no zone "
           "is given, or unix seconds)", metavar="T", flags_only=True),
    Option("until", ("recorder",), "only records at or before T", metavar="T", flags_only=True),
    Option("host", ("recorder",), "only this host (repeatable)", kind="list", repeat=True,
           metavar="H", dest="only_host", flags_only=True),
    Option("csv", ("recorder",), "CSV with a header line instead of the table", kind="flag",
           default=False, flags_only=True),
    # -- loadgen --------------------------------------------------------------------------
    Option("listen", ("loadgen",), "the sidecar's gate address (unix:/path or "
           "tcp:HOST:PORT)", kind="listen1", metavar="ADDR"),
    Option("rate", ("loadgen",), "orders per second", kind="float", default=100.0,
           bound=Bound(0.001, 1e6, "orders/s"), metavar="R"),
    Option("duration", ("loadgen",), "stop after S seconds", kind="float",
           bound=S(0.001, 30 * DAY), metavar="S", unset="run until stopped"),
    Option("name", ("loadgen",), "prefix of order ids", default="router", metavar="NAME"),
    # -- alertsink ------------------------------------------------------------------------
    Option("port", ("alertsink",), "the port Alertmanager's webhook posts to", kind="int",
           default=9095, bound=N(1, 65535), metavar="P", env=""),
    Option("bind", ("alertsink",), "address to bind to (0.0.0.0 to receive from another "
           "container)", kind="bind", default="127.0.0.1", metavar="ADDR", env=""),
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
