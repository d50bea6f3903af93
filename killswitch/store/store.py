"""The Redis side of killswitch: scripts and reads, one method per round trip.

A thin shell: it formats no key itself (see `keys`), decides nothing (see `state`,
`roster`), and every state change goes through a Lua script so it is atomic and audited.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from killswitch.core.bounds import MAX_EPOCH_JUMP
from killswitch.core.names import NAME_RE
from killswitch.core.state import NodeRead
from killswitch.store.keys import NODES_KEY, NodeKeys

if TYPE_CHECKING:  # only annotations: `Store` also runs over the operator commands' lean client
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

T = TypeVar("T")

FLOW_RETENTION_MS = 15 * 60 * 1000  # long enough for any window and a restarted aggregator
MAX_FLEET_NODES = 10_000  # the fleet registry is read whole: bound what junk can cost


async def fleet_nodes(redis: Redis) -> list[str]:
    """The node names in the fleet registry, sorted (at most MAX_FLEET_NODES).

    The registry is one small set read only by fleet verbs and the fleet rule, rarely
    enough that on Redis Cluster its one slot is never hot. Names are not validated here.
    """
    names: list[str] = []
    cursor: Any = 0
    while True:
        cursor, batch = await redis.sscan(NODES_KEY, cursor, count=1000)
        names.extend(str(n) for n in batch)
        if int(cursor) == 0 or len(names) >= MAX_FLEET_NODES:
            return sorted(set(names))[:MAX_FLEET_NODES]


def _script(name: str) -> str:
    # A plain path, not importlib.resources (which costs a cold `kill` more than the read).
    with open(os.path.join(_LUA_DIR, f"{name}.lua"), encoding="utf-8") as f:
        return f.read()


_LUA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lua")


def audited_script(name: str) -> str:
    """A state-changing script with `prelude.lua` (ks_uint, ks_str, audit_append) in front.

    Any script that changes a node's state or records a decision is loaded this way and
    calls `audit_append(audit_key, audit_head_key, {name, value, ...})` in the same call.
    """
    return _script("prelude") + "\n" + _script(name)


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
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ChangeResult:
    """The outcome of a kill or arm script."""

    changed: bool
    epoch: int
    ver: int
    ts_ms: int
    prev_state: str
    refused: str = ""  # why nothing changed: "not_armed", "fenced" (lease lost) or ""


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """Everything an operator command needs about a node, read in one round trip."""

    now_ms: int
    state: dict[str, str]
    roster: tuple[str, ...]
    reports: dict[str, dict[str, str]]
    confirms: dict[str, dict[str, str]]
    aggregator: dict[str, str]
    leader: str = ""  # lease token of the acting aggregator ("" none)
    leader_ttl_ms: int = -2  # PTTL of the lease key (-1: no TTL, a hand-written lease)
    wrong_types: int = 0  # keys of a type killswitch never writes there (read as empty)
    roster_stored: bool = True  # False: the roster key is gone (Redis lost its data)
    scopes: dict[str, str] = field(default_factory=dict)  # the scopes hash (core.scope)


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


class Store:
    """Redis operations of one node. The client is passed in (decode_responses=True)."""

    def __init__(self, redis: Redis, node: str) -> None:
        self.redis = redis
        self.node = node
        self.keys = NodeKeys(node)
        self._flush: AsyncScript = redis.register_script(_script("flush"))
        self._kill: AsyncScript = redis.register_script(audited_script("kill"))
        self._arm: AsyncScript = redis.register_script(audited_script("arm"))
        self._roster: AsyncScript = redis.register_script(audited_script("roster"))
        self._audit_event: AsyncScript = redis.register_script(audited_script("audit_event"))
        self._lease: AsyncScript = redis.register_script(_script("lease"))
        self._read_node: AsyncScript = redis.register_script(_script("read"))
        self._scope: AsyncScript = redis.register_script(audited_script("scope"))

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
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def concurrently(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """Start `coro` alongside the caller (a task); await the result to join it."""
        import asyncio

        return asyncio.ensure_future(coro)

    async def flush(
        self, host: str, r: FlushReport, version: str
    ) -> tuple[NodeRead, int, bool, dict[str, str]]:
        """The sidecar's one round trip: report, maybe confirm, read the node state.

        Returns the read, Redis server time, whether the script confirmed the KILLED
        state it read (only at `r.held_epoch`), and the scopes hash.
        """
        hk = self.keys.host(host)
        res = await self._flush(
            keys=[hk.report, hk.flow, hk.confirm],
            args=[
                r.boot, r.allowed, r.blocked, r.acked_allowed, r.acked_blocked, r.max_epoch,
                r.view, r.gate, f"{r.orders_per_s:.3f}", r.stale_after_ms, r.regression,
                FLOW_RETENTION_MS, r.confirm_epoch, r.confirm_ver, self.keys.confirms, host,
                version, os.getpid(), r.held_epoch, r.confirmed_epoch, r.confirmed_ver,
                r.cancels, r.limited, r.acked_cancels, r.acked_limited,
                self.keys.state, self.keys.scopes,
                *(x for kv in r.extra for x in kv),
            ],
        )  # fmt: skip
        state, epoch, ver, reason, now, closed_confirm = (str(x) for x in res[:6])
        read = NodeRead.from_hash({"state": state, "epoch": epoch, "ver": ver, "reason": reason})
        flat = [str(x) for x in res[6:]]
        return read, int(now), closed_confirm == "1", dict(zip(flat[::2], flat[1::2], strict=True))

    async def scope(
        self,
        *,
        op: str,
        kind: str,
        value: str,
        actor: str,
        reason: str,
        approvers: Sequence[str] = (),
    ) -> tuple[bool, int, int]:
        """A scoped kill (`op` "kill") or its lift ("arm"): (changed, scope version, now ms)."""
        res = await self._scope(
            keys=[self.keys.scopes, self.keys.audit, self.keys.state, self.keys.audit_head],
            args=[op, kind, value, actor, reason, ",".join(approvers), self.keys.events],
        )
        return bool(int(res[0])), int(res[1]), int(res[2])

    async def kill(
        self,
        *,
        actor: str,
        reason: str,
        cause: str,
        floor: int,
        action: str = "kill",
        only_if_armed: bool = False,
        fence: str = "",
    ) -> ChangeResult:
        """`fence`: a leader lease token the caller must still hold, checked in the script."""
        res = await self._kill(
            keys=[self.keys.state, self.keys.audit, self.keys.leader, self.keys.audit_head],
            args=[
                actor, reason, cause, floor, self.keys.events, action, int(only_if_armed), fence,
                _ceiling(floor),
            ],
        )  # fmt: skip
        return _change(res)

    async def lease(self, token: str, ttl_ms: int) -> tuple[bool, str, int, str]:
        """Acquire or renew the aggregator leader lease (ttl 0: release it if held).

        Returns (held by `token` now, holder token, ms left, what was repaired: a lease key
        without TTL or of another type is deleted by the script, "" when none was).
        """
        res = await self._lease(keys=[self.keys.leader], args=[token, ttl_ms])
        return bool(int(res[0])), str(res[1]), int(res[2]), str(res[3])

    async def arm(
        self, *, actor: str, reason: str, approvers: Sequence[str], floor: int
    ) -> ChangeResult:
        res = await self._arm(
            keys=[self.keys.state, self.keys.audit, self.keys.audit_head],
            args=[actor, reason, ",".join(approvers), floor, self.keys.events, _ceiling(floor)],
        )
        return _change(res)

    async def set_roster(self, hosts: Sequence[str], actor: str) -> bool:
        changed = await self._roster(
            keys=[self.keys.roster, self.keys.audit, self.keys.audit_head],
            args=[actor, *sorted(hosts)],
        )
        await self.redis.sadd(NODES_KEY, self.node)
        return bool(changed)

    async def roster(self) -> tuple[str, ...]:
        """The stored roster; a roster key of the wrong type (junk) reads as none."""
        try:
            members: set[str] = await self.redis.smembers(self.keys.roster)  # type: ignore[assignment]
        except Exception as e:  # redis-py's ResponseError or the lean client's ReplyError
            if not str(e).startswith("WRONGTYPE"):
                raise
            return ()
        # a member that is no host name was written by hand: never a key, never displayed
        return tuple(sorted(m for m in members if NAME_RE.fullmatch(m)))

    async def snapshot(self, roster: Sequence[str] | None = None) -> NodeSnapshot:
        """State, roster, every roster host's report and confirmation, and server time."""
        if roster is None:
            roster = await self.roster()
        snap, _ = await self._read(roster, None)
        return snap

    async def read_flows(
        self, after: dict[str, str], roster: Sequence[str]
    ) -> tuple[dict[str, list[tuple[str, dict[str, str]]]], NodeSnapshot]:
        """New flow entries of every roster host since the IDs in `after`, plus a snapshot."""
        snap, flows = await self._read(roster, after)
        return flows, snap

    async def _read(
        self, roster: Sequence[str], after: dict[str, str] | None
    ) -> tuple[NodeSnapshot, dict[str, list[tuple[str, dict[str, str]]]]]:
        """One atomic script call (`read.lua`); with `after`, also each host's new flows.

        Server time is read first inside the script: a flow entry stamped at or before it was
        written (atomically, by a script) before this read, so the reads see every one of them.
        """
        keys = [
            self.keys.state, self.keys.aggregator, self.keys.leader, self.keys.roster,
            self.keys.scopes,
        ]  # fmt: skip
        args: list[str] = ["0" if after is None else "1"]
        for h in roster:
            hk = self.keys.host(h)
            keys += [hk.report, hk.confirm, hk.flow]
            if after is not None:
                args.append(after.get(h, ""))
        res: list[Any] = await self._read_node(keys=keys, args=args)
        secs, micros = res[0]
        per = 2 if after is None else 3
        reports, confirms, flows = {}, {}, {}
        for i, h in enumerate(roster):
            reports[h] = _pairs(res[5 + per * i])
            confirms[h] = _pairs(res[6 + per * i])
            if after is not None:
                flows[h] = [(str(eid), _pairs(fields)) for eid, fields in res[7 + per * i]]
        snap = NodeSnapshot(
            now_ms=int(secs) * 1000 + int(micros) // 1000,
            state=_pairs(res[1]),
            roster=tuple(roster),
            reports=reports,
            confirms=confirms,
            aggregator=_pairs(res[2]),
            leader=str(res[3] or ""),
            roster_stored=bool(int(res[4])),
            scopes=_pairs(res[-1]),
            leader_ttl_ms=int(res[-3]),
            wrong_types=int(res[-2]),
        )
        return snap, flows

    async def audit(self, limit: int | None = None) -> list[tuple[str, dict[str, str]]]:
        """Audit entries oldest first; with `limit`, the newest `limit` of them. An audit key
        that is not a stream (junk) reads as no entries; `audit --verify` names it."""
        try:
            if limit is None:
                entries: Any = await self.redis.xrange(self.keys.audit)
                return list(entries)
            newest: Any = await self.redis.xrevrange(self.keys.audit, count=limit)
            return list(reversed(newest))
        except Exception as e:  # redis-py's ResponseError or the lean client's ReplyError
            if str(e).startswith("WRONGTYPE"):
                return []
            raise

    async def audit_event(self, action: str, **fields: object) -> str:
        """Append one chained audit entry (e.g. a refused attempt: who, what, why refused).

        For decisions no state-changing script records; those append in their own script.
        Returns the entry's stream ID.
        """
        args: list[str] = ["action", action]
        for name, value in fields.items():
            args += [name, str(value)]
        entry_id = await self._audit_event(keys=[self.keys.audit, self.keys.audit_head], args=args)
        return str(entry_id)

    async def audit_chain(self) -> tuple[list[tuple[str, dict[str, str]]], dict[str, str]]:
        """Every audit entry oldest first and the chain head, read in one MULTI (consistent)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.xrange(self.keys.audit)
        pipe.hgetall(self.keys.audit_head)
        entries, head = await pipe.execute(raise_on_error=False)
        for value in (entries, head):
            if isinstance(value, Exception) and not str(value).startswith("WRONGTYPE"):
                raise value
        # a key of the wrong type reads as empty: an empty stream under a head fails verify
        return (
            [] if isinstance(entries, Exception) else list(entries),
            {"seq": "wrong type"} if isinstance(head, Exception) else dict(head),
        )

    async def publish_aggregator_view(self, view: dict[str, str]) -> None:
        mapping: dict[Any, Any] = dict(view)
        await self.redis.hset(self.keys.aggregator, mapping=mapping)

    async def load_baseline(self) -> dict[str, str]:
        """The stored learned baseline (`Baseline.to_dict()` layout); empty when none."""
        data: Any = await self.redis.hgetall(self.keys.baseline)
        return dict(data)

    async def save_baseline(self, data: dict[str, str]) -> None:
        """Replace the stored baseline in one MULTI: `from_dict` trusts every field it finds,
        so a stale profile bucket must never survive next to a newer layout."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self.keys.baseline)
        if data:
            mapping: dict[Any, Any] = dict(data)
            pipe.hset(self.keys.baseline, mapping=mapping)
        await pipe.execute()

    async def flow_entries(
        self, roster: Sequence[str]
    ) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """Every retained flow entry of each roster host (IDs are Redis server time)."""
        pipe = self.redis.pipeline(transaction=False)
        for h in roster:
            pipe.xrange(self.keys.host(h).flow)
        res: list[Any] = await pipe.execute()
        return {h: list(entries) for h, entries in zip(roster, res, strict=True)}


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A flat [field, value, ...] reply (HGETALL inside a script) as a dict."""
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _ceiling(floor: int) -> int:
    """The highest stored epoch a kill or arm believes, given the hosts' floor (0: no bound,
    when no host reports one)."""
    return floor + MAX_EPOCH_JUMP if floor > 0 else 0


def _change(res: Sequence[Any]) -> ChangeResult:
    return ChangeResult(
        changed=bool(int(res[0])),
        epoch=int(res[1]),
        ver=int(res[2]),
        ts_ms=int(res[3]),
        prev_state=str(res[4]),
        refused=str(res[5]) if len(res) > 5 else "",
    )
