"""The service launchers: `sidecar`, `aggregator` and `loadgen` resolve their settings and
run until stopped. The services' modules (redis, aiohttp, prometheus_client) are imported
only here, inside the launcher that needs them.
"""

from __future__ import annotations

import json
import sys

from killswitch.cli.exits import fail
from killswitch.cli.settings import (
    aggregator_settings,
    check_state_dir,
    loadgen_settings,
    sidecar_settings,
)
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from killswitch.runtime.config import Resolver


def start_sidecar(r: Resolver, node: str, redis_url: str) -> int:
    from killswitch.runtime.eventloop import run
    from killswitch.sidecar.service import run_sidecar

    settings = sidecar_settings(r, node, redis_url)
    if settings.state_dir:
        check_state_dir(settings.state_dir)
    for warning in settings.extra.get("warnings", ()):
        print(f"killswitch sidecar: WARNING: {warning}", file=sys.stderr)
    run(run_sidecar(settings), r.get("event-loop"))
    return EXIT_OK


def start_loadgen(r: Resolver) -> int:
    import asyncio

    from killswitch.sim.loadgen import run_loadgen

    s = loadgen_settings(r)
    stats = asyncio.run(run_loadgen(s.address, s.rate, s.duration, s.name))
    print(json.dumps({"sent": stats.sent, "allowed": stats.allowed, "blocked": stats.blocked,
                      "errors": stats.errors}))  # fmt: skip
    return EXIT_OK


def start_aggregator(r: Resolver, node: str, redis_url: str) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from killswitch.aggregator.service import run_aggregator
    from killswitch.aggregator.upkeep import NotDurable
    from killswitch.store.noperm import denial, redis_user
    from killswitch.store.redisconn import classify

    settings = aggregator_settings(r, node, redis_url)
    try:
        asyncio.run(run_aggregator(settings))
    except NotDurable as e:
        return fail("aggregator", f"refused: {e}", EXIT_USAGE)
    except Exception as e:
        if (refused := denial(e)) is not None:
            return fail("aggregator", f"cannot start: {refused.line(redis_user(redis_url))}",
                        EXIT_FAILED)  # fmt: skip
        if not isinstance(e, RedisError | OSError):
            raise
        problem = classify(e)
        return fail("aggregator", f"cannot start: {problem.line(redis_url)}", EXIT_FAILED)
    return EXIT_OK
