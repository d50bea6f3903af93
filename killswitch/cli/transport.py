"""How an operator verb reaches Redis: `kill` and `status` over the lean transport (no event
loop, no redis-py) when the URL allows, every other verb over redis-py; either way within a
time budget, and a Redis failure said in a few lines of what to do instead.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from killswitch.ops.control import EXIT_FAILED, Outcome

if TYPE_CHECKING:
    from killswitch.store.lean import LeanURL

# Verbs that must start fast: they log nothing (structlog and rich cost more than the kill
# itself) and, for the URL forms `store.lean` reads, talk to Redis without redis-py or asyncio.
FAST_VERBS = ("kill", "status")


def lean_url(redis_url: str) -> LeanURL | None:
    """The URL as the lean transport reads it; None: a form left to redis-py."""
    from killswitch.store import lean

    try:
        return lean.parse(redis_url)
    except ValueError:
        return None  # redis-py's path reports it, as it always has


def with_lean_store(
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
    from killswitch.store.noperm import denial, redis_user
    from killswitch.store.redisconn import classify
    from killswitch.store.redisurl import endpoint

    problem = classify(e)
    where = endpoint(redis_url)
    refused = denial(e)
    if refused is not None:  # one permission missing: name it and the rule to add
        line = refused.line(redis_user(redis_url))
        return Outcome(EXIT_FAILED, {}, f"killswitch: Redis at {where}: {line}")
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


async def with_store(
    redis_url: str, node: str, action: Callable[[Any], Awaitable[Outcome]], budget: float
) -> Outcome:
    import asyncio

    from redis.exceptions import RedisClusterException, RedisError

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
    except (RedisError, RedisClusterException, OSError) as e:
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
