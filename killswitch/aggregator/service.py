"""The aggregator: sums orders across every host of a node, trips the node-wide kill, and
watches every roster host confirm it.

A thin asyncio shell: each tick is one pipelined Redis read (new flow entries of every
roster host, their reports and confirmations, the node state, server time); the sliding
window and the trip rules are pure (`core.rules`), and so is how their decisions are shown
(`view.ruleview`). Windows run on Redis server time, never on this machine's wall clock,
on a grid of `tick` (100 ms by default) so `backtest` replays flow at the same instants.

The leader lease and the upkeep (durability, roster) are in `upkeep`, the trip rules and
what they see in `trips`; this module wires them up and runs the ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from killswitch.aggregator import fleetrule
from killswitch.aggregator.auditlog import AuditMirror
from killswitch.aggregator.bypass import BYPASS, BypassKills
from killswitch.aggregator.confirmations import ConfirmationWatch
from killswitch.aggregator.inputs import InputGuard
from killswitch.aggregator.metrics import AggregatorCollector, Instruments
from killswitch.aggregator.rollouts import RolloutWatch
from killswitch.aggregator.ruleguard import RULE_FAULT, UNREACHABLE
from killswitch.aggregator.settings import AggregatorSettings, with_static_cap
from killswitch.aggregator.trips import ISOLATE, TripRules
from killswitch.aggregator.trust import Trust
from killswitch.aggregator.upkeep import Lease, Upkeep
from killswitch.core.node import leader
from killswitch.core.node.release import VERSION_SPLIT
from killswitch.core.node.roster import quorum
from killswitch.core.node.state import NodeRead, NodeState
from killswitch.core.rules.anomaly import CAUSES
from killswitch.core.rules.limitburst import LIMIT_BURST
from killswitch.core.settings.options import to_ms
from killswitch.runtime.config import ConfigError
from killswitch.runtime.metrics import MetricsServer, build_info
from killswitch.runtime.operators import load_operators
from killswitch.runtime.service import run_until_signalled, until_reachable
from killswitch.store.noperm import denial, redis_user
from killswitch.store.reads import NodeSnapshot
from killswitch.store.redisconn import connect
from killswitch.store.rollout import RolloutStore
from killswitch.store.store import Store
from killswitch.view import ruleview

log = structlog.get_logger("killswitch.aggregator.service")


class Aggregator:
    """`start()`, idempotent `stop()`, blocking `run()`; collaborators are passed in."""

    def __init__(
        self,
        settings: AggregatorSettings,
        redis: Redis,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        # A static cap is always active: derived from the roster when none was given.
        settings = replace(settings, monitor=with_static_cap(settings.monitor, len(settings.hosts)))
        self.s = settings
        self.redis = redis
        self.store = Store(redis, settings.node)
        self.clock = clock
        self.log = (logger or log).bind(node=settings.node)
        self.tick_ms = to_ms(settings.tick)
        self._last_read: tuple[int, float] | None = None  # (server ms, local clock) of a read
        self._last_save = 0.0
        self.after: dict[str, str] = {}
        self._snap_state: dict[str, str] = {}
        self._snap_view: dict[str, str] = {}  # the acting aggregator's view as last read
        self._snap: NodeSnapshot | None = None
        # The roster this instance proves against is the last signed arm's, else its --hosts
        # (a proposal, stored until the first signed arm); arms count only when proven.
        if not settings.operators:  # no arm would verify: trips would be silently off
            raise ConfigError("operators: the aggregator needs the operators file")
        operators = load_operators(settings.operators)
        self.trust = Trust(settings.node, settings.hosts, operators, self.log, clock)
        self.unlisted: tuple[str, ...] = ()
        self.inputs = InputGuard(self.log)
        self.lease = Lease(settings, self.store, self.inputs, self.log, clock)
        self.audit_mirror = (
            AuditMirror(self.store, settings.audit_log, self.log) if settings.audit_log else None
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._mirror_task: asyncio.Task[None] | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        n = settings.node
        causes = (
            *CAUSES, LIMIT_BURST, ISOLATE, VERSION_SPLIT, "operator", fleetrule.CAUSE, RULE_FAULT,
            BYPASS,
            leader.LEADER_SILENT,
        )  # fmt: skip
        self.instruments = Instruments(self.registry, n, causes, CAUSES)
        trips_total = self.instruments.trips
        fleet = (
            None
            if settings.fleet_max_orders is None
            else fleetrule.FleetRule(
                redis,
                cap=settings.fleet_max_orders,
                window_ms=settings.monitor.window_ms,
                instance=settings.instance,
                lease_ttl=settings.lease_ttl,
                max_age_ms=max(2000, 5 * self.tick_ms),
                log=self.log,
                on_trip=lambda node: trips_total.labels(node, fleetrule.CAUSE).inc(),
                clock=clock,
            )
        )
        self.rules = TripRules(
            settings, self.store, self.trust, self.lease, inputs=self.inputs, fleet=fleet,
            rollouts=RolloutWatch(RolloutStore(redis, settings.node), settings.node, operators,
                                  self.log, settings.audit_log),
            instruments=self.instruments, log=self.log,
        )  # fmt: skip
        self.upkeep = Upkeep(settings, redis, self.store, self.trust, self.lease, self.log, clock,
                             instruments=self.instruments, on_roster=self.rules.follow_roster)  # fmt: skip
        self.confirmations = ConfirmationWatch(
            settings.confirm_timeout,
            self.log,
            operator_kill=trips_total.labels(n, "operator").inc,
            confirmed=self.instruments.confirm_seconds.observe,
        )
        self.bypasses = BypassKills(self.store, self.log, settings.instance,
                                    trips_total.labels(n, BYPASS).inc)  # fmt: skip
        self.registry.register(AggregatorCollector(self))
        build_info(self.registry, "aggregator")
        self._metrics = (
            MetricsServer(self.registry, settings.metrics_port, settings.metrics_listen)
            if settings.metrics_port is not None
            else None
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._metrics:
            await self._metrics.start()
        warn = functools.partial(self.log.warning, "redis_unreachable_at_start")
        try:
            if not await until_reachable(self._first_reads, self._stop, lambda e: warn(error=e)):
                return
        except Exception as e:  # refused: it cannot start, and says which rule is missing
            if denial(e) is not None:
                self._tick_failed(e, "")
            raise
        self._task = asyncio.create_task(self._loop(), name="aggregator")
        if self.audit_mirror is not None:
            # its own task: a slow disk (fsync) must never delay a tick or a lease renewal
            self._mirror_task = asyncio.create_task(
                self.audit_mirror.run(self._stop), name="audit-mirror"
            )
        cfg = self.s.monitor
        self.log.info(
            "AGGREGATOR_STARTED", roster=list(self.trust.roster), instance=self.s.instance,
            signed_roster=bool(self.trust.signed_roster),
            max_orders=cfg.max_orders, window_s=cfg.window_ms / 1000,
            enforcing=[c for c in cfg.causes if not cfg.is_shadow(c)],
            shadow=[c for c in cfg.causes if cfg.is_shadow(c)],
        )  # fmt: skip

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:  # never started, or stopped while start() still waited for Redis
            self._stop.set()
            if self._metrics:
                await self._metrics.stop()
            return
        self._stop.set()
        task.cancel()
        if self._mirror_task is not None:
            self._mirror_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mirror_task
            self._mirror_task = None
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.rules.save_baseline()  # while still the leader: the next one starts warm
        if self.rules.fleet is not None:
            with contextlib.suppress(Exception):
                await self.rules.fleet.release()
        await self.lease.hand_over()  # at once, instead of making the standbys wait it out
        if self._metrics:
            await self._metrics.stop()
        self.log.info("AGGREGATOR_STOPPED")

    async def run(self) -> None:
        await run_until_signalled(self.start, self.stop, self._stop)

    async def _first_reads(self) -> None:
        await self.upkeep.first_reads()
        await self.rules.restore_baseline()

    def is_leader(self) -> bool:
        return self.lease.is_leader()

    async def _loop(self) -> None:
        failing = ""
        while not self._stop.is_set():
            started = self.clock()
            try:
                await self.tick_once()
                if failing:
                    self.log.info("TICK_RECOVERED")
                failing = ""
            except asyncio.CancelledError:
                raise
            except Exception as e:
                # Redis away (or refusing): no rule runs this tick, and each rule's
                # last-evaluated time ages (status, the alert) until it answers again.
                error = self._tick_failed(e, failing)
                failing = error
            wait = self._until_next_tick(started)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)

    def _tick_failed(self, e: Exception, failing: str) -> str:
        """Log why a tick failed (once per distinct cause); an ACL refusal names its rule."""
        refused = denial(e)
        if refused is None:
            error = f"{type(e).__name__}: {e}"
            if error != failing:
                self.log.error("TICK_FAILED", error=error)
            return error
        self.instruments.acl_denials.labels(self.s.node, refused.permission).inc()
        error = refused.line(redis_user(self.s.redis_url))
        if error != failing:
            self.log.error("ACL_DENIED", permission=refused.permission, rule=refused.rule,
                           user=redis_user(self.s.redis_url), reason=error)  # fmt: skip
        return error

    def _until_next_tick(self, started: float) -> float:
        """Seconds to sleep so the next read lands just after the next grid point of server
        time; without a server time yet, one tick after `started`."""
        if self._last_read is None:
            return self.s.tick - (self.clock() - started)
        server_ms, at = self._last_read
        est = server_ms + (self.clock() - at) * 1000.0
        grid = (est // self.tick_ms + 1) * self.tick_ms
        return (grid - est) / 1000.0 + 0.002

    # -- one tick --------------------------------------------------------------------------

    async def tick_once(self) -> None:
        """One tick: read, evaluate every rule (each guarded), then upkeep and the view."""
        try:
            now = await self._read_tick()
        except (RedisError, *UNREACHABLE):
            raise
        except Exception as e:
            # What was read cannot be turned into the rules' inputs: no rule can be
            # evaluated, which is every rule's fault (and kills an armed node).
            await self.rules.inputs_fault(e)
            if self.is_leader():
                with contextlib.suppress(Exception):  # best effort: `status` names the faults
                    now = self._last_read[0] if self._last_read else 0
                    await self.store.publish_aggregator_view(
                        {**self.view(now), **self.upkeep.ha_view()}
                    )
            raise
        await self.rules.run(now, self._snap_view)
        await self._after_rules(now)

    async def _read_tick(self) -> int:
        """The tick's reads, applied: state, trust, flows, quorum; returns server ms."""
        await self.lease.renew()
        await self.upkeep.recheck_durability()
        await self.upkeep.ensure_roster()
        flows, snap = await self.store.read_flows(self.after, self.trust.roster, self.unlisted)
        if not snap.roster_stored:
            # Redis lost its data since the roster check above: put the roster back now, so
            # `arm` can prove the fleet again.
            await self.upkeep.ensure_roster(force=True, gone=True)
        now = snap.now_ms
        self.upkeep.learn_proof(snap.state.get("proof", ""))
        self.trust.say_mismatch()
        if snap.unlisted != self.unlisted:
            self.log.warning(
                "UNLISTED_HOSTS", hosts=list(snap.unlisted), roster=list(self.trust.roster)
            )
        self.unlisted = snap.unlisted
        state = NodeRead.from_hash(snap.state)
        self.rules.read_state(state)
        self.trust.judge(state.state is NodeState.ARMED, state.epoch)
        armed_ms = self.inputs.armed_ms(snap.state.get("armed_ms"), now, self.rules.armed_ms)
        self._last_read = (now, self.clock())
        self.rules.rearm(armed_ms, now)
        for host, entries in flows.items():
            for entry_id, fields in entries:
                self.after[host] = entry_id
                self.rules.flow(int(entry_id.split("-", 1)[0]), host, fields)
        self.rules.read_quorum(quorum(
            self.trust.roster, state.epoch, state.ver, snap.reports, snap.confirms, now,
            state.state.value if state.state else "",
        ))  # fmt: skip
        self._snap_state = snap.state
        self._snap_view = snap.aggregator
        self._snap = snap  # what the bypass kills read (the hosts' reports, the scopes)
        return now

    async def _after_rules(self, now: int) -> None:
        state, q = self.rules.state, self.rules.quorum
        await self.bypasses.tick(self._snap, state, self.is_leader())
        if state.state is NodeState.KILLED and q is not None and self.is_leader():
            # one aggregator counts and alarms, not every standby
            self.confirmations.observe(state, self._snap_state, q, now)
        if self.is_leader() and self.clock() - self._last_save >= self.s.baseline_save_interval:
            self._last_save = self.clock()
            await self.rules.save_baseline()
        if self.is_leader():
            await self.store.publish_aggregator_view({**self.view(now), **self.upkeep.ha_view()})

    def not_flat(self) -> list[str]:
        """Roster hosts blocked after the kill whose trading processes are not flat in time.

        Only while the node is KILLED: the watch is fed on killed ticks only, so after an arm
        its last list would otherwise linger."""
        return self.confirmations.not_flat if self.rules.state.state is NodeState.KILLED else []

    def view(self, now_ms: int) -> dict[str, str]:
        """What `status` shows of the aggregator (and what tests wait on): its last tick."""
        r = self.rules
        return {
            "instance": self.s.instance,
            "tick_ms": str(now_ms),
            "eval_ms": str(r.last_eval_ms),
            "node_orders": str(r.window.total),
            "fast_orders": "" if r.windows.fast is None else str(r.windows.fast.total),
            "trips": str(r.trips),
            "junk_inputs": str(self.inputs.count),
            "last_trip_at_ms": str(r.last_trip[0]) if r.last_trip else "",
            "last_trip_cause": r.last_trip[1] if r.last_trip else "",
            "learned_s": f"{r.monitor.baseline.learned_ms / 1000:g}",
            "roster_mismatch": ",".join(self.s.hosts) if self.trust.mismatch else "",
            "arm_refusal": self.trust.refusal,
            "not_flat": ",".join(self.not_flat()),
            **r.rule_guard.view(),
            **r.rollouts.view(),
            **ruleview.view_fields(self.s.monitor, r.evaluation),
        }


async def run_aggregator(settings: AggregatorSettings) -> None:
    """Entry point of `killswitch aggregator`."""
    redis = connect(
        settings.redis_url, socket_timeout=2.0, client_name=f"ks-aggregator-{settings.node}"
    )
    try:
        await Aggregator(settings, redis).run()
    finally:
        await redis.aclose()
