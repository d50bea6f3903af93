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
from typing import TYPE_CHECKING, Any, cast

from killswitch.cli.parser import build_parser
from killswitch.cli.settings import (
    aggregator_settings,
    check_state_dir,
    loadgen_settings,
    sidecar_settings,
    truthy,
)
from killswitch.core.names import InvalidName, check_roster
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Outcome
from killswitch.runtime.config import (
    DEFAULT_REDIS,
    ConfigError,
    Resolver,
    host_name,
    load_config_file,
    node_name,
    str_list,
)
from killswitch.runtime.errors import StartupError
from killswitch.runtime.validate import bounded, bounded_int

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
        return _fail(args.command, f"configuration error: {e}", EXIT_USAGE)
    except InvalidName as e:
        return _fail(args.command, str(e), EXIT_USAGE)
    except StartupError as e:
        return _fail(args.command, f"cannot start: {e}", e.code)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the contract: never a traceback, one line saying what broke
        if os.environ.get("KILLSWITCH_DEBUG"):
            raise
        return _fail(
            args.command,
            f"failed: {type(e).__name__}: {e} (set KILLSWITCH_DEBUG=1 for the traceback)",
            EXIT_FAILED,
        )


def _fail(command: str, message: str, code: int) -> int:
    """One line on stderr (control characters shown escaped, passwords hidden), then `code`."""
    from killswitch.store.redisurl import scrub

    text = scrub(message).encode("unicode_escape", "backslashreplace").decode("ascii")
    print(f"killswitch {command}: {text}", file=sys.stderr)
    from killswitch.runtime import logs

    logs.flush()
    return code


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
    from killswitch.store.redisurl import check_url

    config = load_config_file(args.config or env.get("KILLSWITCH_CONFIG"))
    r = Resolver(vars(args), env=env, config=config, section=args.command)
    redis_url = Resolver(
        {"redis_url": args.redis}, env=env, config=config, section=args.command
    ).get("redis-url", config.get("redis", DEFAULT_REDIS), str)
    if args.command not in ("demo", "backtest", "loadgen"):
        try:
            check_url(redis_url)
        except ValueError as e:
            raise ConfigError(f"redis: {e}") from None
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
        check_state_dir(settings.state_dir)
    for warning in settings.extra.get("warnings", ()):
        print(f"killswitch sidecar: WARNING: {warning}", file=sys.stderr)
    asyncio.run(run_sidecar(settings))
    return EXIT_OK


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

    from redis.exceptions import RedisError

    from killswitch.aggregator.service import NotDurable, run_aggregator
    from killswitch.store.redisconn import classify

    settings = aggregator_settings(r, node, redis_url)
    try:
        asyncio.run(run_aggregator(settings))
    except NotDurable as e:
        return _fail("aggregator", f"refused: {e}", EXIT_USAGE)
    except (RedisError, OSError) as e:
        problem = classify(e)
        return _fail("aggregator", f"cannot start: {problem.line(redis_url)}", EXIT_FAILED)
    return EXIT_OK


def _watch(r: Resolver, node: str, redis_url: str) -> int:
    import asyncio

    from killswitch.cli.watch import watch

    interval = r.get("interval", 0.5, bounded("interval"))
    once = bool(r.get("once", False, truthy))
    return asyncio.run(watch(redis_url, node, interval=interval, once=once))


def _scope(r: Resolver) -> tuple[str, str] | None:
    """The scope flag of kill/arm, read from the flags only: a scope is never a default."""
    host, symbol = r.flags.get("scope_host"), r.flags.get("scope_symbol")
    if host:
        return ("host", host_name(host))
    if symbol:
        return ("symbol", symbol)
    return None


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
        from killswitch.store.redisconn import classify

        return _fail("export", classify(e).line(redis_url), EXIT_FAILED)
    sys.stdout.write(rulecli.counts_csv(flows, attempted=bool(r.get("attempted", False, bool))))
    return EXIT_OK


def _operator(cmd: str, r: Resolver, node: str, redis_url: str, as_json: bool) -> int:
    from killswitch.cli import render
    from killswitch.ops import control

    action: Callable[[Any], Awaitable[Outcome]]
    # The node's liveness bound: the same setting as the sidecars' --stale-after, so one
    # config file (or KILLSWITCH_STALE_AFTER) sets both; a host's own claim never widens it.
    alive_ms = round(r.get("stale-after", 1.0, bounded("stale-after")) * 1000)
    scope = _scope(r)
    if cmd == "kill":
        reason = r.require("reason", str, " (say why: it is audited)")
        operator = r.get("operator", os.environ.get("USER") or "unknown", str)
        timeout = r.get("timeout", 5.0, bounded("timeout"))
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
                out = await control.kill(
                    s, reason=reason, operator=who, timeout=timeout, alive_ms=alive_ms
                )
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
        # Out-of-range numbers are refused first: no key or file is read for a call that fails.
        expires = r.get("expires", arming.DEFAULT_EXPIRES_S, bounded("expires"))
        timeout = r.get("timeout", 5.0, bounded("timeout"))
        key = r.require("key", str, " (your SSH key: arming is signed)")
        operators = load_operators(
            r.require("operators", str, " (the operators' allowed-signers file)")
        )
        roster_arg = r.get("roster", None, str_list)
        roster = check_roster(roster_arg) if roster_arg else None
        reason_arg: str | None = r.get("reason", None, str)

        def action(s: Any) -> Awaitable[Outcome]:
            if scope is not None:
                from killswitch.ops.scope import arm_scope

                return arm_scope(
                    s, kind=scope[0], value=scope[1], key=key, operators=operators,
                    reason=reason_arg, expires_s=expires, timeout=timeout,
                )  # fmt: skip
            return arming.arm(
                s, key=key, operators=operators, roster=roster, reason=reason_arg,
                expires_s=expires, timeout=timeout, alive_ms=alive_ms,
            )  # fmt: skip

    elif cmd == "rollout":
        from killswitch.cli import rolloutcli

        action = rolloutcli.action(r, alive_ms)
    elif cmd == "status":

        def action(s: Any) -> Awaitable[Outcome]:
            return control.status(s, alive_ms=alive_ms)

    elif cmd == "audit":
        from killswitch.ops import audit

        limit = r.get("limit", None, bounded_int("limit"))
        audit_file = r.get("file", None, str)
        if r.get("verify", False, truthy):

            def action(s: Any) -> Awaitable[Outcome]:
                return audit.verify(s, audit_file)

        else:

            def action(s: Any) -> Awaitable[Outcome]:
                return audit.audit(s, limit)

    else:  # pragma: no cover - argparse restricts the verbs
        raise ConfigError(f"unknown command {cmd}")
    # An operator command never hangs: its own wait plus a margin for Redis round trips.
    budget = (
        r.get("timeout", 5.0, bounded("timeout")) + (135.0 if cmd != "kill" else 15.0)
        if cmd in ("kill", "arm", "resume")
        else 15.0
    )
    lean = _lean_url(redis_url) if cmd in FAST_VERBS else None
    if lean is not None:
        outcome = _with_lean_store(lean, redis_url, node, action, budget)
    else:
        import asyncio

        outcome = asyncio.run(_with_store(redis_url, node, action, budget))
    if outcome.code in (EXIT_FAILED, EXIT_USAGE) and not outcome.report:
        print(outcome.message, file=sys.stderr)
        return outcome.code
    if outcome.code == EXIT_USAGE:
        print(f"killswitch {cmd}: {outcome.message}", file=sys.stderr)
        return outcome.code
    if as_json:
        print(json.dumps(outcome.report, sort_keys=False))
        if outcome.message:  # stdout stays one JSON object; what a human must read goes here
            print(outcome.message, file=sys.stderr)
    elif cmd == "rollout":
        from killswitch.cli import rolloutcli

        print(rolloutcli.human(outcome))
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


def _redis_failure(redis_url: str, e: BaseException) -> Outcome:
    """Say which of "unreachable", "refused credentials" or "bad request" it was, and where."""
    from killswitch.store.redisconn import classify
    from killswitch.store.redisurl import endpoint

    problem = classify(e)
    where = endpoint(redis_url)
    if problem.kind == "refused credentials":
        return Outcome(
            EXIT_FAILED,
            {},
            f"killswitch: Redis at {where} refused the credentials ({problem.detail}); "
            "fix the user and password in --redis / KILLSWITCH_REDIS_URL or the ACL",
        )
    if problem.kind == "bad request":
        return Outcome(
            EXIT_FAILED,
            {},
            f"killswitch: Redis at {where} refused the request ({problem.detail}); "
            "nothing was changed by it",
        )
    return Outcome(
        EXIT_FAILED,
        {},
        f"killswitch: cannot reach Redis at {where} (unreachable): {problem.detail}\n"
        "The command did not complete (run `killswitch status` once Redis answers).\n"
        "What to do instead:\n"
        "  - every sidecar that cannot reach Redis blocks all orders by itself within its\n"
        "    --stale-after (default 1s), so a fleet cut off from Redis is already blocked;\n"
        "  - if the fleet can still reach Redis but you cannot, run this from a host that\n"
        "    can (or fix --redis / KILLSWITCH_REDIS_URL);\n"
        "  - to stop trading without Redis, stop each order router or its sidecar process.",
    )


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
        return _redis_failure(redis_url, e)
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
    return _redis_failure(redis_url, e)
