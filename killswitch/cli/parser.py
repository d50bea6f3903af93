"""The `killswitch` command line, produced from the table of options (`core.settings.options`).

Every flag of every verb comes from that table; this module only lays them out: the verbs
and their one-line descriptions, the help text with each option's real default, range and
environment variable, and the refusals argparse makes (exit 2, one line). Flags default to
None ("not given") so that `config.Resolver` can apply the precedence flag, environment,
config file, default. No abbreviations: `--rea` is refused naming `--reason`.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Sequence
from typing import Any, NoReturn

from killswitch.cli import examples
from killswitch.core.settings.options import VERBS, Option, closest, options_of
from killswitch.core.version import __version__

EXIT_USAGE = 2  # as ops.control's: usage or configuration error

EPILOG = """\
exit codes: 0 done and proven; 1 could not do it (e.g. Redis unreachable); 2 usage or
configuration error; 3 kill recorded but not every roster host confirmed in time;
4 refused by a safety check (e.g. a key not in the operators file); 5 recorded and pending:
it waits for a second, distinct operator.
settings: flag, then environment (each option's env variable), then the TOML config file
(--config / KILLSWITCH_CONFIG; `killswitch config --check` validates it), then defaults."""

_ARM = (
    "Arm an UNARMED or KILLED node with a new epoch: two operators each run this with their "
    "own key. The first call records a signed request and exits 5; a second, distinct "
    "operator of the operators file completes it (exit 0). Refused (4) while a roster host is "
    "not reporting, while the roster runs a release it may not (split, or a release no signed "
    "rollout named), or for a key not in the operators file."
)
DESCRIPTIONS = {
    "sidecar": "Serve the gate for one host: count orders, sync with Redis, enforce the node "
    "state.",
    "aggregator": "Sum orders across the node's hosts, trip the node-wide kill, watch "
    "confirmations.",
    "arm": _ARM,
    "resume": _ARM,
    "rollout": "Signed, staged rollouts: `--release DIGEST --hosts H1,H2` begins a canary "
    "(those hosts may run the new release while armed, the rest may not), `--promote` lets "
    "every host run it (it completes once all do), `--abort` ends it. Each step is signed by "
    "two operators like arm: the first call exits 5 (pending), a second, distinct operator's "
    "call completes it (0); `--key` alone co-signs the pending step. Without --key: show the "
    "rollout.",
    "kill": "Kill the node and wait until every roster host confirmed it blocks.",
    "status": "The node's state now: epoch, roster, who confirmed, who is stale.",
    "watch": "A live terminal view of the node: state, epoch, volume vs limit, every host's "
    "rate and confirmation, stale hosts highlighted. Read-only; q or Ctrl-C quits (exit 0).",
    "audit": "Who changed what, when and why, oldest first, refused attempts included. Entries "
    "are hash-chained; operator text is shown escaped (control characters visible).",
    "forget": "Remove what was left behind. `--host H`: the keys an off-roster host left in "
    "Redis (audited; refused, 4, for a roster host or one still reporting). `--key K` (with "
    "--node): remove the node from the fleet registry, signed by two operators like arm: the "
    "first call exits 5 (pending), a second, distinct operator's call completes it (0); a key "
    "not in the operators file is refused (4), and so is a node that is still alive. Nothing "
    "else removes a node from what `kill --fleet` covers.",
    "demo": "The Knight Capital replay, live: an embedded Redis, eight sidecars, the aggregator "
    "and simulated order routers; prints what a per-host limit, a Prometheus alert and "
    "killswitch did, and the resting orders each left working. Time-compressed by default "
    "(~35 s; 1 s windows stand for 10 s, so its times are a tenth of production's for the "
    "window rules).",
    "backtest": "Replay recorded per-host counts (timestamp,host,count CSV) through the trip "
    "rules in virtual time; report every trip they would have made. Takes the aggregator's "
    "rule flags, with the aggregator's defaults (its derived static cap included).",
    "export": "Print the node's recorded flow (Redis keeps 15 minutes) as timestamp,host,count "
    "CSV for `killswitch backtest`.",
    "recorder": "Merge flight recorder files of several hosts into one timeline, oldest first: "
    "every gate decision with its reason, epoch and release (docs/RECORDER.md). Without FILE, "
    "--node N pulls every host's ring from its sidecar's metrics port (GET /recorder).",
    "loadgen": "A simulated order router: sends ORDER lines to a sidecar's gate at a rate.",
    "alertsink": "An Alertmanager webhook receiver (the compose stack's): keeps the "
    "notifications it gets and serves them back on GET /alerts; logs ALERT_RECEIVED per alert.",
    "config": "Check the config file: every key known, every value valid for every verb (or "
    "VERB); prints each resolved setting and where it came from.",
}
GROUPS = {
    "common": ("common options", None),
    "trip rules": (
        "trip rules",
        "The node is killed when any enforcing rule trips. Counts are orders across the node "
        "within one --window; see docs/ANOMALY.md.",
    ),
    "limit-burst rule": (
        "limit-burst rule",
        "Kill the node when the hosts' local --limits refuse more than N orders within "
        "--limit-window on at least --limit-min-hosts hosts (off unless N is given).",
    ),
    "network fence": (
        "network fence",
        "nftables rules (table inet killswitch) so that only the allowed uids reach the venue "
        "endpoints; needs CAP_NET_ADMIN (docs/CONTAINMENT.md#the-network-fence).",
    ),
}


def help_text(o: Option) -> str:
    """An option's help: what it does, its real default, its range and its variable."""
    notes = []
    if o.default_text():
        notes.append(f"default {o.default_text()}")
    if o.bound is not None:
        notes.append(o.bound.describe())
    if o.env_var:
        notes.append(f"env {o.env_var}")
    return f"{o.help} ({'; '.join(notes)})" if notes else o.help


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps between words only (`host_share` is never cut in two) and fills in the rule
    causes, which are only imported when help is printed."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        text = " ".join(text.split())
        return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # laid out by hand (the epilog)
            return super()._fill_text(text, width, indent)
        lines = textwrap.wrap(
            " ".join(text.split()), width, break_long_words=False, break_on_hyphens=False
        )
        return "\n".join(indent + line for line in lines)

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        if "{causes}" in text:
            from killswitch.core.rules.config import CAUSES

            text = text.replace("{causes}", ", ".join(CAUSES))
        return text


class _Parser(argparse.ArgumentParser):
    verbs: dict[str, argparse.ArgumentParser]

    def error(self, message: str) -> NoReturn:  # argparse's exit code 2 is ours too
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            near = closest(m[1], re.findall(r"'([^']*)'", m[2]))
            message += f"; did you mean {near!r}?" if near else ""
        # One line, like every other refusal; the usage is one `--help` away.
        text = message.encode("unicode_escape", "backslashreplace").decode("ascii")
        self.exit(EXIT_USAGE, f"{self.prog}: error: {text} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            verb = getattr(ns, "command", None)
            parser = getattr(self, "verbs", {}).get(verb, self)
            parser.error(unknown_message(parser, extras))
        return ns


def unknown_message(parser: argparse.ArgumentParser, extras: Sequence[str]) -> str:
    """argparse's "unrecognized arguments", naming the flag each unknown one most likely
    meant (a prefix is refused: no abbreviations on a safety CLI)."""
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for arg in extras:
        flag = arg.split("=", 1)[0]
        if not flag.startswith("--"):
            continue
        near = closest(flag, known)
        if near and near.startswith(flag):
            hints.append(f"{flag} is not {near}: flags are never abbreviated")
        elif near:
            hints.append(f"did you mean {near} for {flag}?")
    return f"unrecognized arguments: {' '.join(extras)}" + (
        f"; {'; '.join(hints)}" if hints else ""
    )


def add_options(p: argparse.ArgumentParser, verb: str) -> None:
    """The flags of `verb`, from the table."""
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for o in options_of(verb):
        target: Any = p
        if o.group:
            if o.group not in groups:
                title, description = GROUPS[o.group]
                groups[o.group] = p.add_argument_group(title, description)
            target = groups[o.group]
        if o.exclusive:
            if o.exclusive not in exclusive:
                exclusive[o.exclusive] = target.add_mutually_exclusive_group()
            target = exclusive[o.exclusive]
        kw: dict[str, Any] = {
            "dest": o.attr,
            "default": None,
            "help": argparse.SUPPRESS if o.hidden else help_text(o).replace("%", "%%"),
        }
        if o.is_flag:
            kw["action"] = "store_true"
        else:
            kw["metavar"] = o.metavar or ("{" + ",".join(o.choices) + "}" if o.choices else None)
            if o.repeat:
                kw["action"] = "append"
        target.add_argument(f"--{o.name}", **kw)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Every verb and flag; with `only` (the verb being run), the other verbs' flags are
    left off (they cannot be given to this run)."""
    p = _Parser(
        prog="killswitch",
        description="Cluster-wide kill switch and aggregate order-volume monitor for trading "
        "fleets.",
        epilog=EPILOG,
        formatter_class=_Formatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"killswitch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p.verbs = {}
    for verb in VERBS:
        sp = sub.add_parser(
            verb, help=DESCRIPTIONS[verb], description=DESCRIPTIONS[verb],
            epilog=examples.section(verb) + EPILOG,
            formatter_class=_Formatter, allow_abbrev=False,
        )  # fmt: skip
        p.verbs[verb] = sp
        if only in (None, verb) or only not in VERBS:
            add_options(sp, verb)
            if verb == "recorder":
                sp.add_argument("files", nargs="*", metavar="FILE", help="recorder files to merge")
            if verb == "config":
                sp.add_argument(
                    "verb", nargs="?", choices=[v for v in VERBS if v != "config"],
                    metavar="VERB", help="check only this verb's settings (default: every verb)",
                )  # fmt: skip
    return p
