"""What keeps an aggregator fit to act: its leader lease (`Lease`); a check that Redis
persists, the stored roster (re-asserted, and proven against the last signed arm) and the
sidecars' Functions library (loaded at start, again whenever it is gone or holds other
code) (`Upkeep`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis

from killswitch.aggregator.inputs import InputGuard
from killswitch.aggregator.metrics import Instruments
from killswitch.aggregator.settings import AggregatorSettings
from killswitch.aggregator.trust import Trust
from killswitch.core.node import leader
from killswitch.store import durability
from killswitch.store.scripts import code_digest, library_codes, load_library, sidecar_library
from killswitch.store.store import Store
from killswitch.store.writes import CREATED

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
        instruments: Instruments,
        on_roster: Callable[[tuple[str, ...]], None],
    ) -> None:
        self.s = settings
        self.redis = redis
        self.store = store
        self.trust = trust
        self.lease = lease
        self.log = log
        self.clock = clock
        self.instruments = instruments
        self.on_roster = on_roster
        self.durable: durability.Durability | None = None
        self._durability_at = -1e9
        self._last_roster_check = -1e9
        self._roster_seen = False  # this instance has stored (or found) the roster
        self._redis_run = ""  # the run_id of the Redis process last checked
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
        """The sidecars' Functions library on this node's Redis, with exactly its code. Checked
        at start (then loaded, REPLACE) and with the roster (every 5 s); loaded again whenever
        it is gone (a Redis that lost its data) or holds other code under its name (replaced by
        another credential that may load libraries: FUNCTIONS_REPLACED, counted). A credential
        that may not load it is logged, never fatal, and tried again with the roster: this
        aggregator's own scripts do not need it (SECURITY.md)."""
        lib = sidecar_library()
        try:
            codes = await library_codes(self.redis, lib.name)
            wrong = [c for c in codes if c != lib.code]
            if codes and not wrong and not force:
                return
            reason = "replaced" if wrong else "start" if force else "missing"
            if wrong:
                self.instruments.functions_replaced.inc()
                self.log.error(
                    "FUNCTIONS_REPLACED", library=lib.name, found_sha1=code_digest(wrong[0]),
                    action="loading this version's code back",
                    risk="sidecars block until it is back; calls made before their check ran "
                    "the replaced code (docs/SECURITY.md)",
                )  # fmt: skip
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
        self.log.info("FUNCTIONS_LOADED", library=lib.name, reason=reason)

    async def ensure_roster(self, force: bool = False, *, gone: bool = False) -> None:
        """Re-asserted every few seconds: a Redis that lost its data gets the roster back, and
        a stored roster edited by hand gets the signed one back. Whichever write puts back a
        roster that was gone says so (`ROSTER_MISSING`), however the check and the loss fall:
        the script that stores it reports the absence it found. `gone`: the tick's read has
        already seen it missing."""
        now = self.clock()
        if force or now - self._last_roster_check > 5.0:
            self._last_roster_check = now
            await self._ensure_functions()
            self.learn_proof(await self.store.proof())
            signed = bool(self.trust.signed_roster)
            actor = f"aggregator:{self.s.instance}" + (" (signed roster)" if signed else "")
            wrote = await self.store.set_roster(self.trust.roster, actor)
            # The first store of this instance is a new node's (or one whose Redis lost its
            # data while no aggregator ran: nothing here can tell them apart).
            if gone or (wrote == CREATED and self._roster_seen):
                await self._roster_missing()
            self._roster_seen = True
            if wrote:
                self.log.info("ROSTER_STORED", roster=list(self.trust.roster), signed=signed)

    async def _roster_missing(self) -> None:
        """Redis lost this node's data (a restart without persistence, or a failover that lost
        writes): said loudly, with whether the node's state (its kills) went too, and
        durability re-checked at once."""
        state_gone = not await self.redis.exists(self.store.keys.state)
        self.log.error(
            "ROSTER_MISSING", reason="the node's roster is gone from Redis: Redis lost its data",
            state_gone=state_gone, action="roster stored again; hosts that knew a later epoch stay "
            "blocked until two operators arm",
        )  # fmt: skip
        await self.check_durability()

    def learn_proof(self, text: str) -> None:
        if self.trust.learn(text):
            self.on_roster(tuple(sorted(self.trust.roster)))

    async def check_durability(self) -> None:
        self._durability_at = self.clock()
        d = self.durable = await durability.check(self.redis)
        await self._check_restart(d)
        if d.enabled is not True:
            level = "error" if self.s.require_durable else "warning"
            getattr(self.log, level)(
                "REDIS_NOT_DURABLE", reason=d.detail,
                risk="a Redis restart forgets kills and the roster: hosts stay blocked "
                "(epoch fencing) until two operators arm again",
            )  # fmt: skip

    async def _check_restart(self, d: durability.Durability) -> None:
        """Another Redis process answers than at the last check (a restart, or a failover):
        said whatever else noticed it, an error when that Redis does not persist (its data,
        kills and roster included, is gone even if something stored some of it again since).
        Checked with durability: at start, every 30 s, and at once when the roster is gone."""
        rid = await durability.run_id(self.redis)
        before, self._redis_run = self._redis_run, rid
        if not before or not rid or rid == before:
            return
        lost = d.enabled is not True
        getattr(self.log, "error" if lost else "warning")(
            "REDIS_RESTARTED", durable=not lost, detail=d.detail,
            risk="the node's data is gone unless Redis persisted it" if lost else "",
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
