"""A small synchronous Redis transport for the operator commands that must start fast.

hiredis's reply parser over a plain socket: redis://, rediss:// (TLS), unix:// and
redis+sentinel:// (primary looked up from the Sentinels), with ACL `user:password@`. Importing
redis-py (any part of it) and asyncio costs several bare interpreter starts; a fresh `killswitch
kill` should not pay that before it can record a kill (figures in docs/PERFORMANCE.md).

It implements only the part of `redis.asyncio.Redis` that `Store`'s reads and scripts use, with
the same reply shapes, as coroutines that never suspend: the same `Store` and `ops.control`
code runs over it, driven by `drive()` without an event loop. It never retries, and every call
is bounded by one deadline. It must not grow into a general client: a URL or option it does not
know (`parse()` returns None) is left to redis-py.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from killswitch.store.redisurl import SENTINEL_SCHEME, parse_sentinel_url

Arg = str | int | float | bytes

# Query options this transport understands (redis-py's names and meanings); any other sends
# the URL to redis-py, which knows them all.
_OPTIONS = frozenset({"db", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                      "ssl_check_hostname", "socket_timeout", "socket_connect_timeout"})  # fmt: skip
_CERT_REQS = ("none", "optional", "required")


class ReplyError(Exception):
    """Redis answered with an error reply (e.g. WRONGPASS, NOPERM, a script error)."""


class BudgetSpent(TimeoutError):
    """The command's overall deadline passed (a socket timeout is a plain TimeoutError)."""


@dataclass(frozen=True)
class LeanURL:
    """Where and how to connect; `sentinels` set: ask them for `service`'s primary first."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # unix socket path
    tls: bool = False
    cert_reqs: str = "required"
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    check_hostname: bool = True
    username: str | None = None
    password: str | None = None
    db: int = 0
    socket_timeout: float | None = None
    connect_timeout: float | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str = ""


def parse(url: str) -> LeanURL | None:
    """The URL as this transport reads it; None when it is a form left to redis-py.

    Raises ValueError for a URL redis-py would refuse too (bad port, bad db, bad Sentinel list).
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        return None
    if scheme == SENTINEL_SCHEME:
        s = parse_sentinel_url(url)
        return LeanURL(db=s.db, username=s.username, password=s.password,
                       sentinels=s.sentinels, service=s.service_name)  # fmt: skip
    if scheme not in ("redis", "rediss", "unix"):
        return None
    parts = urlsplit(url)
    if "@" in parts.netloc and ":" not in parts.netloc.rpartition("@")[0]:
        return None  # `redis://secret@h`: redis-py's reading of a lone userinfo is its own
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    if set(query) - _OPTIONS or parts.fragment:
        return None
    db_text = query.get("db") or (parts.path.lstrip("/") if scheme != "unix" else "") or "0"
    if not db_text.isdigit():
        raise ValueError(f"bad db {db_text!r} in the Redis URL (want a non-negative integer)")
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        return None
    return LeanURL(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        path=unquote(parts.path) if scheme == "unix" else "",
        tls=scheme == "rediss",
        cert_reqs=reqs,
        ca_certs=query.get("ssl_ca_certs"),
        certfile=query.get("ssl_certfile"),
        keyfile=query.get("ssl_keyfile"),
        check_hostname=query.get("ssl_check_hostname", "true").lower() in ("1", "true", "yes", "y"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        db=int(db_text),
        socket_timeout=float(query["socket_timeout"]) if "socket_timeout" in query else None,
        connect_timeout=(
            float(query["socket_connect_timeout"]) if "socket_connect_timeout" in query else None
        ),
    )


class _Conn:
    """One socket and its reply parser. Replies are read in order; error replies are returned
    as `ReplyError` values so a pipeline's other replies stay readable."""

    def __init__(self, sock: socket.socket, budget: _Budget) -> None:
        self.sock = sock
        self.budget = budget
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ReplyError)

    def send(self, commands: Sequence[Sequence[Arg]]) -> None:
        self.sock.settimeout(self.budget.left())
        with self.budget.spent_on_timeout():
            self.sock.sendall(b"".join(hiredis.pack_command(cast(Any, tuple(c))) for c in commands))

    def reply(self) -> Any:
        while True:
            got = self.reader.gets()
            if got is not False:
                return got
            self.sock.settimeout(self.budget.left())
            with self.budget.spent_on_timeout():
                data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the connection")
            self.reader.feed(data)

    def call(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        self.send(commands)
        return [self.reply() for _ in commands]

    def close(self) -> None:
        self.sock.close()


class _Budget:
    """Per-operation socket timeouts, never beyond the command's overall deadline."""

    def __init__(self, per_op: float, deadline: float | None) -> None:
        self.per_op = per_op
        self.deadline = deadline
        self.capped = False  # the last timeout given out was cut to the deadline

    def left(self, per_op: float | None = None) -> float:
        t = self.per_op if per_op is None else per_op
        self.capped = False
        if self.deadline is None:
            return t
        rest = self.deadline - time.monotonic()
        if rest <= 0:
            raise BudgetSpent("the command's time budget for Redis is spent")
        self.capped = rest < t
        return min(t, rest)

    @contextlib.contextmanager
    def spent_on_timeout(self) -> Iterator[None]:
        """A socket timeout that was cut to the deadline is the budget running out (a kill
        may have been recorded), not an unreachable Redis."""
        try:
            yield
        except TimeoutError as e:
            if self.capped and not isinstance(e, BudgetSpent):
                raise BudgetSpent("the command's time budget for Redis is spent") from e
            raise


def _raise_first(replies: list[Any]) -> list[Any]:
    for r in replies:
        if isinstance(r, ReplyError):
            raise r
    return replies


def _open(u: LeanURL, host: str, port: int, budget: _Budget, connect_timeout: float) -> _Conn:
    if u.path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(budget.left(connect_timeout))
        try:
            with budget.spent_on_timeout():
                sock.connect(u.path)
        except OSError:
            sock.close()
            raise
    else:
        timeout = budget.left(connect_timeout)
        with budget.spent_on_timeout():
            sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if u.tls:
        sock = _wrap_tls(sock, u, host)
    return _Conn(sock, budget)


def _wrap_tls(sock: socket.socket, u: LeanURL, host: str) -> socket.socket:
    import ssl  # only rediss:// pays for it

    ctx = ssl.create_default_context(cafile=u.ca_certs)
    ctx.check_hostname = u.check_hostname and u.cert_reqs != "none"
    ctx.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(
        u.cert_reqs, ssl.CERT_REQUIRED
    )
    if u.certfile:
        ctx.load_cert_chain(u.certfile, u.keyfile)
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except (OSError, ValueError):
        sock.close()
        raise


def connect(
    u: LeanURL, *, socket_timeout: float, client_name: str | None, budget: _Budget
) -> _Conn:
    """A connection to the primary, authenticated, on its db, named; Sentinel asked first."""
    connect_timeout = u.connect_timeout or 1.0
    budget.per_op = u.socket_timeout or socket_timeout
    if not u.sentinels:
        return _handshake(_open(u, u.host, u.port, budget, connect_timeout), u, client_name, False)
    problems = []
    for host, port in u.sentinels:
        try:
            s = _open(LeanURL(), host, port, _Budget(connect_timeout, budget.deadline),
                      connect_timeout)  # fmt: skip
            try:
                addr = s.call([("SENTINEL", "get-master-addr-by-name", u.service)])[0]
            finally:
                s.close()
            if isinstance(addr, ReplyError) or not addr:
                problems.append(f"{host}:{port}: {addr or 'does not know ' + u.service}")
                continue
            conn = _open(u, str(addr[0]), int(addr[1]), budget, connect_timeout)
            return _handshake(conn, u, client_name, True)
        except (OSError, ReplyError) as e:
            problems.append(f"{host}:{port}: {type(e).__name__}: {e}")
    raise ConnectionError(f"no Sentinel gave a usable primary for {u.service!r}: "
                          + "; ".join(problems))  # fmt: skip


def _handshake(conn: _Conn, u: LeanURL, client_name: str | None, check_role: bool) -> _Conn:
    """AUTH, SELECT, CLIENT SETNAME (and ROLE after a Sentinel lookup) in one round trip."""
    cmds: list[tuple[Arg, ...]] = []
    if u.password is not None:
        cmds.append(("AUTH", u.username, u.password) if u.username else ("AUTH", u.password))
    if u.db:
        cmds.append(("SELECT", u.db))
    if client_name:
        cmds.append(("CLIENT", "SETNAME", client_name))
    if check_role:
        cmds.append(("ROLE",))
    try:
        replies = _raise_first(conn.call(cmds)) if cmds else []
        if check_role and replies[-1][0] != "master":
            raise ConnectionError(f"the Sentinels' primary is a {replies[-1][0]} (failover?)")
    except BaseException:
        conn.close()
        raise
    return conn


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _entries(rows: Sequence[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(entry_id, _pairs(fields or ())) for entry_id, fields in rows]


def _info(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


_SHAPE: dict[str, Callable[[Any], Any]] = {"HGETALL": _pairs, "XRANGE": _entries, "XREVRANGE": _entries, "SMEMBERS": set,
          "TIME": lambda r: (int(r[0]), int(r[1])), "INFO": _info,
          "SSCAN": lambda r: (int(r[0]), list(r[1])), "PING": lambda r: r == "PONG"}  # fmt: skip


def _shaped(cmd: Sequence[Arg], reply: Any) -> Any:
    if isinstance(reply, ReplyError):
        return reply
    shape = _SHAPE.get(str(cmd[0]).upper())
    return reply if shape is None else shape(reply)
