"""`kill --fleet`, `status --fleet` and `watch --fleet`: the CLI side of the fleet verbs.

Parses nothing itself (the parser and resolver did) and decides nothing (see `ops.fleet`):
it connects, runs the action under an overall deadline, and prints.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from killswitch.ops.control import EXIT_FAILED, EXIT_OK, Outcome
from killswitch.runtime.config import Resolver
from killswitch.view.text import safe_text


def run(cmd: str, r: Resolver, redis_url: str, as_json: bool) -> int:
    from killswitch.ops import fleet

    action: Callable[[Any], Awaitable[Outcome]]
    budget = 15.0
    if cmd == "kill":
        reason = r.require("reason", hint=" (say why: it is audited)")
        operator = r.get("operator") or os.environ.get("USER") or "unknown"
        timeout = r.get("timeout")  # bounded as a node kill's
        budget += timeout

        def action(redis: Any) -> Awaitable[Outcome]:
            return fleet.kill_fleet(redis, reason=reason, operator=operator, timeout=timeout)

    else:
        action = fleet.status_fleet
    outcome = asyncio.run(_with_redis(redis_url, action, budget))
    if outcome.code == EXIT_FAILED and not outcome.report:
        print(outcome.message, file=sys.stderr)
        return outcome.code
    if as_json:
        print(json.dumps(outcome.report))
    else:
        print(safe_text(fleet.fleet_lines(outcome.report)))
    if outcome.message and outcome.code != EXIT_OK:
        print(outcome.message, file=sys.stderr)
    return outcome.code


async def _with_redis(
    redis_url: str, action: Callable[[Any], Awaitable[Outcome]], budget: float
) -> Outcome:
    from redis.exceptions import RedisClusterException, RedisError

    from killswitch.store.noperm import denial, redis_user
    from killswitch.store.redisconn import connect

    redis = connect(redis_url, socket_timeout=3.0, client_name="ks-cli-fleet")
    try:
        async with asyncio.timeout(budget):
            return await action(redis)
    except TimeoutError:
        return Outcome(
            EXIT_FAILED,
            {},
            f"killswitch: gave up after {budget:g}s talking to Redis.\n"
            "Kills may or may not have been recorded: run `killswitch status --fleet` to see.",
        )
    except (RedisError, RedisClusterException, OSError) as e:
        if (refused := denial(e)) is not None:  # reached, and refused: say what to add
            return Outcome(EXIT_FAILED, {}, f"killswitch: {refused.line(redis_user(redis_url))}")
        return Outcome(
            EXIT_FAILED,
            {},
            f"killswitch: cannot reach Redis: {type(e).__name__}: {e}\n"
            "Every sidecar that cannot reach Redis blocks all orders by itself within its\n"
            "--stale-after; to stop trading without Redis, stop each order router or sidecar.",
        )
    finally:
        await redis.aclose()


def watch(r: Resolver, redis_url: str) -> int:
    """`watch --fleet`: one line per node, redrawn; read-only."""
    from redis.exceptions import RedisError
    from rich.console import Console, RenderableType
    from rich.text import Text

    from killswitch.cli.watch import run_view
    from killswitch.ops import fleet
    from killswitch.store.redisconn import connect

    interval, once = r.get("interval"), r.get("once")

    async def main() -> int:
        redis = connect(redis_url, socket_timeout=3.0, client_name="ks-watch-fleet")

        async def frame() -> tuple[bool, RenderableType]:
            try:
                outcome = await fleet.status_fleet(redis)
            except (RedisError, OSError) as e:
                return False, Text(f"fleet status unknown: {type(e).__name__}: {e}", "bold red")
            lines = "\n".join(fleet.fleet_lines(outcome.report))
            return True, Text(lines)

        try:
            # soft wrap: one node stays one line when the output is a pipe or a log
            console = Console(soft_wrap=True)
            return await run_view(frame, interval=interval, once=once, console=console)
        finally:
            await redis.aclose()

    return asyncio.run(main())
