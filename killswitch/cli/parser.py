"""The `killswitch` command line: every verb and flag, and nothing else.

Flags default to None ("not given") so that `config.Resolver` can apply the precedence
flag, environment, config file, default. Exit code 2 for usage errors is argparse's own.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from killswitch.cli import serviceflags
from killswitch.core.version import __version__
from killswitch.ops.control import EXIT_USAGE
from killswitch.runtime.config import DEFAULT_REDIS

EPILOG = """\
exit codes: 0 done and proven; 1 could not do it (e.g. Redis unreachable); 2 usage or
configuration error; 3 kill recorded but not every roster host confirmed in time;
4 refused by a safety check (e.g. a key not in the operators file); 5 recorded and pending:
it waits for a second, distinct operator.
settings: flag, then environment (KILLSWITCH_REDIS_URL, KILLSWITCH_NODE, KILLSWITCH_<FLAG>),
then the TOML config file (--config / KILLSWITCH_CONFIG), then defaults."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's exit code 2 is ours too
        # One line, like every other refusal; the usage is one `--help` away.
        text = message.encode("unicode_escape", "backslashreplace").decode("ascii")
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every verb and flag; with `only` (the verb being run), the other verbs' rule flags are
    left off, so a verb that has none (`kill`) does not import the trip rules to parse."""

    def wants(name: str) -> bool:
        return only is None or only == name

    common: Any = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("common options")
    g.add_argument(
        "--redis",
        metavar="URL",
        help=f"Redis URL (env KILLSWITCH_REDIS_URL; default {DEFAULT_REDIS}); redis+sentinel://h1:p1,h2:p2/service also works",
    )
    g.add_argument("--node", metavar="NAME", help="logical node (env KILLSWITCH_NODE)")
    g.add_argument("--config", metavar="PATH", help="TOML config file (env KILLSWITCH_CONFIG)")
    g.add_argument(
        "--operators",
        metavar="PATH",
        help="the operators' public keys, an OpenSSH allowed-signers file: one line "
        '`<principal> namespaces="killswitch" <key-type> <base64>` per key (env '
        "KILLSWITCH_OPERATORS). Sidecars and aggregators open/treat as armed only arms "
        "signed by two of them; without it a sidecar never opens",
    )
    g.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="log format (default: console on a terminal, else json)",
    )
    bound_opt = argparse.ArgumentParser(add_help=False)
    bound_opt.add_argument(
        "--stale-after", type=float, metavar="S",
        help="the node's liveness bound: a host silent this long is not alive, whatever it "
        "claims (default 1.0; the sidecars' setting of the same name, so one config sets both)",
    )  # fmt: skip
    json_opt = argparse.ArgumentParser(add_help=False)
    json_opt.add_argument(
        "--json", action="store_true", default=None, help="print one JSON object on stdout"
    )

    p = _Parser(
        prog="killswitch",
        description="Cluster-wide kill switch and aggregate order-volume monitor for trading fleets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"killswitch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def cmd(name: str, help_: str, parents: Sequence[Any] = ()) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help_, description=help_, parents=[common, *parents], epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip

    s = cmd(
        "sidecar",
        "Serve the gate for one host: count orders, sync with Redis, enforce the node state.",
    )
    serviceflags.sidecar_flags(s)

    a = cmd(
        "aggregator",
        "Sum orders across the node's hosts, trip the node-wide kill, watch confirmations.",
    )
    serviceflags.aggregator_flags(a, wants("aggregator"))

    for verb in ("arm", "resume"):
        r = cmd(
            verb,
            "Arm an UNARMED or KILLED node with a new epoch: two operators each run this with "
            "their own key. The first call records a signed request and exits 5; a second, "
            "distinct operator of the operators file completes it (exit 0). Refused (4) while a "
            "roster host is not reporting, while the roster runs a release it may not (split, "
            "or a release no signed rollout named), or for a key not in the operators file.",
            [json_opt, bound_opt],
        )
        r.add_argument(
            "--key",
            metavar="PATH",
            help="your SSH private key, or its .pub when the private key is in ssh-agent "
            "(env KILLSWITCH_KEY); signed by `ssh-keygen -Y sign -n killswitch`",
        )
        r.add_argument(
            "--roster",
            metavar="H1,H2,...",
            help="the roster both operators sign (default: the pending request's, else the "
            "stored roster, i.e. the last signed one or the aggregator's proposal)",
        )
        r.add_argument("--reason", metavar="TEXT", help="why (signed and audited)")
        r.add_argument(
            "--expires",
            type=float,
            metavar="S",
            help="a new request expires after this many seconds (default 600; 1..86400)",
        )
        _scope_flags(r, "lift the scoped kill of (signed by two operators like a node arm)")
        r.add_argument(
            "--timeout",
            type=float,
            metavar="S",
            help="seconds to wait for every roster host to confirm (default 5)",
        )
        r.add_argument("--approver", action="append", help=argparse.SUPPRESS)

    from killswitch.cli import rolloutcli

    rolloutcli.add_parser(cmd, [json_opt, bound_opt])

    k = cmd(
        "kill",
        "Kill the node and wait until every roster host confirmed it blocks.",
        [json_opt, bound_opt],
    )
    k.add_argument("--reason", metavar="TEXT", help="why (audited; required)")
    k.add_argument("--operator", metavar="NAME", help="who (audited; default $USER)")
    _scope_flags(k, "kill only")
    k.add_argument(
        "--key",
        metavar="PATH",
        help="optional: your SSH key (or its .pub with ssh-agent); the kill is then recorded as "
        "by the principal whose signature verifies against --operators. A kill never needs "
        "it and never waits more than 2 s for it (unsigned if signing fails)",
    )
    k.add_argument(
        "--timeout", type=float, metavar="S", help="seconds to wait for confirmations (default 5)"
    )
    fleet_help = "every node of the fleet (every node registered in this Redis), not one --node"
    k.add_argument(
        "--fleet",
        action="store_true",
        default=None,
        help=f"kill {fleet_help}; proven when every roster host of every node confirmed "
        "(exit 3 names the node/host pairs that did not)",
    )

    st = cmd(
        "status",
        "The node's state now: epoch, roster, who confirmed, who is stale.",
        [json_opt, bound_opt],
    )
    st.add_argument(
        "--fleet", action="store_true", default=None, help=f"one line per node: {fleet_help}"
    )

    w = cmd(
        "watch",
        "A live terminal view of the node: state, epoch, volume vs limit, every host's rate and "
        "confirmation, stale hosts highlighted. Read-only; q or Ctrl-C quits (exit 0).",
    )
    w.add_argument(
        "--interval", type=float, metavar="S", help="seconds between redraws (default 0.5)"
    )
    w.add_argument(
        "--once", action="store_true", default=None, help="print one frame and exit (scripts)"
    )
    w.add_argument(
        "--fleet", action="store_true", default=None, help=f"one line per node: {fleet_help}"
    )

    au = cmd(
        "audit",
        "Who changed what, when and why, oldest first, refused attempts included. Entries are "
        "hash-chained; operator text is shown escaped (control characters visible).",
        [json_opt],
    )
    au.add_argument(
        "--limit", type=int, metavar="N", help="only the newest N entries (still oldest first)"
    )
    au.add_argument(
        "--verify",
        action="store_true",
        default=None,
        help="check the hash chain: exit 0 when whole, 4 naming the first entry altered, "
        "removed or inserted (or a cut-off tail)",
    )
    au.add_argument(
        "--file",
        metavar="PATH",
        help="with --verify: also verify an aggregator's local copy (--audit-log) and that "
        "Redis still holds every entry of it",
    )

    dm = cmd(
        "demo",
        "The Knight Capital replay, live: an embedded Redis, eight sidecars, the aggregator and "
        "simulated order routers; prints what a per-host limit, a Prometheus alert and "
        "killswitch did, and the resting orders each left working. Time-compressed by default "
        "(~35 s; 1 s windows stand for 10 s, so its times are a tenth of production's for the "
        "window rules).",
        [json_opt],
    )
    dm.add_argument(
        "--plot", metavar="PATH", default=None,
        help="also write a chart of the replay to PATH (.svg or .png): node and per-host "
        "volume, the trip, orders after onset per monitor (needs matplotlib: the plot extra)",
    )  # fmt: skip
    dm.add_argument(
        "--realtime", action="store_true", default=None,
        help="no time compression: production windows (10 s) and rules, fast rules on, about "
        "two minutes; its figures are real-time figures",
    )  # fmt: skip
    dm.add_argument(
        "--on-haunted", choices=("kill", "isolate"), default=None,
        help="the aggregator's --on-haunted for this replay: kill the node (default) or only "
        "the haunted host",
    )  # fmt: skip

    bt = cmd(
        "backtest",
        "Replay recorded per-host counts (timestamp,host,count CSV) through the trip rules in "
        "virtual time; report every trip they would have made. Takes the aggregator's rule flags.",
        [json_opt],
    )
    if wants("backtest"):
        from killswitch.cli import rulecli

        rulecli.add_backtest_flags(bt)

    ex = cmd(
        "export",
        "Print the node's recorded flow (Redis keeps 15 minutes) as timestamp,host,count CSV "
        "for `killswitch backtest`.",
    )
    if wants("export"):
        from killswitch.cli import rulecli

        rulecli.add_export_flags(ex)

    lg = cmd(
        "loadgen", "A simulated order router: sends ORDER lines to a sidecar's gate at a rate."
    )
    lg.add_argument(
        "--listen", metavar="ADDR", help="the sidecar's gate address (unix:/path or tcp:HOST:PORT)"
    )
    lg.add_argument("--rate", type=float, metavar="R", help="orders per second (default 100)")
    lg.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds (default: run until stopped)",
    )
    lg.add_argument("--name", metavar="NAME", help="prefix of order ids (default router)")
    return p


def _scope_flags(p: argparse.ArgumentParser, verb: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--host", dest="scope_host", metavar="H",
        help=f"{verb} one host (proof from that host; the rest of the node is untouched)",
    )  # fmt: skip
    g.add_argument(
        "--symbol", dest="scope_symbol", metavar="S",
        help=f"{verb} one symbol on every host (proof from every roster host)",
    )  # fmt: skip
