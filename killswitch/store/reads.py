"""A node's reads: its state, roster, reports and confirmations in one round trip (the
operator commands' snapshot, the aggregator's flows), its audit stream, its baseline, and
the fleet registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from killswitch.core.node.names import NAME_RE
from killswitch.store.keys import NODES_KEY
from killswitch.store.scripts import NodeScripts

if TYPE_CHECKING:  # only annotations: `Store` also runs over the operator commands' lean client
    from redis.asyncio import Redis

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
    scopes: dict[str, str] = field(default_factory=dict)  # the scopes hash (core.node.scope)
    unlisted: tuple[str, ...] = ()  # hosts that report but are not on the roster
    pending: dict[str, str] | None = None  # a signed arm request waiting for a second operator


MAX_UNLISTED = 64  # off-roster hosts read per round trip: junk in the seen-set cannot grow it


class NodeReads:
    """Reads of one node (`Store` offers each of them)."""

    def __init__(self, scripts: NodeScripts) -> None:
        self.redis = scripts.redis
        self.keys = scripts.keys
        self._read_node = scripts.read_node

    async def proof(self) -> str:
        """The stored proof of the last signed arm ("" none)."""
        value: Any = await self.redis.hget(self.keys.state, "proof")
        return str(value or "")

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
        """State, roster, every roster host's report and confirmation, and server time; also
        a pending arm request and the hosts that report but are not on the roster (a second
        round trip reads their reports, only when there are any)."""
        if roster is None:
            roster = await self.roster()
        snap, _ = await self._read(roster, None)
        if snap.unlisted:
            snap, _ = await self._read(roster, None, snap.unlisted)
        return snap

    async def progress(self, hosts: Sequence[str]) -> NodeSnapshot:
        """The state and just these hosts' reports and confirmations, in one round trip (no
        second read of off-roster hosts): for polling the hosts that have not confirmed yet."""
        snap, _ = await self._read(hosts, None)
        return snap

    async def read_flows(
        self, after: dict[str, str], roster: Sequence[str], extra: Sequence[str] = ()
    ) -> tuple[dict[str, list[tuple[str, dict[str, str]]]], NodeSnapshot]:
        """New flow entries of every roster host (and of the `extra` off-roster hosts) since
        the IDs in `after`, plus a snapshot."""
        snap, flows = await self._read(roster, after, extra)
        return flows, snap

    async def _read(
        self, roster: Sequence[str], after: dict[str, str] | None, extra: Sequence[str] = ()
    ) -> tuple[NodeSnapshot, dict[str, list[tuple[str, dict[str, str]]]]]:
        """One atomic script call (`read.lua`); with `after`, also each host's new flows.

        Server time is read first inside the script: a flow entry stamped at or before it was
        written (atomically, by a script) before this read, so the reads see every one of them.
        """
        keys = [
            self.keys.state, self.keys.aggregator, self.keys.leader, self.keys.roster,
            self.keys.scopes, self.keys.hosts, self.keys.pending_arm,
        ]  # fmt: skip
        args: list[str] = ["0" if after is None else "1"]
        extra = [h for h in extra if h not in roster][:MAX_UNLISTED]
        hosts = [*roster, *extra]
        for h in hosts:
            hk = self.keys.host(h)
            keys += [hk.report, hk.confirm, hk.flow]
            if after is not None:
                args.append(after.get(h, ""))
        res: list[Any] = await self._read_node(keys=keys, args=args)
        secs, micros = res[0]
        per = 2 if after is None else 3
        reports, confirms, flows = {}, {}, {}
        for i, h in enumerate(hosts):
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
            leader_ttl_ms=int(res[-5]),
            wrong_types=int(res[-4]),
            unlisted=tuple(
                sorted({str(h) for h in res[-3] if NAME_RE.fullmatch(str(h))} - set(roster))
            )[:MAX_UNLISTED],
            pending=_pairs(res[-2]) or None,
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

    async def load_baseline(self) -> dict[str, str]:
        """The stored learned baseline (`Baseline.to_dict()` layout); empty when none."""
        data: Any = await self.redis.hgetall(self.keys.baseline)
        return dict(data)

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
