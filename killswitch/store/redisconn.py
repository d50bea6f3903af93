"""Turn a Redis URL into a `redis.asyncio.Redis` client, including Sentinel-managed primaries.

Accepted URLs:

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) and
  ``unix://[[user]:password@]/path/to/socket[?db=N]``: passed to ``Redis.from_url``.
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]``:
  the Sentinels (port defaults to 26379; IPv6 hosts in brackets) are asked for the primary
  of ``service_name``. The user and password are for the primary, not the Sentinels. The
  client re-asks the Sentinels on every new connection, so after a failover the same client
  object reaches the new primary once its broken connection is dropped.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]/``: Redis Cluster, through
  redis-py's asyncio cluster client (start-up nodes; it learns the slot map itself and
  follows MOVED/ASK). Every key of one node carries the hash tag ``{node}``, so one node's
  scripts and pipelines stay within one slot. ``rediss+cluster://`` is the same over TLS.

Every client this module makes has a finite timeout and no hidden retries: killswitch must
never block forever on Redis, and every caller owns its own retry loop (redis-py 8's default
of 10 retries with back-off turns a 0.3 s socket timeout into about 7 s of silence).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeout

from killswitch.store.redisurl import (
    CLUSTER_SCHEMES,
    DEFAULT_SENTINEL_PORT,
    PLAIN_SCHEMES,
    SENTINEL_SCHEME,
    ClusterURL,
    SentinelURL,
    check_url,
    endpoint,
    parse_cluster_url,
    parse_sentinel_url,
    scrub,
)

__all__ = [
    "CLUSTER_SCHEMES",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_HEALTH_CHECK_INTERVAL",
    "DEFAULT_SENTINEL_PORT",
    "DEFAULT_SOCKET_TIMEOUT",
    "SENTINEL_SCHEME",
    "ClusterURL",
    "RedisProblem",
    "SentinelURL",
    "check_url",
    "classify",
    "connect",
    "endpoint",
    "parse_cluster_url",
    "parse_sentinel_url",
    "scrub",
]

# `socket_timeout=None` means this, never "wait forever".
DEFAULT_SOCKET_TIMEOUT = 2.0
DEFAULT_CONNECT_TIMEOUT = 1.0
# A connection idle this long is PINGed before its next command, so a dead one is found
# before a command is written into it.
DEFAULT_HEALTH_CHECK_INTERVAL = 1.0


@dataclass(frozen=True)
class RedisProblem:
    """What went wrong talking to Redis, in words an operator can act on."""

    kind: str  # "unreachable" | "refused credentials" | "bad request"
    detail: str

    def line(self, url: str) -> str:
        return f"Redis at {endpoint(url)}: {self.kind}: {scrub(self.detail)}"


_AUTH_WORDS = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password", "invalid username")


def classify(e: BaseException) -> RedisProblem:
    """Tell "unreachable" from "refused credentials" from "bad request" for one Redis error."""
    text = f"{type(e).__name__}: {e}".replace("\n", " ").strip()
    if isinstance(e, AuthenticationError | AuthorizationError | NoPermissionError) or any(
        w in str(e) for w in _AUTH_WORDS
    ):
        return RedisProblem("refused credentials", text)
    if isinstance(e, RedisConnectionError | RedisTimeout | OSError | TimeoutError):
        return RedisProblem("unreachable", text)
    # The operator verbs' lean transport raises its own ReplyError for an error reply.
    if isinstance(e, ResponseError) or type(e).__name__ == "ReplyError":
        return RedisProblem("bad request", text)
    return RedisProblem("unreachable", text)


class _SentinelManagedRedis(redis.asyncio.Redis):
    """A client whose `aclose()` also closes the Sentinel clients that find its primary.

    redis-py's `master_for` client owns its pool but not the `Sentinel` object behind it,
    so closing only the client would leak a connection per Sentinel.
    """

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            manager: Sentinel = pool.sentinel_manager
            await manager.aclose()


def connect(
    url: str,
    *,
    socket_timeout: float | None = None,
    client_name: str | None = None,
    **kw: Any,
) -> redis.asyncio.Redis:
    """A `redis.asyncio.Redis` for `url` with `decode_responses=True` and finite timeouts.

    `socket_timeout=None` selects `DEFAULT_SOCKET_TIMEOUT`. Extra keyword arguments go to
    the client (or, for Sentinel URLs, to `master_for`) and override the defaults here,
    e.g. `retry=`, `health_check_interval=`, `socket_connect_timeout=`. For Sentinel URLs,
    `sentinel_kwargs=` replaces the options used to talk to the Sentinels themselves.
    Nothing connects until the first command.
    """
    check_url(url)
    scheme = url.partition("://")[0]
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT if socket_timeout is None else socket_timeout,
        "socket_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "health_check_interval": DEFAULT_HEALTH_CHECK_INTERVAL,
        "retry": Retry(NoBackoff(), 0),
        "client_name": client_name,
    }
    if scheme in PLAIN_SCHEMES:
        options.update(kw)
        return redis.asyncio.Redis.from_url(url, **options)
    if scheme in CLUSTER_SCHEMES:
        return _cluster(parse_cluster_url(url), options, kw)
    if scheme != SENTINEL_SCHEME:
        raise ValueError(
            f"unsupported Redis URL scheme {scheme!r} in {url!r} "
            f"(want one of {', '.join((*PLAIN_SCHEMES, SENTINEL_SCHEME, *CLUSTER_SCHEMES))})"
        )
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = kw.pop("sentinel_kwargs", None)
    options.update(kw)
    if sentinel_kwargs is None:
        # Sentinel replies are tiny: the connect timeout bounds each question too, so a
        # dead Sentinel costs at most that before the next one is asked.
        sentinel_kwargs = {
            "socket_timeout": options["socket_connect_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "retry": Retry(NoBackoff(), 0),
        }
    sentinel = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        parsed.service_name,
        redis_class=_SentinelManagedRedis,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    return cast(redis.asyncio.Redis, client)


def _cluster(
    parsed: ClusterURL, options: dict[str, Any], kw: dict[str, Any]
) -> redis.asyncio.Redis:
    """A `RedisCluster` typed as the `Redis` every caller takes.

    The commands killswitch sends (EVALSHA with one node's keys, pipelines of one node's
    keys, TIME, PUBLISH/SUBSCRIBE) exist on both with the same signatures; the cluster client
    routes each by its key's slot. `health_check_interval` is a per-connection option the
    cluster client does not take; its own retries are off for the same reason as above.
    """
    options.pop("health_check_interval", None)
    options.update(kw)
    client = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in parsed.nodes],
        username=parsed.username,
        password=parsed.password,
        ssl=parsed.tls,
        **options,
    )
    return cast(redis.asyncio.Redis, client)
