"""Parse killswitch's Redis URLs without importing a Redis client.

Kept apart from `redisconn` (which builds `redis.asyncio` clients) so the operator commands'
lean transport (`store.lean`) reads the same URL forms by the same rules; it never connects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
PLAIN_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379

_SERVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None


def _split_userinfo(netloc: str) -> tuple[str | None, str | None, str]:
    username: str | None = None
    password: str | None = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if sep else None
        if not sep and user:
            # `redis://secret@host` means a password in redis-py; keep that reading.
            username, password = None, unquote(user)
    return username, password, netloc


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[[user]:pass@]h:p[,h:p...]/``; ValueError names what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a redis+cluster:// URL: {url!r}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"query strings and fragments are not supported in {url!r}")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"Redis Cluster has only database 0; remove {path!r} from {url!r}")
    username, password, netloc = _split_userinfo(netloc)
    if not netloc:
        raise ValueError(f"no cluster node addresses in {url!r}")
    nodes = tuple(_parse_host_port(item, url, 6379, "cluster") for item in netloc.split(","))
    return ClusterURL(nodes, scheme == "rediss+cluster", username, password)


def _parse_host_port(
    item: str, url: str, default_port: int = DEFAULT_SENTINEL_PORT, kind: str = "sentinel"
) -> tuple[str, int]:
    if not item:
        raise ValueError(f"empty {kind} address in {url!r} (stray comma?)")
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"unterminated IPv6 address {item!r} in {url!r}")
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':port' after {item[: len(host) + 2]!r} in {url!r}")
        port_text = rest[1:] if rest else ""
    else:
        if item.count(":") > 1:
            raise ValueError(f"IPv6 {kind} address {item!r} must be in brackets in {url!r}")
        host, _, port_text = item.partition(":")
        if not host:
            raise ValueError(f"{kind} address {item!r} has no host in {url!r}")
    if not port_text:
        return host, default_port
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad {kind} port {port_text!r} in {url!r} (want 1-65535)")
    return host, int(port_text)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:pass@]h[:p][,h[:p]...]/service[/db]``.

    Raises ValueError naming what is wrong.
    """
    prefix = f"{SENTINEL_SCHEME}://"
    if not url.startswith(prefix):
        raise ValueError(f"not a {SENTINEL_SCHEME}:// URL: {url!r}")
    rest = url[len(prefix) :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"query strings and fragments are not supported in {url!r}")
    netloc, _, path = rest.partition("/")
    username, password, netloc = _split_userinfo(netloc)
    if not netloc:
        raise ValueError(f"no sentinel addresses in {url!r}")
    sentinels = tuple(_parse_host_port(item, url) for item in netloc.split(","))
    parts = path.split("/") if path else []
    if parts and parts[-1] == "":
        parts.pop()  # tolerate one trailing slash
    if not parts:
        raise ValueError(f"no service name in {url!r} (want .../<service_name>[/db])")
    if len(parts) > 2:
        raise ValueError(f"too many path segments in {url!r} (want /<service_name>[/db])")
    service = unquote(parts[0])
    if not _SERVICE_RE.fullmatch(service):
        raise ValueError(f"bad service name {service!r} in {url!r}")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(f"bad db {parts[1]!r} in {url!r} (want a non-negative integer)")
        db = int(parts[1])
    return SentinelURL(sentinels, service, db, username, password)


def redact(url: str) -> str:
    """`url` with any password replaced by `***`, for messages (no message prints one)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return url
    userinfo, _, hosts = netloc.rpartition("@")
    user, colon, _pw = userinfo.partition(":")
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}://{shown}@{hosts}{slash}{path}"


_USERINFO_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@/\s]*)@")


def scrub(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (the user is kept)."""

    def hide(m: re.Match[str]) -> str:
        user, sep, _ = m.group("userinfo").partition(":")
        if not sep:  # `redis://secret@host`: redis-py reads a lone userinfo as the password
            return f"{m.group('scheme')}***@"
        return f"{m.group('scheme')}{user}:***@"

    return _USERINFO_RE.sub(hide, text)


def endpoint(url: str) -> str:
    """The URL as it may be shown: scheme, user, hosts and path, never the password."""
    return scrub(url)


def check_url(url: str) -> None:
    """Raise ValueError (naming the URL without its password) unless `url` is one we accept."""
    scheme, sep, rest = url.partition("://")
    shown = endpoint(url)
    if not sep or not scheme:
        raise ValueError(f"Redis URL {shown!r} has no scheme (want redis://, rediss://, ...)")
    if scheme in PLAIN_SCHEMES:
        if scheme != "unix" and not rest.split("/", 1)[0].rpartition("@")[2]:
            raise ValueError(f"Redis URL {shown!r} has no host")
        return
    if scheme != SENTINEL_SCHEME and scheme not in CLUSTER_SCHEMES:
        raise ValueError(
            f"unsupported Redis URL scheme {scheme!r} in {shown!r} "
            f"(want one of {', '.join((*PLAIN_SCHEMES, SENTINEL_SCHEME, *CLUSTER_SCHEMES))})"
        )
    try:
        if scheme == SENTINEL_SCHEME:
            parse_sentinel_url(url)
        else:
            parse_cluster_url(url)
    except ValueError as e:
        raise ValueError(scrub(str(e))) from None
