"""The Lua scripts of `store/lua/`, read from disk and registered on one node's client.

Every state change is one of these scripts, so it is atomic and audited; `NodeScripts` is
what the node's reads (`reads`), writes (`writes`) and the sidecar's round trip (`store`)
are built from: the client, the node's keys and the registered scripts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

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


class NodeScripts:
    """One node's client, keys and registered scripts, registered once and handed to the
    node's reads, writes and round trip. The client is passed in (decode_responses=True)."""

    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.node = node
        self.keys = NodeKeys(node)
        self.flush: AsyncScript = redis.register_script(plain_script("flush"))
        self.kill: AsyncScript = redis.register_script(audited_script("kill"))
        self.arm: AsyncScript = redis.register_script(audited_script("arm"))
        self.roster: AsyncScript = redis.register_script(audited_script("roster"))
        self.audit_event: AsyncScript = redis.register_script(audited_script("audit_event"))
        self.lease: AsyncScript = redis.register_script(plain_script("lease"))
        self.arm_request: AsyncScript = redis.register_script(audited_script("arm_request"))
        self.read_node: AsyncScript = redis.register_script(plain_script("read"))
        self.scope: AsyncScript = redis.register_script(audited_script("scope"))
