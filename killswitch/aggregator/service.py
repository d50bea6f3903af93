"""The aggregator: sums orders across every host of a node, trips the node-wide kill, and
watches every roster host confirm it.

A thin asyncio shell: each tick is one pipelined Redis read (new flow entries of every
roster host, their reports and confirmations, the node state, server time); the sliding
window and the trip rules are pure (`core.rules`), and so is how their decisions are shown
(`view.ruleview`). Windows run on Redis server time, never on this machine's wall clock,
on a grid of `tick` (100 ms by default) so `backtest` replays flow at the same instants.

The aggregator's shared state and its upkeep (lease, durability, roster, baseline) are in
`upkeep`, the trip rules in action in `trips`; this module sets them up and runs the ticks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
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
from killswitch.aggregator.ruleguard import RULE_FAULT, UNREACHABLE, RuleGuard
from killswitch.aggregator.settings import AggregatorSettings, with_static_cap
from killswitch.aggregator.trips import ISOLATE, TripRules
from killswitch.aggregator.trust import Trust
from killswitch.aggregator.upkeep import DURABILITY_CHECK_S
from killswitch.core.node import leader
from killswitch.core.node.release import VERSION_SPLIT, Split
from killswitch.core.node.roster import Quorum, quorum
from killswitch.core.node.state import NodeRead, NodeState
from killswitch.core.rules.anomaly import CAUSES, Evaluation, Monitor
from killswitch.core.rules.limitburst import LIMIT_BURST, LimitBurst
from killswitch.core.rules.window import NodeWindows
from killswitch.core.settings.options import to_ms
from killswitch.runtime.config import ConfigError
from killswitch.runtime.metrics import MetricsServer, build_info
from killswitch.runtime.operators import load_operators
from killswitch.runtime.service import run_until_signalled, until_reachable
from killswitch.store import durability
from killswitch.store.reads import NodeSnapshot
from killswitch.store.redisconn import connect
from killswitch.store.rollout import RolloutStore
from killswitch.store.store import Store
from killswitch.view import ruleview

log = structlog.get_logger("killswitch.aggregator.service")

MAX_CATCHUP = 20  # grid points a late tick evaluates at most (2 s at the default tick)


class Aggregator(TripRules):
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
        self.windows = NodeWindows(settings.monitor.window_ms, settings.monitor.fast_in_use)
        self.window = self.windows.slow
        self.monitor = Monitor(settings.monitor, roster=settings.hosts)
        self.evaluation: Evaluation | None = None
        self.events = ruleview.EventLog(settings.monitor.window_ms)
        self.tick_ms = to_ms(settings.tick)
        self._pending: list[tuple[int, str, int]] = []  # read, but newer than the tick grid
        lb = settings.limit_burst
        self.limit_burst = LimitBurst(lb) if lb is not None else None
        self._last_eval_ms = -1
        self._last_read: tuple[int, float] | None = None  # (server ms, local clock) of a read
        self._last_save = 0.0
        self.after: dict[str, str] = {}
        self.armed_ms = -1
        self.state = NodeRead(None)
        self._snap_state: dict[str, str] = {}
        self._snap_view: dict[str, str] = {}  # the acting aggregator's view as last read
        self._snap: NodeSnapshot | None = None
        # The roster this instance proves against is the last signed arm's, else its --hosts
        # (a proposal, stored until the first signed arm); arms count only when proven.
        if not settings.operators:  # no arm would verify: trips would be silently off
            raise ConfigError("operators: the aggregator needs the operators file")
        operators = load_operators(settings.operators)
        self.trust = Trust(settings.node, settings.hosts, operators, self.log, clock)
        self.rollouts = RolloutWatch(RolloutStore(redis, settings.node), settings.node,
                                     operators, self.log, settings.audit_log)  # fmt: skip
        self.unlisted: tuple[str, ...] = ()
        self.quorum: Quorum | None = None
        self.release_split: Split | None = None
        self.trips = 0
        self.inputs = InputGuard(self.log)
        self.last_trip: tuple[int, str] | None = None  # (evaluation ms, cause) of our last trip
        self._last_roster_check = -1e9
        self._unacted = None
        self.lead = leader.Leadership(
            leader.make_token(settings.instance, uuid.uuid4().hex[:8]), settings.lease_ttl
        )
        self.durable: durability.Durability | None = None
        self.audit_mirror = (
            AuditMirror(self.store, settings.audit_log, self.log) if settings.audit_log else None
        )
        self._durability_at = -1e9
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
        self.isolations = 0
        self.instruments = Instruments(self.registry, n, causes, CAUSES)
        self.rule_guard = RuleGuard(n, self.log, self.instruments.rule_faults)
        self.rule_guard.expect(
            (*settings.monitor.causes, *((LIMIT_BURST,) if lb is not None else ()), VERSION_SPLIT,
             *((fleetrule.CAUSE,) if settings.fleet_max_orders is not None else ()))
        )  # fmt: skip
        self._trips_total = self.instruments.trips
        self._shadow_total = self.instruments.shadow_trips
        self.confirmations = ConfirmationWatch(
            settings.confirm_timeout,
            self.log,
            operator_kill=self._trips_total.labels(n, "operator").inc,
            confirmed=self.instruments.confirm_seconds.observe,
        )
        self.fleet = (
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
                on_trip=lambda node: self._trips_total.labels(node, fleetrule.CAUSE).inc(),
                clock=clock,
            )
        )
        self.bypasses = BypassKills(self.store, self.log, settings.instance,
                                    self._trips_total.labels(n, BYPASS).inc)  # fmt: skip
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
        if not await until_reachable(self._first_reads, self._stop, lambda e: warn(error=e)):
            return
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
        await self._save_baseline()  # while still the leader: the next one starts warm
        if self.fleet is not None:
            with contextlib.suppress(Exception):
                await self.fleet.release()
        if self.lead.is_leader(self.clock()):
            # Hand over at once instead of making the standbys wait out the lease.
            with contextlib.suppress(Exception):
                await self.store.lease(self.lead.token, 0)
        if self._metrics:
            await self._metrics.stop()
        self.log.info("AGGREGATOR_STOPPED")

    async def run(self) -> None:
        await run_until_signalled(self.start, self.stop, self._stop)

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
                error = f"{type(e).__name__}: {e}"
                if error != failing:
                    self.log.error("TICK_FAILED", error=error)
                failing = error
            wait = self._until_next_tick(started)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)

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
            await self._inputs_fault(e)
            if self.is_leader():
                with contextlib.suppress(Exception):  # best effort: `status` names the faults
                    now = self._last_read[0] if self._last_read else 0
                    await self.store.publish_aggregator_view({**self.view(now), **self._ha_view()})
            raise
        await self._run_rules(now)
        await self._after_rules(now)

    async def _read_tick(self) -> int:
        """The tick's reads, applied: state, trust, flows, quorum; returns server ms."""
        await self._renew_lease()
        if self.clock() - self._durability_at >= DURABILITY_CHECK_S:
            await self._check_durability()
        await self._ensure_roster()
        flows, snap = await self.store.read_flows(self.after, self.trust.roster, self.unlisted)
        if not snap.roster_stored:
            # Redis lost its data since the roster check above: put the roster back now, so
            # `arm` can prove the fleet again.
            await self._ensure_roster(force=True, gone=True)
        now = snap.now_ms
        self._learn_proof(snap.state.get("proof", ""))
        self.trust.say_mismatch()
        if snap.unlisted != self.unlisted:
            self.log.warning(
                "UNLISTED_HOSTS", hosts=list(snap.unlisted), roster=list(self.trust.roster)
            )
        self.unlisted = snap.unlisted
        self.state = NodeRead.from_hash(snap.state)
        self.trust.judge(self.state.state is NodeState.ARMED, self.state.epoch)
        armed_ms = self.inputs.armed_ms(snap.state.get("armed_ms"), now, self.armed_ms)
        self._last_read = (now, self.clock())
        if armed_ms != self.armed_ms:
            # Orders sent before the current arm never count against it.
            self.armed_ms = armed_ms
            self.windows.clear()
            self._pending = [p for p in self._pending if p[0] >= armed_ms]
            self.monitor.reset(now)
            if self.limit_burst is not None:
                self.limit_burst.reset(armed_ms)
        for host, entries in flows.items():
            for entry_id, fields in entries:
                self.after[host] = entry_id
                ts = int(entry_id.split("-", 1)[0])
                if ts >= armed_ms:
                    self._pending.append((ts, host, self.inputs.flow_count(fields.get("a"), host)))
                    if "l" in fields and self.limit_burst is not None:
                        self.limit_burst.add(ts, host, self.inputs.flow_count(fields["l"], host))
        self.quorum = quorum(
            self.trust.roster, self.state.epoch, self.state.ver, snap.reports, snap.confirms, now,
            self.state.state.value if self.state.state else "",
        )  # fmt: skip
        self._snap_state = snap.state
        self._snap_view = snap.aggregator
        self._snap = snap  # what the bypass kills read (the hosts' reports, the scopes)
        return now

    async def _run_rules(self, now: int) -> None:
        # Evaluate at the last grid point strictly before server time: every flow entry up to
        # it has been read (an entry written after our read has a later ID), so the window
        # holds exactly what a backtest of the exported flow holds at the same instant.
        at = (now - 1) // self.tick_ms * self.tick_ms
        # A late tick (a loaded machine) evaluates every grid point it missed, as a backtest
        # does, so live and replayed decisions agree; bounded so a long stall cannot stack up.
        first = at if self._last_eval_ms < 0 else self._last_eval_ms + self.tick_ms
        for grid in range(max(first, at - MAX_CATCHUP * self.tick_ms), at + 1, self.tick_ms):
            self._last_eval_ms = grid
            await self._evaluate(grid)
        await self._act_on_unacted(now, self._snap_view)
        if (fleet := self.fleet) is not None:
            await self._guarded((fleetrule.CAUSE,), now, lambda: fleet.tick(now))
        await self._guarded((VERSION_SPLIT,), now, lambda: self._check_releases(now))

    async def _after_rules(self, now: int) -> None:
        await self.bypasses.tick(self._snap, self.state, self.is_leader())
        if self.state.state is NodeState.KILLED and self.quorum is not None and self.is_leader():
            # one aggregator counts and alarms, not every standby
            self.confirmations.observe(self.state, self._snap_state, self.quorum, now)
        if self.is_leader() and self.clock() - self._last_save >= self.s.baseline_save_interval:
            self._last_save = self.clock()
            await self._save_baseline()
        if self.is_leader():
            await self.store.publish_aggregator_view({**self.view(now), **self._ha_view()})

    def not_flat(self) -> list[str]:
        """Roster hosts blocked after the kill whose trading processes are not flat in time.

        Only while the node is KILLED: the watch is fed on killed ticks only, so after an arm
        its last list would otherwise linger."""
        return self.confirmations.not_flat if self.state.state is NodeState.KILLED else []

    def view(self, now_ms: int) -> dict[str, str]:
        """What `status` shows of the aggregator (and what tests wait on): its last tick."""
        return {
            "instance": self.s.instance,
            "tick_ms": str(now_ms),
            "eval_ms": str(self._last_eval_ms),
            "node_orders": str(self.window.total),
            "fast_orders": "" if self.windows.fast is None else str(self.windows.fast.total),
            "trips": str(self.trips),
            "junk_inputs": str(self.inputs.count),
            "last_trip_at_ms": str(self.last_trip[0]) if self.last_trip else "",
            "last_trip_cause": self.last_trip[1] if self.last_trip else "",
            "learned_s": f"{self.monitor.baseline.learned_ms / 1000:g}",
            "roster_mismatch": ",".join(self.s.hosts) if self.trust.mismatch else "",
            "arm_refusal": self.trust.refusal,
            "not_flat": ",".join(self.not_flat()),
            **self.rule_guard.view(),
            **self.rollouts.view(),
            **ruleview.view_fields(self.s.monitor, self.evaluation),
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
