"""The `killswitch` command: parses, configures logging, calls a plain function, exits.

The flags live in `parser`; this module resolves them into settings (flag, environment,
config file, default) and calls the plain function behind each verb: the operator verbs in
`operatorverbs` (over Redis as `transport` says), the service launchers in `services`.

Exit codes (part of the public interface): 0 done and proven; 1 could not do it (e.g. Redis
unreachable); 2 usage or configuration error; 3 kill recorded but not every roster host
confirmed in time; 4 refused by a safety check; 5 recorded and pending a second operator.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from killswitch.cli import operatorverbs, services
from killswitch.cli.exits import fail
from killswitch.cli.parser import build_parser
from killswitch.cli.settings import (
    aggregator_settings,
    alertsink_settings,
    loadgen_settings,
    sidecar_settings,
)
from killswitch.cli.transport import FAST_VERBS
from killswitch.core.node.names import InvalidName
from killswitch.ops.control import EXIT_FAILED, EXIT_USAGE
from killswitch.runtime.config import ConfigError, Resolver, load_config_file, unknown_keys
from killswitch.runtime.errors import StartupError

__all__ = ["build_parser", "main", "settings_from_args"]

if TYPE_CHECKING:  # the services import redis/aiohttp: only loaded when one runs
    from killswitch.aggregator.settings import AggregatorSettings
    from killswitch.sidecar.settings import SidecarSettings
    from killswitch.sim.alertsink import AlertSinkSettings
    from killswitch.sim.loadgen import LoadgenSettings


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = argv[0] if argv and not argv[0].startswith("-") else None
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    try:
        if args.command == "config":
            from killswitch.cli.configcheck import check_command

            return check_command(args, os.environ)
        return _dispatch(args)
    except ConfigError as e:
        return fail(args.command, f"configuration error: {e}", EXIT_USAGE)
    except InvalidName as e:
        return fail(args.command, str(e), EXIT_USAGE)
    except StartupError as e:
        return fail(args.command, f"cannot start: {e}", e.code)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # the contract: never a traceback, one line saying what broke
        if os.environ.get("KILLSWITCH_DEBUG"):
            raise
        from killswitch.store.noperm import denial, redis_user

        if (refused := denial(e)) is not None:  # an ACL without a permission this verb needs
            try:
                user = redis_user(_resolve(args, os.environ)[1])
            except Exception:  # resolved once already; say it without the name otherwise
                user = "(of --redis)"
            return fail(args.command, refused.line(user), EXIT_FAILED)
        return fail(
            args.command,
            f"failed: {type(e).__name__}: {e} (set KILLSWITCH_DEBUG=1 for the traceback)",
            EXIT_FAILED,
        )


def _dispatch(args: argparse.Namespace) -> int:
    r, redis_url = _resolve(args, os.environ)  # every setting of the verb, checked up front
    cmd = args.command
    if cmd not in FAST_VERBS:
        from killswitch.runtime import logs

        logs.configure(fmt=r.get("log-format"), level=r.get("log-level"))
    if cmd == "demo":
        from killswitch.sim.demo import run_demo

        return run_demo(
            as_json=r.get("json"),
            realtime=r.get("realtime"),
            on_haunted=r.get("on-haunted"),
            plot=r.get("plot"),
        )
    if cmd == "loadgen":
        return services.start_loadgen(r)
    if cmd == "alertsink":
        from killswitch.sim.alertsink import serve

        return serve(alertsink_settings(r))
    if cmd == "backtest":
        from killswitch.cli import rulecli

        code, text = rulecli.backtest_command(r)
        print(text)
        return code
    if cmd == "recorder":
        from killswitch.cli import recordercli

        return recordercli.run(r, redis_url, args.files)
    if cmd in ("kill", "status", "watch") and r.get("fleet"):
        from killswitch.cli import fleetcli

        if cmd == "kill" and r.get("fence"):
            raise ConfigError("--fence is for a kill of one node, not --fleet")
        if cmd == "watch":
            return fleetcli.watch(r, redis_url)
        return fleetcli.run(cmd, r, redis_url, r.get("json"))
    node = r.require("node")
    if cmd == "export":
        return operatorverbs.run_export(r, node, redis_url)
    if cmd == "sidecar":
        return services.start_sidecar(r, node, redis_url)
    if cmd == "aggregator":
        return services.start_aggregator(r, node, redis_url)
    if cmd == "watch":
        return operatorverbs.run_watch(r, node, redis_url)
    return operatorverbs.run_operator(cmd, r, node, redis_url, r.get("json"))


def resolver(args: argparse.Namespace, env: Mapping[str, str], verb: str = "") -> Resolver:
    """The settings of `verb` (the command run, by default): flag, env, config file, default.
    A config file holding a key no verb takes is refused (ConfigError), whatever the verb."""
    config = load_config_file(args.config or env.get("KILLSWITCH_CONFIG"))
    problems = unknown_keys(config)
    if problems:
        raise ConfigError("; ".join(problems))
    return Resolver(vars(args), env=env, config=config, section=verb or args.command)


def _resolve(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[Resolver, str]:
    """The command's settings, every one resolved and checked now, and its Redis URL."""
    from killswitch.store.redisurl import check_url

    r = resolver(args, env)
    r.resolve()
    redis_url: str = r.get("redis")
    if args.command not in ("demo", "backtest", "loadgen", "alertsink"):
        try:
            check_url(redis_url)
        except ValueError as e:
            raise ConfigError(f"redis: {e}") from None
    return r, redis_url


def settings_from_args(
    args: argparse.Namespace, env: Mapping[str, str] | None = None
) -> SidecarSettings | AggregatorSettings | LoadgenSettings | AlertSinkSettings:
    """What `sidecar`, `aggregator`, `loadgen` or `alertsink` would run with: resolved and validated
    exactly as the command does (ConfigError / InvalidName on a bad value), nothing started."""
    r, redis_url = _resolve(args, os.environ if env is None else env)
    if args.command == "loadgen":
        return loadgen_settings(r)
    if args.command == "alertsink":
        return alertsink_settings(r)
    node = r.require("node")
    if args.command == "sidecar":
        return sidecar_settings(r, node, redis_url)
    if args.command == "aggregator":
        return aggregator_settings(r, node, redis_url)
    raise ConfigError(f"{args.command} is not a service command")
