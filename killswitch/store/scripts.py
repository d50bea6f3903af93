"""The Lua scripts of `store/lua/`, read from disk and registered on one node's client.

Every state change is one of these scripts, so it is atomic and audited; `NodeScripts` is
what the node's reads (`reads`), writes (`writes`) and the sidecar's round trip (`store`)
are built from: the client, the node's keys and the registered scripts.

The sidecar's round trip is a Redis Function of the library `sidecar_library()` (named by a
digest of its code), never EVAL: a sidecar's credential may run only what the aggregator (or
an operator) loaded, so a trading host cannot run Lua of its own (docs/SECURITY.md). The
sidecar never loads the library and never falls back to EVAL: missing, it fails closed.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from killswitch.store.keys import NodeKeys

if TYPE_CHECKING:  # only annotations: `Store` also runs over the operator commands' lean client
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

_LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")


def plain_script(name: str) -> str:
    """The text of `store/lua/<name>.lua` as it is (a script that records no decision)."""
    # A plain path, not importlib.resources (which costs a cold `kill` more than the read).
    with open(os.path.join(_LUA_DIR, f"{name}.lua"), encoding="utf-8") as f:
        return f.read()


def audited_script(name: str) -> str:
    """A state-changing script with `prelude.lua` (ks_uint, ks_str, audit_append) in front.

    Any script that changes a node's state or records a decision is loaded this way and
    calls `audit_append(audit_key, audit_head_key, {name, value, ...})` in the same call.
    """
    return plain_script("prelude") + "\n" + plain_script(name)


# The sidecar's scripts, each a function of the library; `ping` only says the library is there.
SIDECAR_FUNCTIONS = ("flush",)
_FUNCTION = (
    "redis.register_function{{function_name='{fn}', callback=function(KEYS, ARGV)\n"
    "{body}\nend{flags}}}\n"
)
_NOT_FOUND = "Function not found"


@dataclass(frozen=True, slots=True)
class Library:
    """A Redis Functions library: its name (`killswitch_<digest of its code>`) and code."""

    name: str
    code: str

    def function(self, script: str) -> str:
        """The name `FCALL` takes for `script`; a library of another version has other names."""
        return f"{self.name}_{script}"


@functools.cache
def sidecar_library() -> Library:
    """The library of the sidecar's scripts, built from `store/lua/` as they are now.

    Function names are global in Redis, so each carries the library's digest: two versions
    load side by side (a rolling upgrade), and a sidecar can only ever call the version it
    was built with.
    """
    parts = [
        _FUNCTION.format(fn="@LIB@_" + n, body=plain_script(n), flags="") for n in SIDECAR_FUNCTIONS
    ]
    parts.append(
        _FUNCTION.format(fn="@LIB@_ping", body="return '@LIB@'", flags=", flags={'no-writes'}")
    )
    body = "".join(parts)
    digest = hashlib.sha1(body.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]
    name = f"killswitch_{digest}"
    return Library(name, f"#!lua name={name}\n" + body.replace("@LIB@", name))


class FunctionsMissing(RuntimeError):
    """The Redis this sidecar talks to has no library of its version loaded."""

    def __init__(self, library: str) -> None:
        self.library = library
        super().__init__(
            f"Redis Functions library {library} not loaded: this sidecar blocks until an "
            "aggregator of its version loads it (at start, or within 5 s of its loss) or an "
            "admin does (docs/DEPLOY.md)"
        )


class FunctionsTampered(FunctionsMissing):
    """Redis holds a library under this version's name whose code is not this version's."""

    def __init__(self, library: str, digest: str) -> None:
        self.library, self.digest = library, digest
        RuntimeError.__init__(
            self,
            f"Redis Functions library {library} holds code that is not this version's (sha1 "
            f"{digest}): replaced under its name. This sidecar blocks and does not call it until "
            "an aggregator restores it (within 5 s) or an admin does (docs/SECURITY.md)",
        )


def code_digest(code: str) -> str:
    """A short digest of a library's code, to name a replaced one in logs (never to trust)."""
    return hashlib.sha1(code.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


def _entries(reply: Any) -> list[dict[str, Any]]:
    """The libraries of a FUNCTION LIST reply as dicts: RESP2 (flat pairs) or RESP3 (maps),
    from one server or (a Cluster client) from every primary."""
    if isinstance(reply, dict):
        if "library_name" in reply:
            return [reply]
        return [e for v in reply.values() for e in _entries(v)]  # {node: reply} of a Cluster
    if isinstance(reply, list | tuple):
        if reply and reply[0] == "library_name":
            return [dict(zip(reply[::2], reply[1::2], strict=False))]
        return [e for v in reply for e in _entries(v)]
    return []


async def library_codes(redis: Redis, name: str) -> list[str]:
    """The code of each library Redis holds under `name` (`FUNCTION LIST LIBRARYNAME <name>
    WITHCODE`): none when it is not loaded, one per primary of a Redis Cluster."""
    reply = await redis.function_list(library=name, withcode=True)
    return [str(e.get("library_code", "")) for e in _entries(reply) if e["library_name"] == name]


def function_missing(e: BaseException) -> bool:
    """Whether a Redis error reply says the function called does not exist."""
    return _NOT_FOUND in str(e)


class SidecarFunction:
    """`FCALL` of one function of the sidecar's library, called like a registered script
    (the library is built on first use: an operator command never runs it). A `guard`, when
    set, runs before every call and may refuse it (the sidecar's check of the library's code).
    """

    def __init__(self, redis: Redis, script: str) -> None:
        self.redis = redis
        self.script = script
        self.guard: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        library = sidecar_library()
        if self.guard is not None:
            await self.guard()
        try:
            return await self.redis.fcall(library.function(self.script), len(keys), *keys, *args)
        except Exception as e:
            if function_missing(e):
                raise FunctionsMissing(library.name) from None
            raise


async def library_loaded(redis: Redis, library: Library, key: str) -> bool:
    """Whether `library` answers on the server that holds `key` (FCALL_RO of its `ping`)."""
    try:
        got = await redis.fcall_ro(library.function("ping"), 1, key)
    except Exception as e:
        if function_missing(e):
            return False
        raise
    return str(got) == library.name


async def load_library(redis: Redis, library: Library) -> None:
    """`FUNCTION LOAD REPLACE` (on every primary of a Redis Cluster; replicas get it by
    replication), so a library of this name holds exactly this code afterwards."""
    await redis.function_load(library.code, replace=True)


class NodeScripts:
    """One node's client, keys and registered scripts, registered once and handed to the
    node's reads, writes and round trip. The client is passed in (decode_responses=True)."""

    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.node = node
        self.keys = NodeKeys(node)
        self.flush = SidecarFunction(redis, "flush")
        self.kill: AsyncScript = redis.register_script(audited_script("kill"))
        self.arm: AsyncScript = redis.register_script(audited_script("arm"))
        self.roster: AsyncScript = redis.register_script(audited_script("roster"))
        self.audit_event: AsyncScript = redis.register_script(audited_script("audit_event"))
        self.lease: AsyncScript = redis.register_script(plain_script("lease"))
        self.arm_request: AsyncScript = redis.register_script(audited_script("arm_request"))
        self.read_node: AsyncScript = redis.register_script(plain_script("read"))
        self.scope: AsyncScript = redis.register_script(audited_script("scope"))

    def guard_functions(self, guard: Callable[[], Awaitable[None]]) -> None:
        """Run `guard` before every call of the sidecar's library (it raises to refuse one)."""
        self.flush.guard = guard


def main() -> int:
    """`python -m killswitch.store.scripts`: the sidecars' library on stdout, for an admin
    to load with a credential of their choice (`redis-cli ... -x FUNCTION LOAD REPLACE`)."""
    print(sidecar_library().code, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
