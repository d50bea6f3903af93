"""Is the node's Redis durable (appendonly)? A restart of a Redis without it forgets kills.

The reading of the replies is pure (`from_config`, `from_info`); `check()` is the thin Redis
part. `CONFIG` is often disabled or renamed in production, so `INFO persistence` is the
fallback. `run_id()` says which Redis process answers, so a restart is noticed. Hosts stay
blocked after such a loss anyway (epoch fencing); this check exists so that people learn
about the risk before it happens, not after.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError


@dataclass(frozen=True, slots=True)
class Durability:
    enabled: bool | None  # None: this Redis would not say
    source: str  # "config" | "info" | ""
    detail: str


def from_config(reply: Mapping[Any, Any]) -> bool | None:
    """`CONFIG GET appendonly` as a dict: True for yes, False for no, None if absent."""
    value = str(reply.get("appendonly", "")).strip().lower()
    if value in ("yes", "no"):
        return value == "yes"
    return None


def from_info(info: Mapping[Any, Any]) -> bool | None:
    """`INFO persistence` as a dict: `aof_enabled` 1/0, None if absent."""
    raw = info.get("aof_enabled")
    if raw is None:
        return None
    return str(raw).strip() not in ("0", "", "False", "false")


async def check(redis: Redis) -> Durability:
    """Ask Redis whether appendonly is on; raises only if Redis cannot be reached."""
    try:
        enabled = from_config(await redis.config_get("appendonly"))
        if enabled is not None:
            return Durability(enabled, "config", f"CONFIG GET appendonly: {_yn(enabled)}")
    except ResponseError:
        pass  # CONFIG disabled or renamed: INFO says the same
    try:
        enabled = from_info(await redis.info("persistence"))
    except ResponseError as e:
        return Durability(None, "", f"neither CONFIG nor INFO persistence answered: {e}")
    if enabled is None:
        return Durability(None, "info", "INFO persistence has no aof_enabled field")
    return Durability(enabled, "info", f"INFO persistence aof_enabled: {int(enabled)}")


async def run_id(redis: Redis) -> str:
    """The answering Redis process's `run_id` (new at every restart, and on a failover);
    "" when this Redis will not say."""
    try:
        return str((await redis.info("server")).get("run_id", ""))
    except ResponseError:
        return ""


def _yn(b: bool) -> str:
    return "yes" if b else "no"
