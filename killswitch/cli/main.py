"""The `killswitch` command: parses, configures logging, calls a plain function, exits.

The flags live in `cliparser`; this module resolves them into settings (flag, environment,
config file, default) and calls the plain function behind each verb.

Exit codes (part of the public interface): 0 done and proven; 1 could not do it (e.g. Redis
unreachable); 2 usage or configuration error; 3 kill recorded but not every roster host
confirmed in time; 4 refused by a safety check; 5 recorded and pending a second operator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from killswitch.cli.parser import build_parser
from killswitch.core.names import InvalidName, check_roster
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Outcome
from killswitch.runtime.config import (
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

__all__ = ["build_parser", "main", "settings_from_args"]

if TYPE_CHECKING:  # the services import redis/aiohttp: only loaded when one runs
    from killswitch.aggregator.settings import AggregatorSettings
    from killswitch.sidecar.settings import SidecarSettings
    from killswitch.sim.loadgen import LoadgenSettings
    from killswitch.store.lean import LeanURL

# Verbs that must start fast: they log nothing (structlog and rich cost more than the kill
# itself) and, for the URL forms `store.lean` reads, talk to Redis without redis-py or asyncio.
FAST_VERBS = ("kill", "status")


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = argv[0] if argv and not argv[0].startswith("-") else None
    parser = build_parser(verb)
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
    r, redis_url = _resolve(args, os.environ)
    log_format = r.get("log-format", None, str)
    cmd = args.command
    if cmd not in FAST_VERBS:
        from killswitch.runtime import logs

        logs.configure(fmt=log_format)
    if cmd == "demo":
        from killswitch.sim.demo import run_demo

        return run_demo(as_json=bool(args.json), realtime=bool(args.realtime))
    if cmd == "loadgen":
        return _loadgen(r)
    if cmd == "backtest":
        from killswitch.cli import rulecli

        code, text = rulecli.backtest_command(r, bool(r.get("json", False, bool)))
        print(text)
        return code
    if cmd in ("kill", "status", "watch") and r.get("fleet", False, bool):
        from killswitch.cli import fleetcli

        if cmd == "watch":
            return fleetcli.watch(r, redis_url)
        return fleetcli.run(cmd, r, redis_url, bool(r.get("json", False, bool)))
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
    import asyncio

    from killswitch.sidecar.service import run_sidecar

    settings = sidecar_settings(r, node, redis_url)
    if settings.state_dir:
        Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    asyncio.run(run_sidecar(settings))
    return EXIT_OK


def sidecar_settings(r: Resolver, node: str, redis_url: str) -> SidecarSettings:
    from killswitch.runtime.limitsfile import load_limits
    from killswitch.sidecar.settings import SidecarSettings

    listen = tuple(parse_listen(x) for x in r.require("listen", str_list))
    limits_path = r.get("limits", "", str)
    limits, limits_digest = load_limits(limits_path) if limits_path else (None, "")
    settings = SidecarSettings(
        node=node,
        host=r.require("host", host_name),
        redis_url=redis_url,
        listen=listen,
        metrics_port=r.get("metrics-port", None, int),
        flush_interval=r.get("flush-interval", 0.1, positive_float),
        stale_after=r.get("stale-after", 1.0, positive_float),
        state_dir=r.get("state-dir", default_state_dir(), str),
        operators=_operators_path(r),
        limits=limits,
        limits_digest=limits_digest,
        on_kill=r.get("on-kill", "", str),
        attest=tuple(r.get("attest", [], str_list)),
        attest_interval=r.get("attest-interval", 2.0, positive_float),
    )
    if settings.flush_interval >= settings.stale_after:
        raise ConfigError(
            "flush-interval must be shorter than stale-after, or every gate goes stale"
        )
    return settings


def _operators_path(r: Resolver) -> str:
    """The --operators path; the service loads it at start (a bad file: exit 2)."""
    return r.get("operators", "", str)


def loadgen_settings(r: Resolver) -> LoadgenSettings:
    from killswitch.sim.loadgen import LoadgenSettings

    return LoadgenSettings(
        address=str(parse_listen(r.require("listen", str))),
        rate=r.get("rate", 100.0, positive_float),
        duration=r.get("duration", None, positive_float),
        name=r.get("name", "router", str),
    )


def _loadgen(r: Resolver) -> int:
    import asyncio

    from killswitch.sim.loadgen import run_loadgen

    s = loadgen_settings(r)
    stats = asyncio.run(run_loadgen(s.address, s.rate, s.duration, s.name))
    print(json.dumps({"sent": stats.sent, "allowed": stats.allowed, "blocked": stats.blocked,
                      "errors": stats.errors}))  # fmt: skip
    return EXIT_OK


def _aggregator(r: Resolver, node: str, redis_url: str) -> int:
    import asyncio

    from killswitch.aggregator.service import NotDurable, run_aggregator

    settings = aggregator_settings(r, node, redis_url)
    try:
        asyncio.run(run_aggregator(settings))
    except NotDurable as e:
        print(f"killswitch aggregator: refused: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def aggregator_settings(r: Resolver, node: str, redis_url: str) -> AggregatorSettings:
    from killswitch.aggregator.settings import AggregatorSettings, default_instance
    from killswitch.cli import rulecli
    from killswitch.core.limitburst import LimitBurstConfig

    try:
        hosts = check_roster(r.require("hosts", str_list))
    except InvalidName as e:
        raise ConfigError(f"hosts: {e}") from None
    monitor = rulecli.rule_config(r)
    max_refusals = r.get("max-limit-refusals", None, positive_int)
    limit_burst = (
        LimitBurstConfig(
            max_refusals,
            int(r.get("limit-window", 1.0, positive_float) * 1000),
            r.get("limit-min-hosts", 2, positive_int),
        )
        if max_refusals is not None
        else None
    )
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
        fleet_max_orders=r.get("fleet-max-orders", None, positive_int),
        instance=r.get("instance", "", str) or default_instance(),
        operators=_operators_path(r),
        limit_burst=limit_burst,
        on_haunted=r.get("on-haunted", "kill", _on_haunted),
        audit_log=r.get("audit-log", str(Path(default_state_dir()) / f"audit-{node}.jsonl"), str),
    )


def _watch(r: Resolver, node: str, redis_url: str) -> int:
    import asyncio

    from killswitch.cli.watch import watch

    interval = r.get("interval", 0.5, positive_float)
    once = bool(r.get("once", False, _truthy))
    return asyncio.run(watch(redis_url, node, interval=interval, once=once))


def _on_haunted(v: Any) -> str:
    if v not in ("kill", "isolate"):
        raise ValueError("isolate or kill")
    return str(v)


def _scope(r: Resolver) -> tuple[str, str] | None:
    """The scope flag of kill/arm, read from the flags only: a scope is never a default."""
    host, symbol = r.flags.get("scope_host"), r.flags.get("scope_symbol")
    if host:
        return ("host", host_name(host))
    if symbol:
        return ("symbol", symbol)
    return None


def _truthy(v: Any) -> bool:
    """A yes/no setting: a flag's True, or 1/true/yes/on from the environment or TOML."""
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
    return word in ("1", "true", "yes", "on")


def _export(r: Resolver, node: str, redis_url: str) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from killswitch.cli import rulecli

    hosts = r.get("hosts", None, str_list)
    try:
        flows = asyncio.run(
            rulecli.export_flows(redis_url, node, check_roster(hosts) if hosts else None)
        )
    except (RedisError, OSError) as e:
        from killswitch.store.redisurl import redact

        print(f"killswitch export: cannot reach Redis at {redact(redis_url)}: {e}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.write(rulecli.counts_csv(flows, attempted=bool(r.get("attempted", False, bool))))
    return EXIT_OK


def _operator(cmd: str, r: Resolver, node: str, redis_url: str, as_json: bool) -> int:
    from killswitch.cli import render
    from killswitch.ops import control

    action: Callable[[Any], Awaitable[Outcome]]
    scope = _scope(r)
    if cmd == "kill":
        reason = r.require("reason", str, " (say why: it is audited)")
        operator = r.get("operator", os.environ.get("USER") or "unknown", str)
        timeout = r.get("timeout", 5.0, positive_float)
        kill_key = r.get("key", "", str)
        ops_path = r.get("operators", "", str) if kill_key else ""

        who, note = operator, ""
        if kill_key:
            # Signed here, before the Redis work: the lean transport that runs kill has no
            # event loop, and signing (a subprocess, at most 2 s) needs one.
            import asyncio

            from killswitch.ops import arming

            who, note = asyncio.run(arming.kill_actor(node, kill_key, ops_path, operator, reason))

        async def action(s: Any) -> Outcome:
            if scope is not None:
                from killswitch.ops.scope import kill_scope

                out = await kill_scope(
                    s, kind=scope[0], value=scope[1], reason=reason, operator=who,
                    timeout=timeout,
                )  # fmt: skip
            else:
                out = await control.kill(s, reason=reason, operator=who, timeout=timeout)
            out.report["signed_by"] = who if kill_key and not note else ""
            if note:
                out.message = f"{note}\n{out.message}".rstrip()
            return out

    elif cmd in ("arm", "resume"):
        from killswitch.ops import arming
        from killswitch.runtime.operators import load_operators

        if r.get("approver", None, str_list):
            raise ConfigError(
                "approver: --approver is gone: approvals are signatures now. Each operator runs "
                "`killswitch arm --key PATH-TO-THEIR-SSH-KEY` (with --operators naming the "
                "operators file); the second distinct operator's call arms the node"
            )
        key = r.require("key", str, " (your SSH key: arming is signed)")
        operators = load_operators(
            r.require("operators", str, " (the operators' allowed-signers file)")
        )
        roster_arg = r.get("roster", None, str_list)
        roster = check_roster(roster_arg) if roster_arg else None
        reason_arg: str | None = r.get("reason", None, str)
        expires = r.get("expires", arming.DEFAULT_EXPIRES_S, positive_float)
        timeout = r.get("timeout", 5.0, positive_float)

        def action(s: Any) -> Awaitable[Outcome]:
            if scope is not None:
                from killswitch.ops.scope import arm_scope

                return arm_scope(
                    s, kind=scope[0], value=scope[1], key=key, operators=operators,
                    reason=reason_arg, expires_s=expires, timeout=timeout,
                )  # fmt: skip
            return arming.arm(
                s, key=key, operators=operators, roster=roster, reason=reason_arg,
                expires_s=expires, timeout=timeout,
            )  # fmt: skip

    elif cmd == "status":
        action = control.status
    elif cmd == "audit":
        from killswitch.ops import audit

        limit = r.get("limit", None, positive_int)
        audit_file = r.get("file", None, str)
        if r.get("verify", False, _truthy):

            def action(s: Any) -> Awaitable[Outcome]:
                return audit.verify(s, audit_file)

        else:

            def action(s: Any) -> Awaitable[Outcome]:
                return audit.audit(s, limit)

    else:  # pragma: no cover - argparse restricts the verbs
        raise ConfigError(f"unknown command {cmd}")
    # An operator command never hangs: its own wait plus a margin for Redis round trips.
    budget = (
        r.get("timeout", 5.0, positive_float) + (135.0 if cmd != "kill" else 15.0)
        if cmd in ("kill", "arm", "resume")
        else 15.0
    )
    lean = _lean_url(redis_url) if cmd in FAST_VERBS else None
    if lean is not None:
        outcome = _with_lean_store(lean, redis_url, node, action, budget)
    else:
        import asyncio

        outcome = asyncio.run(_with_store(redis_url, node, action, budget))
    if outcome.code == EXIT_FAILED and not outcome.report:
        print(outcome.message, file=sys.stderr)
        return outcome.code
    if outcome.code == EXIT_USAGE:
        print(f"killswitch {cmd}: {outcome.message}", file=sys.stderr)
        return outcome.code
    if as_json:
        print(json.dumps(outcome.report, sort_keys=False))
        if outcome.message:  # stdout stays one JSON object; what a human must read goes here
            print(outcome.message, file=sys.stderr)
    else:
        print(render.human(cmd, outcome))
    return outcome.code


def _lean_url(redis_url: str) -> LeanURL | None:
    """The URL as the lean transport reads it; None: a form left to redis-py."""
    from killswitch.store import lean

    try:
        return lean.parse(redis_url)
    except ValueError:
        return None  # redis-py's path reports it, as it always has


def _with_lean_store(
    url: LeanURL,
    redis_url: str,
    node: str,
    action: Callable[[Any], Awaitable[Outcome]],
    budget: float,
) -> Outcome:
    """`action` over `store.lean` (no event loop): same scripts, keys and outcome."""
    from hiredis import HiredisError

    from killswitch.store.lean import BudgetSpent, ReplyError
    from killswitch.store.leanclient import LeanRedis, LeanStore, drive

    client = LeanRedis(url, socket_timeout=3.0, client_name=f"ks-cli-{node}",
                       deadline=time.monotonic() + budget)  # fmt: skip
    try:
        return drive(cast(Coroutine[Any, Any, Outcome], action(LeanStore(client, node))))
    except BudgetSpent:
        return _gave_up(redis_url, budget)
    except (ReplyError, HiredisError, OSError) as e:
        return _unreachable(redis_url, e)
    finally:
        drive(client.aclose())


async def _with_store(
    redis_url: str, node: str, action: Callable[[Any], Awaitable[Outcome]], budget: float
) -> Outcome:
    import asyncio

    from redis.exceptions import RedisError

    from killswitch.store.redisconn import connect
    from killswitch.store.store import Store

    try:
        redis = connect(redis_url, socket_timeout=3.0, client_name=f"ks-cli-{node}")
    except ValueError as e:
        return Outcome(EXIT_FAILED, {}, f"killswitch: bad Redis URL: {e}")
    try:
        async with asyncio.timeout(budget):
            return await action(Store(redis, node))
    except TimeoutError:
        return _gave_up(redis_url, budget)
    except (RedisError, OSError) as e:
        return _unreachable(redis_url, e)
    finally:
        await redis.aclose()


def _gave_up(redis_url: str, budget: float) -> Outcome:
    from killswitch.store.redisurl import redact

    return Outcome(
        EXIT_FAILED,
        {},
        f"killswitch: gave up after {budget:g}s talking to Redis at {redact(redis_url)}.\n"
        "A kill may or may not have been recorded: run `killswitch status` to see.\n"
        "Every sidecar that cannot reach Redis blocks all orders by itself within its\n"
        "--stale-after; to stop trading without Redis, stop each order router or sidecar.",
    )


def _unreachable(redis_url: str, e: BaseException) -> Outcome:
    from killswitch.store.redisurl import redact

    return Outcome(
        EXIT_FAILED,
        {},
        f"killswitch: cannot reach Redis at {redact(redis_url)}: {type(e).__name__}: {e}\n"
        "The command did not complete (run `killswitch status` once Redis answers).\n"
        "What to do instead:\n"
        "  - every sidecar that cannot reach Redis blocks all orders by itself within its\n"
        "    --stale-after (default 1s), so a fleet cut off from Redis is already blocked;\n"
        "  - if the fleet can still reach Redis but you cannot, run this from a host that\n"
        "    can (or fix --redis / KILLSWITCH_REDIS_URL);\n"
        "  - to stop trading without Redis, stop each order router or its sidecar process.",
    )
