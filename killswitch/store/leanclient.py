"""`LeanRedis`: the `redis.asyncio.Redis` subset `Store` uses, over `store.lean`'s transport.

Its coroutines never suspend (the socket calls block, bounded by one deadline), so `drive()`
runs an operator action to completion with no event loop and no asyncio import. `LeanStore`
is `Store` over it, with the two places where `Store` needs concurrency done in order.
"""

from __future__ import annotations

import select
import time
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

from killswitch.store.lean import Arg, LeanURL, ReplyError, _Budget, _Conn, _shaped, connect
from killswitch.store.store import Store, Wake

T = TypeVar("T")


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that awaits only `LeanRedis` calls to its result, without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return cast(T, done.value)
    coro.close()
    raise RuntimeError("the action awaited an event loop; the lean transport cannot drive it")


class _Commands:
    """redis-py's method names for the commands `Store` sends; any other simple command works
    through `__getattr__` (positional arguments, then keyword ones as `NAME value`)."""

    def _cmd(self, *args: Arg) -> Any:
        raise NotImplementedError

    def xrange(self, key: str, min: str = "-", max: str = "+", count: int | None = None) -> Any:
        return self._cmd("XRANGE", key, min, max, *_opt("COUNT", count))

    def xrevrange(self, key: str, max: str = "+", min: str = "-", count: int | None = None) -> Any:
        return self._cmd("XREVRANGE", key, max, min, *_opt("COUNT", count))

    def sscan(
        self, key: str, cursor: int = 0, match: str | None = None, count: int | None = None
    ) -> Any:
        return self._cmd("SSCAN", key, cursor, *_opt("MATCH", match), *_opt("COUNT", count))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or not name.islower():
            raise AttributeError(name)

        def command(*args: Arg, **kw: Arg | None) -> Any:
            opts = [x for k, v in kw.items() if v is not None for x in (k.upper(), v)]
            return self._cmd(*name.upper().split("_"), *args, *opts)  # client_setname: 2 words

        return command


def _opt(name: str, value: Arg | None) -> tuple[Arg, ...]:
    return () if value is None else (name, value)


class LeanRedis(_Commands):
    """Connects on the first command; one connection for commands, one more to subscribe."""

    def __init__(
        self,
        url: LeanURL,
        *,
        socket_timeout: float = 2.0,
        client_name: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self.url = url
        self.client_name = client_name
        self.budget = _Budget(socket_timeout, deadline)
        self._conn: _Conn | None = None
        self._subs: list[_Conn] = []

    def _c(self) -> _Conn:
        if self._conn is None:
            self._conn = connect(self.url, socket_timeout=self.budget.per_op,
                                 client_name=self.client_name, budget=self.budget)  # fmt: skip
        return self._conn

    def _run(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        try:
            return [_shaped(c, r) for c, r in zip(commands, self._c().call(commands), strict=True)]
        except BaseException:
            self._drop()  # a half-read reply stream is useless: reconnect on the next call
            raise

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def execute_command(self, *args: Arg) -> Any:
        reply = self._run([args])[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def _cmd(self, *args: Arg) -> Any:
        return self.execute_command(*args)

    def register_script(self, text: str) -> LeanScript:
        return LeanScript(self, text)

    def pipeline(self, transaction: bool = False) -> LeanPipeline:
        return LeanPipeline(self, transaction)

    def subscriber(self, channel: str) -> LeanWake:
        """A second connection subscribed to `channel` (closed with the client)."""
        conn = connect(self.url, socket_timeout=self.budget.per_op, client_name=self.client_name,
                       budget=self.budget)  # fmt: skip
        self._subs.append(conn)
        reply = conn.call([("SUBSCRIBE", channel)])[0]
        if isinstance(reply, ReplyError):
            raise reply
        return LeanWake(conn)

    async def aclose(self) -> None:
        self._drop()
        for conn in self._subs:
            conn.close()
        self._subs.clear()


class LeanPipeline(_Commands):
    """Commands queued and sent in one write, replies read in order (in MULTI/EXEC when
    `transaction`)."""

    def __init__(self, client: LeanRedis, transaction: bool) -> None:
        self.client = client
        self.transaction = transaction
        self.commands: list[tuple[Arg, ...]] = []

    def execute_command(self, *args: Arg) -> LeanPipeline:
        self.commands.append(args)
        return self

    def _cmd(self, *args: Arg) -> Any:
        return self.execute_command(*args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        commands, self.commands = self.commands, []
        if self.transaction:
            sent = [("MULTI",), *commands, ("EXEC",)]
            raw = self.client._run(sent)
            done = raw[-1]
            if isinstance(done, ReplyError):  # EXECABORT: name the command that failed
                raise next((r for r in raw[1:-1] if isinstance(r, ReplyError)), done)
            replies = [_shaped(c, r) for c, r in zip(commands, done, strict=True)]
        else:
            replies = self.client._run(commands)
        if raise_on_error:
            for r in replies:
                if isinstance(r, ReplyError):
                    raise r
        return replies


class LeanScript:
    """EVALSHA, and EVAL (which also caches it) when the server does not know the script yet."""

    def __init__(self, client: LeanRedis, text: str) -> None:
        self.client = client
        self.text = text
        self.sha = ""  # hashed on first use: `Store` registers scripts a verb may never run

    async def __call__(self, keys: Sequence[Arg] = (), args: Sequence[Arg] = ()) -> Any:
        if not self.sha:
            import hashlib  # only verbs that run a script pay for it (`status` runs none)

            self.sha = hashlib.sha1(self.text.encode("utf-8"), usedforsecurity=False).hexdigest()
        tail = (len(keys), *keys, *args)
        try:
            return await self.client.execute_command("EVALSHA", self.sha, *tail)
        except ReplyError as e:
            if not str(e).startswith("NOSCRIPT"):
                raise
        return await self.client.execute_command("EVAL", self.text, *tail)


class LeanWake:
    """`Wake` over a subscribed connection: `wait` returns when a message arrives or at timeout."""

    def __init__(self, conn: _Conn | None) -> None:
        self.conn = conn

    def _drain(self) -> bool:
        got = False
        while self.conn is not None and self.conn.reader.gets() is not False:
            got = True
        return got

    def clear(self) -> None:
        self._drain()

    async def wait(self, timeout: float) -> None:
        if self.conn is None:
            # No subscription: the caller polls. Blocking is right here: nothing else runs.
            time.sleep(max(timeout, 0.0))  # noqa: ASYNC251
            return
        if self._drain():
            return
        sock = self.conn.sock
        pending = getattr(sock, "pending", None)  # TLS may hold decrypted bytes already
        if (pending is not None and pending()) or select.select([sock], [], [], max(timeout, 0))[0]:
            sock.settimeout(self.conn.budget.left())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("Redis closed the subscription")
            self.conn.reader.feed(data)


class LeanStore(Store):
    """`Store` over `LeanRedis`: the same scripts, keys and reads, no event loop."""

    def __init__(self, redis: LeanRedis, node: str) -> None:
        super().__init__(cast(Any, redis), node)  # the subset Store's operator methods use
        self.lean = redis

    @asynccontextmanager
    async def confirmations(self) -> AsyncIterator[Wake]:
        try:
            wake = self.lean.subscriber(self.keys.confirms)
        except (OSError, ReplyError):
            wake = LeanWake(None)  # without pub/sub we still poll; it only costs latency
        yield wake

    def concurrently(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        return coro  # no second task here: it runs when awaited
