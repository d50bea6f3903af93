"""The `killswitch` command: parses, configures logging, calls a plain function, exits.

Exit codes (part of the public interface): 0 done and proven; 1 could not do it (e.g. Redis
unreachable); 2 usage or configuration error; 3 kill recorded but not every roster host
confirmed in time; 4 refused by a safety check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from killswitch import __version__, rulecli
from killswitch.config import (
    DEFAULT_REDIS,
    ConfigError,
    Resolver,
    default_state_dir,
    host_name,
    load_config_file,
    node_name,
    parse_listen,
    positive_float,
    positive_int,
    str_list,
)
from killswitch.control import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Outcome
from killswitch.names import InvalidName, check_roster

if TYPE_CHECKING:  # the services import redis/aiohttp: only loaded when one runs
    from killswitch.aggregator import AggregatorSettings
    from killswitch.loadgen import LoadgenSettings
    from killswitch.sidecar import SidecarSettings

EPILOG = """\
exit codes: 0 done and proven; 1 could not do it (e.g. Redis unreachable); 2 usage or
configuration error; 3 kill recorded but not every roster host confirmed in time;
4 refused by a safety check.
settings: flag, then environment (KILLSWITCH_REDIS_URL, KILLSWITCH_NODE, KILLSWITCH_<FLAG>),
then the TOML config file (--config / KILLSWITCH_CONFIG), then defaults."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's exit code 2 is ours too
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
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
        "--log-format",
        choices=("json", "console"),
        help="log format (default: console on a terminal, else json)",
    )
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
    s.add_argument("--host", help="this host's name on the node's roster")
    s.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="unix:/path or tcp:127.0.0.1:PORT (repeatable)",
    )
    s.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus /metrics on this port"
    )
    s.add_argument(
        "--flush-interval",
        type=float,
        metavar="S",
        help="seconds between Redis round trips (default 0.1)",
    )
    s.add_argument(
        "--stale-after",
        type=float,
        metavar="S",
        help="block all orders when no round trip succeeded for this long (default 1.0)",
    )
    s.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"where the highest seen epoch is kept across restarts (default {default_state_dir()})",
    )

    a = cmd(
        "aggregator",
        "Sum orders across the node's hosts, trip the node-wide kill, watch confirmations.",
    )
    a.add_argument("--hosts", metavar="H1,H2,...", help="the node's roster")
    rulecli.add_rule_flags(a)
    a.add_argument(
        "--metrics-port", type=int, metavar="P", help="serve Prometheus /metrics on this port"
    )
    a.add_argument(
        "--tick", type=float, metavar="S", help="seconds between evaluations (default 0.1)"
    )
    a.add_argument(
        "--confirm-timeout",
        type=float,
        metavar="S",
        help="name unconfirmed hosts after this long (default 5)",
    )
    a.add_argument(
        "--instance",
        metavar="NAME",
        help="this aggregator's name in the leader lease and metrics (default hostname-pid)",
    )
    a.add_argument(
        "--lease-ttl",
        type=float,
        metavar="S",
        help="leader lease: a standby takes over this long after the leader stops (default 2)",
    )
    a.add_argument(
        "--require-durable",
        action="store_true",
        default=None,
        help="refuse to start (exit 2) unless Redis runs with appendonly (use in production)",
    )

    for verb in ("arm", "resume"):
        r = cmd(
            verb,
            "Arm an UNARMED or KILLED node with a new epoch (two distinct approvers; checks first).",
            [json_opt],
        )
        r.add_argument(
            "--approver",
            action="append",
            metavar="NAME",
            help="an approver (give two distinct ones)",
        )
        r.add_argument("--reason", metavar="TEXT", help="why (audited)")
        r.add_argument(
            "--timeout",
            type=float,
            metavar="S",
            help="seconds to wait for every roster host to confirm (default 5)",
        )

    k = cmd(
        "kill", "Kill the node and wait until every roster host confirmed it blocks.", [json_opt]
    )
    k.add_argument("--reason", metavar="TEXT", help="why (audited; required)")
    k.add_argument("--operator", metavar="NAME", help="who (audited; default $USER)")
    k.add_argument(
        "--timeout", type=float, metavar="S", help="seconds to wait for confirmations (default 5)"
    )

    cmd("status", "The node's state now: epoch, roster, who confirmed, who is stale.", [json_opt])

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

    au = cmd("audit", "Who changed what, when and why, oldest first.", [json_opt])
    au.add_argument(
        "--limit", type=int, metavar="N", help="only the newest N entries (still oldest first)"
    )

    cmd(
        "demo",
        "The Knight Capital replay, live: an embedded Redis, eight sidecars, the aggregator and "
        "simulated order routers; prints what a per-host limit, a Prometheus alert and "
        "killswitch did.",
        [json_opt],
    )

    bt = cmd(
        "backtest",
        "Replay recorded per-host counts (timestamp,host,count CSV) through the trip rules in "
        "virtual time; report every trip they would have made. Takes the aggregator's rule flags.",
        [json_opt],
    )
    rulecli.add_backtest_flags(bt)

    ex = cmd(
        "export",
        "Print the node's recorded flow (Redis keeps 15 minutes) as timestamp,host,count CSV "
        "for `killswitch backtest`.",
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"killswitch {args.command}: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except InvalidName as e:
        print(f"killswitch {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    from killswitch import logs

    r, redis_url = _resolve(args, os.environ)
    logs.configure(fmt=r.get("log-format", None, str))
    cmd = args.command
    if cmd == "demo":
        from killswitch.demo import run_demo

        return run_demo(as_json=bool(args.json))
    if cmd == "loadgen":
        return _loadgen(r)
    if cmd == "backtest":
        code, text = rulecli.backtest_command(r, bool(r.get("json", False, bool)))
        print(text)
        return code
    node = r.require("node", node_name)
    if cmd == "export":
        return _export(r, node, redis_url)
    if cmd == "sidecar":
        return _sidecar(r, node, redis_url)
    if cmd == "aggregator":
        return _aggregator(r, node, redis_url)
    if cmd == "watch":
        return _watch(r, node, redis_url)
    return _operator(cmd, r, node, redis_url, bool(r.get("json", False, bool)))


def _resolve(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Resolver, str]:
    """The command's settings resolver (flag, env, config file) and its Redis URL."""
    config = load_config_file(args.config or env.get("KILLSWITCH_CONFIG"))
    r = Resolver(vars(args), env=env, config=config, section=args.command)
    redis_url = Resolver(
        {"redis_url": args.redis}, env=env, config=config, section=args.command
    ).get("redis-url", config.get("redis", DEFAULT_REDIS), str)
    return r, redis_url


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> SidecarSettings | AggregatorSettings | LoadgenSettings:
    """What `sidecar`, `aggregator` or `loadgen` would run with: resolved and validated
    exactly as the command does (ConfigError / InvalidName on a bad value), nothing started."""
    r, redis_url = _resolve(args, os.environ if env is None else env)
    if args.command == "loadgen":
        return loadgen_settings(r)
    node = r.require("node", node_name)
    if args.command == "sidecar":
        return sidecar_settings(r, node, redis_url)
    if args.command == "aggregator":
        return aggregator_settings(r, node, redis_url)
    raise ConfigError(f"{args.command} is not a service command")


def _sidecar(r: Resolver, node: str, redis_url: str) -> int:
    from killswitch.sidecar import run_sidecar

    settings = sidecar_settings(r, node, redis_url)
    if settings.state_dir:
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(run_sidecar(settings))
    return EXIT_OK


def sidecar_settings(r: Resolver, node: str, redis_url: str) -> SidecarSettings:
    from killswitch.sidecar import SidecarSettings

    listen = tuple(parse_listen(x) for x in r.require("listen", str_list))
    settings = SidecarSettings(
        node=node,
        host=r.require("host", host_name),
        redis_url=redis_url,
        listen=listen,
        metrics_port=r.get("metrics-port", None, int),
        flush_interval=r.get("flush-interval", 0.1, positive_float),
        stale_after=r.get("stale-after", 1.0, positive_float),
        state_dir=r.get("state-dir", default_state_dir(), str),
    )
    if settings.flush_interval >= settings.stale_after:
        raise ConfigError(
            "flush-interval must be shorter than stale-after, or every gate goes stale"
        )
    return settings


def loadgen_settings(r: Resolver) -> LoadgenSettings:
    from killswitch.loadgen import LoadgenSettings

    return LoadgenSettings(
        address=str(parse_listen(r.require("listen", str))),
        rate=r.get("rate", 100.0, positive_float),
        duration=r.get("duration", None, positive_float),
        name=r.get("name", "router", str),
    )


def _loadgen(r: Resolver) -> int:
    from killswitch.loadgen import run_loadgen

    s = loadgen_settings(r)
    stats = asyncio.run(run_loadgen(s.address, s.rate, s.duration, s.name))
    print(json.dumps({"sent": stats.sent, "allowed": stats.allowed, "blocked": stats.blocked,
                      "errors": stats.errors}))  # fmt: skip
    return EXIT_OK


def _aggregator(r: Resolver, node: str, redis_url: str) -> int:
    from killswitch.aggregator import NotDurable, run_aggregator

    settings = aggregator_settings(r, node, redis_url)
    try:
        asyncio.run(run_aggregator(settings))
    except NotDurable as e:
        print(f"killswitch aggregator: refused: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def aggregator_settings(r: Resolver, node: str, redis_url: str) -> AggregatorSettings:
    from killswitch.aggregator import AggregatorSettings, default_instance

    try:
        hosts = check_roster(r.require("hosts", str_list))
    except InvalidName as e:
        raise ConfigError(f"hosts: {e}") from None
    monitor = rulecli.rule_config(r)
    return AggregatorSettings(
        node=node,
        redis_url=redis_url,
        hosts=hosts,
        monitor=monitor,
        metrics_port=r.get("metrics-port", None, int),
        tick=r.get("tick", 0.1, positive_float),
        confirm_timeout=r.get("confirm-timeout", 5.0, positive_float),
        lease_ttl=r.get("lease-ttl", 2.0, positive_float),
        require_durable=r.get("require-durable", False, _truthy),
        instance=r.get("instance", "", str) or default_instance(),
    )


def _watch(r: Resolver, node: str, redis_url: str) -> int:
    from killswitch.watch import watch

    interval = r.get("interval", 0.5, positive_float)
    once = bool(r.get("once", False, _truthy))
    return asyncio.run(watch(redis_url, node, interval=interval, once=once))


def _truthy(v: Any) -> bool:
    """A yes/no setting: a flag's True, or 1/true/yes/on from the environment or TOML."""
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
    return word in ("1", "true", "yes", "on")


def _export(r: Resolver, node: str, redis_url: str) -> int:
    from redis.exceptions import RedisError

    hosts = r.get("hosts", None, str_list)
    try:
        flows = asyncio.run(
            rulecli.export_flows(redis_url, node, check_roster(hosts) if hosts else None)
        )
    except (RedisError, OSError) as e:
        print(f"killswitch export: cannot reach Redis at {redis_url}: {e}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(rulecli.counts_csv(flows, attempted=bool(r.get("attempted", False, bool))))
    return EXIT_OK


def _operator(cmd: str, r: Resolver, node: str, redis_url: str, as_json: bool) -> int:
    from killswitch import control, render

    action: Callable[[Any], Awaitable[Outcome]]
    if cmd == "kill":
        reason = r.require("reason", str, " (say why: it is audited)")
        operator = r.get("operator", os.environ.get("USER") or "unknown", str)
        timeout = r.get("timeout", 5.0, positive_float)

        def action(s: Any) -> Awaitable[Outcome]:
            return control.kill(s, reason=reason, operator=operator, timeout=timeout)

    elif cmd in ("arm", "resume"):
        approvers: list[str] = r.get("approver", [], str_list)
        reason = r.get("reason", "", str)
        timeout = r.get("timeout", 5.0, positive_float)

        def action(s: Any) -> Awaitable[Outcome]:
            return control.arm(s, approvers=approvers, reason=reason, timeout=timeout)

    elif cmd == "status":
        action = control.status
    elif cmd == "audit":
        limit = r.get("limit", None, positive_int)

        def action(s: Any) -> Awaitable[Outcome]:
            return control.audit(s, limit)

    else:  # pragma: no cover - argparse restricts the verbs
        raise ConfigError(f"unknown command {cmd}")
    # An operator command never hangs: its own wait plus a margin for Redis round trips.
    budget = (
        r.get("timeout", 5.0, positive_float) + 15.0 if cmd in ("kill", "arm", "resume") else 15.0
    )
    outcome = asyncio.run(_with_store(redis_url, node, action, budget))
    if outcome.code == EXIT_FAILED and not outcome.report:
        print(outcome.message, file=sys.stderr)
        return outcome.code
    if as_json:
        print(json.dumps(outcome.report, sort_keys=False))
        if outcome.message and outcome.code != EXIT_OK:
            print(outcome.message, file=sys.stderr)
    else:
        print(render.human(cmd, outcome))
    return outcome.code


async def _with_store(
    redis_url: str, node: str, action: Callable[[Any], Awaitable[Outcome]], budget: float
) -> Outcome:
    from redis.exceptions import RedisError

    from killswitch.redisconn import connect
    from killswitch.store import Store

    redis = connect(redis_url, socket_timeout=3.0, client_name=f"ks-cli-{node}")
    try:
        async with asyncio.timeout(budget):
            return await action(Store(redis, node))
    except TimeoutError:
        return Outcome(
            EXIT_FAILED,
            {},
            f"killswitch: gave up after {budget:g}s talking to Redis at {redis_url}.\n"
            "A kill may or may not have been recorded: run `killswitch status` to see.\n"
            "Every sidecar that cannot reach Redis blocks all orders by itself within its\n"
            "--stale-after; to stop trading without Redis, stop each order router or sidecar.",
        )
    except (RedisError, OSError) as e:
        return Outcome(
            EXIT_FAILED,
            {},
            f"killswitch: cannot reach Redis at {redis_url}: {type(e).__name__}: {e}\n"
            "The command did not complete (run `killswitch status` once Redis answers).\n"
            "What to do instead:\n"
            "  - every sidecar that cannot reach Redis blocks all orders by itself within its\n"
            "    --stale-after (default 1s), so a fleet cut off from Redis is already blocked;\n"
            "  - if the fleet can still reach Redis but you cannot, run this from a host that\n"
            "    can (or fix --redis / KILLSWITCH_REDIS_URL);\n"
            "  - to stop trading without Redis, stop each order router or its sidecar process.",
        )
    finally:
        await redis.aclose()
