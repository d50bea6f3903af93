"""The Redis side of killswitch: scripts and reads, one method per round trip.

A thin shell: it formats no key itself (see `keys`), decides nothing (see `state`,
`roster`), and every state change goes through a Lua script so it is atomic and audited.
`Store` holds a node's reads (`NodeReads`) and writes (`NodeWrites`), built over one set
of registered scripts, and offers each of their methods as its own; what the sidecar's round
trip and the operator commands' wait for confirmations need is defined here.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar

from killswitch.core.node.state import NodeRead
from killswitch.store.reads import (
    MAX_FLEET_NODES,
    MAX_UNLISTED,
    NodeReads,
    NodeSnapshot,
    fleet_nodes,
)
from killswitch.store.scripts import NodeScripts
from killswitch.store.writes import ChangeResult, NodeWrites, epoch_ceiling

if TYPE_CHECKING:  # only annotations: `Store` also runs over the operator commands' lean client
    from redis.asyncio import Redis

__all__ = [
    "FLOW_RETENTION_MS",
    "MAX_FLEET_NODES",
    "MAX_UNLISTED",
    "ChangeResult",
    "FlushReply",
    "FlushReport",
    "NodeSnapshot",
    "Store",
    "Wake",
    "epoch_ceiling",
    "fleet_nodes",
]

T = TypeVar("T")
P = ParamSpec("P")

FLOW_RETENTION_MS = 15 * 60 * 1000  # long enough for any window and a restarted aggregator


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What a sidecar reports in its round trip (cumulative counts since its boot)."""

    boot: str
    allowed: int
    blocked: int
    acked_allowed: int
    acked_blocked: int
    max_epoch: int
    view: str
    gate: str
    orders_per_s: float
    stale_after_ms: int
    regression: str
    confirm_epoch: int = 0
    confirm_ver: int = 0
    # The gate was closed by a kill notice for this epoch and the host has already recorded
    # (epoch, KILLED) locally: a KILLED read at exactly this epoch is confirmed in this call.
    held_epoch: int = 0
    confirmed_epoch: int = 0  # what this host last confirmed: not confirmed again
    confirmed_ver: int = 0
    cancels: int = 0  # cumulative CANCELs allowed since boot
    limited: int = 0  # cumulative orders refused by a local limit (included in `blocked`)
    acked_cancels: int = 0
    acked_limited: int = 0
    # More report fields (name -> value), written as they are: limits digest, flat, on-kill.
    proof_digest: str = ""  # sha1 of the arm proof this host holds (Redis returns a new one)
    proof_refusal: str = ""  # why this host refuses the current arm ("" none)
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class FlushReply:
    """What the sidecar's round trip returns."""

    read: NodeRead
    now_ms: int
    closed_confirm: bool  # the script confirmed the KILLED state it read (at `held_epoch`)
    proof_digest: str  # sha1 of the stored arm proof ("da39..." for none)
    proof: str | None  # the proof itself when its digest differs from the one sent, else None
    scopes: dict[str, str] = field(default_factory=dict)  # the scopes hash (core.node.scope)
    fence: bool = False  # the node's kill asks for the kill fence (`kill --fence`)
    prev_boot: str = ""  # the boot that wrote the host's report before this call ("" none)
    prev_pid: str = ""  # and its pid


class Wake(Protocol):
    """Set whenever a host publishes a confirmation (see `Store.confirmations`)."""

    def clear(self) -> None: ...

    async def wait(self, timeout: float) -> None:
        """Return when woken since the last `clear()`, or after `timeout` seconds."""


class _EventWake:
    def __init__(self) -> None:
        import asyncio

        self.event = asyncio.Event()

    def clear(self) -> None:
        self.event.clear()

    async def wait(self, timeout: float) -> None:
        import asyncio

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)


def _read(method: Callable[Concatenate[NodeReads, P], T]) -> Callable[Concatenate[Store, P], T]:
    """`method` of the store's reads, offered as the store's own (same signature)."""

    @functools.wraps(method)
    def call(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return method(self.reads, *args, **kwargs)

    return call


def _write(method: Callable[Concatenate[NodeWrites, P], T]) -> Callable[Concatenate[Store, P], T]:
    """`method` of the store's writes, offered as the store's own (same signature)."""

    @functools.wraps(method)
    def call(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return method(self.writes, *args, **kwargs)

    return call


class Store:
    """Redis operations of one node. The client is passed in (decode_responses=True)."""

    def __init__(self, redis: Redis, node: str) -> None:
        scripts = self.scripts = NodeScripts(redis, node)
        self.redis = redis
        self.node = node
        self.keys = scripts.keys
        self.reads = NodeReads(scripts)
        self.writes = NodeWrites(scripts)
        self._flush = scripts.flush

    def guard_functions(self, guard: Callable[[], Awaitable[None]]) -> None:
        """Run `guard` before every round trip (see `NodeScripts.guard_functions`)."""
        self.scripts.guard_functions(guard)

    # Callers ask the store; a subclass may override any of these like a method.
    proof = _read(NodeReads.proof)
    roster = _read(NodeReads.roster)
    snapshot = _read(NodeReads.snapshot)
    progress = _read(NodeReads.progress)
    read_flows = _read(NodeReads.read_flows)
    audit = _read(NodeReads.audit)
    audit_chain = _read(NodeReads.audit_chain)
    load_baseline = _read(NodeReads.load_baseline)
    flow_entries = _read(NodeReads.flow_entries)
    scope = _write(NodeWrites.scope)
    kill = _write(NodeWrites.kill)
    lease = _write(NodeWrites.lease)
    arm = _write(NodeWrites.arm)
    arm_request = _write(NodeWrites.arm_request)
    set_roster = _write(NodeWrites.set_roster)
    audit_event = _write(NodeWrites.audit_event)
    publish_aggregator_view = _write(NodeWrites.publish_aggregator_view)
    save_baseline = _write(NodeWrites.save_baseline)

    @contextlib.asynccontextmanager
    async def confirmations(self) -> AsyncIterator[Wake]:
        """A `Wake` set whenever a host publishes a confirmation (subscribed on entry)."""
        import asyncio

        wake = _EventWake()
        pubsub = self.redis.pubsub()
        task: asyncio.Task[None] | None = None
        try:
            await pubsub.subscribe(self.keys.confirms)

            async def pump() -> None:
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is not None:
                        wake.event.set()

            task = asyncio.create_task(pump())
        except Exception:
            pass  # without pub/sub we still poll; it only costs latency
        try:
            yield wake
        finally:
            if task is not None:
                task.cancel()
                # Waited for, not awaited: on CPython 3.11 a frame resumed by the
                # CancelledError that `await task` throws loses its trace events
                # (python/cpython#106749), so coverage missed every line a caller ran after
                # this block. The pump's own failure is retrieved and dropped, as before.
                await asyncio.wait({task})
                if not task.cancelled():
                    task.exception()
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    def concurrently(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Start `coro` alongside the caller (a task); await the result to join it."""
        import asyncio

        return asyncio.ensure_future(coro)

    async def report_fields(self, host: str, fields: Sequence[tuple[str, str]]) -> None:
        """Overwrite some fields of the host's last report without renewing its lease (a
        stopping sidecar's last word on its on-kill command)."""
        await self.redis.hset(self.keys.host(host).report, mapping=dict(fields))

    async def flush(self, host: str, r: FlushReport, version: str) -> FlushReply:
        """The sidecar's one round trip: report, maybe confirm, read the node state, the
        scopes and (when it changed) the signed arm proof."""
        hk = self.keys.host(host)
        res = await self._flush(
            keys=[hk.report, hk.flow, hk.confirm, self.keys.hosts],
            args=[
                r.boot, r.allowed, r.blocked, r.acked_allowed, r.acked_blocked, r.max_epoch,
                r.view, r.gate, f"{r.orders_per_s:.3f}", r.stale_after_ms, r.regression,
                FLOW_RETENTION_MS, r.confirm_epoch, r.confirm_ver, self.keys.confirms, host,
                version, os.getpid(), r.held_epoch, r.confirmed_epoch, r.confirmed_ver,
                r.cancels, r.limited, r.acked_cancels, r.acked_limited,
                self.keys.state, self.keys.scopes, r.proof_digest, r.proof_refusal,
                *(x for kv in r.extra for x in kv),
            ],
        )  # fmt: skip
        state, epoch, ver, reason, now, closed_confirm, digest, proof, fence = (
            str(x) for x in res[:9]
        )
        read = NodeRead.from_hash({"state": state, "epoch": epoch, "ver": ver, "reason": reason})
        flat = [str(x) for x in res[11:]]
        return FlushReply(
            read,
            int(now),
            closed_confirm == "1",
            digest,
            None if digest == r.proof_digest else proof,
            dict(zip(flat[::2], flat[1::2], strict=True)),
            fence == "1",
            prev_boot=str(res[9]),
            prev_pid=str(res[10]),
        )
