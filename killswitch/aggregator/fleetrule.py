"""The fleet volume rule's shell: one aggregator of the whole fleet (the holder of the fleet
leader lease) sums every node's window and kills every armed node when the sum exceeds
`--fleet-max-orders` (cause `fleet_cap`). It decides nothing itself (`core.rules.fleetcap` does).

Fencing: the fleet lease lives outside every node's hash slot, so unlike a node trip the
kill script cannot re-check it atomically on Redis Cluster. It is renewed just before the
kills instead. A fleet leader frozen past its lease that wakes up and kills anyway has made
a false trip, never an unsafe one: closing a gate needs no proof.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from killswitch.core.node import leader
from killswitch.core.node.bounds import uint_or
from killswitch.core.node.names import InvalidName, check_name
from killswitch.core.node.roster import epoch_floor, quorum
from killswitch.core.rules import fleetcap
from killswitch.store.fleet import FleetStore
from killswitch.store.store import Store, fleet_nodes

CAUSE = "fleet_cap"


class FleetRule:
    """Runs once per aggregator tick; acts only while this instance holds the fleet lease."""

    def __init__(
        self,
        redis: Redis,
        *,
        cap: int,
        window_ms: int,
        instance: str,
        lease_ttl: float,
        max_age_ms: int,
        log: Any,
        on_trip: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = redis
        self.store = FleetStore(redis)
        self.cap = cap
        self.window_ms = window_ms
        self.max_age_ms = max_age_ms
        self.log = log
        self.on_trip = on_trip  # called with each node name the rule killed (metrics)
        self.clock = clock
        self.lead = leader.Leadership(leader.make_token(instance, uuid.uuid4().hex[:8]), lease_ttl)
        self.decision: fleetcap.FleetDecision | None = None
        self._level = 0
        self._cooldown_until_ms = -1
        self._stale: tuple[str, ...] = ()

    def is_leader(self) -> bool:
        return self.lead.is_leader(self.clock())

    async def renew(self) -> None:
        sent = self.clock()
        held, holder, ttl_ms, repaired = await self.store.lease(
            self.lead.token, int(self.lead.ttl_s * 1000)
        )
        if repaired:
            self.log.error("LEASE_REPAIRED", reason=repaired, lease="fleet")
        self.lead, change = leader.on_reply(
            self.lead, sent, leader.LeaseReply(held, holder, ttl_ms)
        )
        if change:
            self.log.warning(
                f"FLEET_{change}", instance=self.lead.instance, holder=leader.instance_of(holder)
            )

    async def release(self) -> None:
        if self.is_leader():
            await self.store.lease(self.lead.token, 0)

    async def tick(self, now_ms: int) -> None:
        await self.renew()
        if not self.is_leader():
            self.decision = None
            return
        nodes = []
        for n in await fleet_nodes(self.redis):
            try:
                nodes.append(check_name("node", n))
            except InvalidName:
                continue  # junk in the registry is reported by `status --fleet`
        views = {n: fleetcap.parse_view(v) for n, v in (await self.store.views(nodes)).items()}
        d = self.decision = fleetcap.evaluate(
            views,
            cap=self.cap,
            window_ms=self.window_ms,
            now_ms=now_ms,
            max_age_ms=self.max_age_ms,
        )
        if d.stale != self._stale:
            self._stale = d.stale
            if d.stale:
                self.log.warning("FLEET_VIEW_STALE", nodes=list(d.stale),
                                 effect="not summed: the fleet total is a lower bound")  # fmt: skip
        if d.level > self._level:
            self.log.warning("FLEET_LIMIT_WARNING", level=d.level, total=d.total, cap=self.cap)
        self._level = d.level
        if d.trip and now_ms >= self._cooldown_until_ms:
            await self._trip(d, now_ms)

    async def _trip(self, d: fleetcap.FleetDecision, now_ms: int) -> None:
        await self.renew()  # the closest this rule gets to a fence (see the module doc)
        if not self.is_leader():
            return
        # One window of cooldown: orders counted before the kill must leave the window
        # before the same volume can trip again.
        self._cooldown_until_ms = now_ms + self.window_ms
        detail = (
            f"fleet cap: {d.total} orders across {len(d.counted)} nodes within "
            f"{self.window_ms / 1000:g}s > {self.cap}"
        )
        killed = []
        for n in d.counted:
            store = Store(self.redis, n)
            snap = await store.snapshot()
            st = snap.state
            stored = uint_or(st.get("epoch"))
            q = quorum(
                snap.roster, stored, uint_or(st.get("ver")),
                snap.reports, snap.confirms, snap.now_ms, st.get("state") or "",
            )  # fmt: skip
            res = await store.kill(
                actor=f"aggregator:{self.lead.instance}",
                reason=detail,
                cause=CAUSE,
                floor=epoch_floor(q.hosts, stored),
                action="trip",
                only_if_armed=True,
            )
            if res.changed:
                killed.append(n)
                self.on_trip(n)
        self.log.error("FLEET_TRIP", cause=CAUSE, reason=detail, killed=killed,
                       by_node=dict(d.by_node), not_summed=list(d.stale + d.other_window))  # fmt: skip
