"""What keeps an aggregator fit to act: its leader lease (`Lease`); a check that Redis
persists, the stored roster (re-asserted, and proven against the last signed arm) and the
sidecars' Functions library (loaded at start, again whenever it is gone) (`Upkeep`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from killswitch.aggregator.inputs import InputGuard
from killswitch.aggregator.settings import AggregatorSettings
from killswitch.aggregator.trust import Trust
from killswitch.core.node import leader
from killswitch.store import durability
from killswitch.store.scripts import library_loaded, load_library, sidecar_library
from killswitch.store.store import Store

DURABILITY_CHECK_S = 30.0  # also re-checked at once when the roster turns out to be gone


class NotDurable(RuntimeError):
    """`require_durable` is set and Redis does not (or will not say that it does) persist."""


class Lease:
    """This instance's leader lease: renewed every tick, given up when a kill finds it
    fenced, handed over at stop. Only the holder acts."""

    def __init__(
        self,
        settings: AggregatorSettings,
        store: Store,
        inputs: InputGuard,
        log: Any,
        clock: Callable[[], float],
    ) -> None:
        self.s = settings
        self.store = store
        self.inputs = inputs
        self.log = log
        self.clock = clock
        self.lead = leader.Leadership(
            leader.make_token(settings.instance, uuid.uuid4().hex[:8]), settings.lease_ttl
        )

    def is_leader(self) -> bool:
        return self.lead.is_leader(self.clock())

    def fenced(self) -> None:
        """A kill was refused: paused past the lease while another instance took over."""
        self.lead = leader.on_fenced(self.lead)

    async def hand_over(self) -> None:
        """Release the lease if held, so a standby need not wait it out."""
        if self.lead.is_leader(self.clock()):
            with contextlib.suppress(Exception):
                await self.store.lease(self.lead.token, 0)

    async def renew(self) -> None:
        sent = self.clock()
        held, holder, ttl_ms, repaired = await self.store.lease(
            self.lead.token, int(self.s.lease_ttl * 1000)
        )
        if repaired:
            self.inputs.lease_repaired(repaired)
        reply = leader.LeaseReply(held, holder, ttl_ms)
        self.lead, change = leader.on_reply(self.lead, sent, reply)
        if change:  # taking the lease is routine (info); losing it is worth a look (warning)
            log = self.log.info if change == "LEADER_ACQUIRED" else self.log.warning
            log(change, instance=self.s.instance, holder=leader.instance_of(holder))


class Upkeep:
    """Checks that Redis persists (at start, then every `DURABILITY_CHECK_S`) and keeps the
    stored roster: re-asserted every few seconds, the trusted one learned from the last signed
    arm (`on_roster` is told of each new one); the sidecars' library is checked with it."""

    def __init__(
        self,
        settings: AggregatorSettings,
        redis: Redis,
        store: Store,
        trust: Trust,
        lease: Lease,
        log: Any,
        clock: Callable[[], float],
        *,
        on_roster: Callable[[tuple[str, ...]], None],
    ) -> None:
        self.s = settings
        self.redis = redis
        self.store = store
        self.trust = trust
        self.lease = lease
        self.log = log
        self.clock = clock
        self.on_roster = on_roster
        self.durable: durability.Durability | None = None
        self._durability_at = -1e9
        self._last_roster_check = -1e9
        self._functions_problem = ""  # why the last load of the sidecars' library failed

    async def first_reads(self) -> None:
        await self.check_durability()
        if self.s.require_durable and not (self.durable and self.durable.enabled):
            why = self.durable.detail if self.durable else "not checked"
            raise NotDurable(
                f"Redis is not durable ({why}): a restart would forget kills. Run it with "
                "appendonly yes (appendfsync always or everysec), or drop --require-durable."
            )
        await self._ensure_functions(force=True)
        await self.ensure_roster(force=True)

    async def recheck_durability(self) -> None:
        if self.clock() - self._durability_at >= DURABILITY_CHECK_S:
            await self.check_durability()

    async def _ensure_functions(self, force: bool = False) -> None:
        """The sidecars' Functions library on this node's Redis. Loaded at start (REPLACE: a
        library altered under this name gets its code back) and whenever it is gone (a Redis
        that lost its data); checked with the roster. A credential that may not load it is
        logged, never fatal, and tried again with the roster: this aggregator's own scripts do
        not need it (SECURITY.md)."""
        lib = sidecar_library()
        try:
            if not force and await library_loaded(self.redis, lib, self.store.keys.state):
                return
            await load_library(self.redis, lib)
        except Exception as e:  # NOPERM, or (Cluster) another primary away: never the tick's fault
            why = f"{type(e).__name__}: {e}"
            if why != self._functions_problem:
                self.log.error(
                    "FUNCTIONS_NOT_LOADED", library=lib.name, reason=why,
                    risk="sidecars of this version block until it is loaded (docs/DEPLOY.md)",
                )  # fmt: skip
            self._functions_problem = why
            return
        self._functions_problem = ""
        self.log.info("FUNCTIONS_LOADED", library=lib.name, reason="start" if force else "missing")

    async def ensure_roster(self, force: bool = False) -> None:
        # Re-asserted every few seconds: a Redis that lost its data gets the roster back, and
        # a stored roster edited by hand gets the signed one back.
        now = self.clock()
        if force or now - self._last_roster_check > 5.0:
            self._last_roster_check = now
            await self._ensure_functions()
            self.learn_proof(await self.store.proof())
            signed = bool(self.trust.signed_roster)
            actor = f"aggregator:{self.s.instance}" + (" (signed roster)" if signed else "")
            if await self.store.set_roster(self.trust.roster, actor):
                self.log.info("ROSTER_STORED", roster=list(self.trust.roster), signed=signed)

    def learn_proof(self, text: str) -> None:
        if self.trust.learn(text):
            self.on_roster(tuple(sorted(self.trust.roster)))

    async def check_durability(self) -> None:
        self._durability_at = self.clock()
        d = self.durable = await durability.check(self.redis)
        if d.enabled is not True:
            level = "error" if self.s.require_durable else "warning"
            getattr(self.log, level)(
                "REDIS_NOT_DURABLE", reason=d.detail,
                risk="a Redis restart forgets kills and the roster: hosts stay blocked "
                "(epoch fencing) until two operators arm again",
            )  # fmt: skip

    def ha_view(self) -> dict[str, str]:
        d = self.durable
        durable = "" if d is None or d.enabled is None else str(int(d.enabled))
        return {
            "leader": self.s.instance,
            # the lease token this view is published under: a holder without one is unknown
            "lease": self.lease.lead.token,
            "lease_ttl_s": f"{self.s.lease_ttl:g}",
            "redis_durable": durable,
            "redis_durable_detail": d.detail if d else "",
        }
