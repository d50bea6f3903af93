"""The aggregator's trip rules in action: each grid point's evaluation, the version-split
rule, and what a trip does (a fenced node-wide kill, or a haunted host isolated on its own);
a trip decided while standby is kept and acted on after a takeover if still current.

Every rule is evaluated through `ruleguard` (`_guarded`): a rule that raises is never
dropped while the others go on; it kills the node with cause `rule_fault`, or, for the
rules whose fault only shows, stays a named fault in `status`.

`TripRules` owns what the rules see: the windows the tick's flow feeds, the node state as
last read (or as its own trip left it), the quorum and the learned baseline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from killswitch.aggregator import fleetrule
from killswitch.aggregator.inputs import InputGuard
from killswitch.aggregator.metrics import Instruments
from killswitch.aggregator.rollouts import RolloutWatch
from killswitch.aggregator.ruleguard import RULE_FAULT, RuleGuard, kills_on_fault
from killswitch.aggregator.settings import AggregatorSettings
from killswitch.aggregator.trust import Trust
from killswitch.aggregator.upkeep import Lease
from killswitch.core.node import leader
from killswitch.core.node.bounds import parse_uint
from killswitch.core.node.release import VERSION_SPLIT, Split
from killswitch.core.node.roster import Quorum, epoch_floor, reported_releases
from killswitch.core.node.state import NodeRead, NodeState
from killswitch.core.rules.anomaly import HOST_SHARE, Evaluation, Monitor
from killswitch.core.rules.baseline import Baseline, BaselineStateError
from killswitch.core.rules.limitburst import LIMIT_BURST, LimitBurst
from killswitch.core.rules.window import NodeWindows
from killswitch.core.settings.options import to_ms
from killswitch.store.store import Store
from killswitch.view import ruleview

MAX_CATCHUP = 20  # grid points a late tick evaluates at most (2 s at the default tick)

ISOLATE = "host_share_isolate"  # trips_total cause of a haunted host killed on its own


@dataclass(frozen=True)
class _Unacted:
    """A trip the rules decided while this instance was a standby."""

    cause: str
    detail: str
    at_ms: int
    also: list[str]
    armed_ms: int


class TripRules:
    """Evaluates every rule at each grid point of a tick (`run()`) and acts on its trips; fed
    by the tick's reads (`read_state()`, `rearm()`, `flow()`, `read_quorum()`). Only the lease
    holder acts."""

    def __init__(
        self,
        settings: AggregatorSettings,
        store: Store,
        trust: Trust,
        lease: Lease,
        *,
        inputs: InputGuard,
        rollouts: RolloutWatch,
        fleet: fleetrule.FleetRule | None,
        instruments: Instruments,
        log: Any,
    ) -> None:
        self.s = settings
        self.store = store
        self.trust = trust
        self.lease = lease
        self.inputs = inputs
        self.rollouts = rollouts
        self.fleet = fleet
        self.log = log
        self.tick_ms = to_ms(settings.tick)
        self.windows = NodeWindows(settings.monitor.window_ms, settings.monitor.fast_in_use)
        self.window = self.windows.slow
        self.monitor = Monitor(settings.monitor, roster=settings.hosts)
        self.evaluation: Evaluation | None = None
        self.events = ruleview.EventLog(settings.monitor.window_ms)
        self._pending: list[tuple[int, str, int]] = []  # read, but newer than the tick grid
        lb = settings.limit_burst
        self.limit_burst = LimitBurst(lb) if lb is not None else None
        self.last_eval_ms = -1
        self.armed_ms = -1
        self.state = NodeRead(None)
        self.quorum: Quorum | None = None
        self.release_split: Split | None = None
        self.trips = 0
        self.isolations = 0
        self.last_trip: tuple[int, str] | None = None  # (evaluation ms, cause) of our last trip
        self._unacted: _Unacted | None = None
        self.rule_guard = RuleGuard(settings.node, log, instruments.rule_faults)
        self.rule_guard.expect(
            (*settings.monitor.causes, *((LIMIT_BURST,) if lb is not None else ()), VERSION_SPLIT,
             *((fleetrule.CAUSE,) if fleet is not None else ()))
        )  # fmt: skip
        self._trips_total = instruments.trips
        self._shadow_total = instruments.shadow_trips

    def is_leader(self) -> bool:
        return self.lease.is_leader()

    def is_armed(self) -> bool:
        """ARMED in Redis and proven by two operators' signatures: only then can rules trip."""
        return self.state.state is NodeState.ARMED and not self.trust.refusal

    def follow_roster(self, roster: tuple[str, ...]) -> None:
        """A new trusted roster (the last signed arm's): the rules count its hosts."""
        self.monitor.roster = roster

    def rearm(self, armed_ms: int, now: int) -> None:
        """The arm the tick read: orders sent before a new arm never count against it."""
        if armed_ms != self.armed_ms:
            self.armed_ms = armed_ms
            self.windows.clear()
            self._pending = [p for p in self._pending if p[0] >= armed_ms]
            self.monitor.reset(now)
            if self.limit_burst is not None:
                self.limit_burst.reset(armed_ms)

    def flow(self, ts: int, host: str, fields: dict[str, str]) -> None:
        """One flow entry of `host` (stamped `ts`, server ms) read this tick."""
        if ts >= self.armed_ms:
            self._pending.append((ts, host, self.inputs.flow_count(fields.get("a"), host)))
            if "l" in fields and self.limit_burst is not None:
                self.limit_burst.add(ts, host, self.inputs.flow_count(fields["l"], host))

    def read_state(self, state: NodeRead) -> None:
        """The node state the tick read (until a trip of ours kills it)."""
        self.state = state

    def read_quorum(self, quorum: Quorum) -> None:
        """The roster hosts' reports and confirmations the tick read, judged."""
        self.quorum = quorum

    async def run(self, now: int, view: dict[str, str]) -> None:
        """Every rule of one tick at server time `now` (`view`: the acting aggregator's view)."""
        # Evaluate at the last grid point strictly before server time: every flow entry up to
        # it has been read (an entry written after our read has a later ID), so the window
        # holds exactly what a backtest of the exported flow holds at the same instant.
        at = (now - 1) // self.tick_ms * self.tick_ms
        # A late tick (a loaded machine) evaluates every grid point it missed, as a backtest
        # does, so live and replayed decisions agree; bounded so a long stall cannot stack up.
        first = at if self.last_eval_ms < 0 else self.last_eval_ms + self.tick_ms
        for grid in range(max(first, at - MAX_CATCHUP * self.tick_ms), at + 1, self.tick_ms):
            self.last_eval_ms = grid
            await self._evaluate(grid)
        await self._act_on_unacted(now, view)
        if (fleet := self.fleet) is not None:
            await self._guarded((fleetrule.CAUSE,), now, lambda: fleet.tick(now))
        await self._guarded((VERSION_SPLIT,), now, lambda: self._check_releases(now))

    async def restore_baseline(self) -> None:
        """The learned baseline as stored, at start (none or junk: the rules start cold)."""
        params = self.s.monitor.baseline_params()
        try:
            stored = await self.store.load_baseline()
            if not stored:
                self.log.info("BASELINE_COLD", reason="no stored baseline")
                return
            baseline = Baseline.from_dict(stored, params)
        except (BaselineStateError, ResponseError) as e:
            if isinstance(e, ResponseError) and "WRONGTYPE" not in str(e):
                raise
            # junk (or a key of another type, replaced at the first save) never stops a start
            self.log.error("BASELINE_UNREADABLE", reason=str(e), action="starting cold")
            return
        self.monitor = Monitor(self.s.monitor, baseline, roster=self.trust.roster)
        now = baseline.last_ms or 0
        self.log.info(
            "BASELINE_RESTORED", learned_s=baseline.learned_ms / 1000,
            expected=baseline.expected(now), warm=baseline.learned_ms >= self.s.monitor.warmup_ms,
        )  # fmt: skip

    async def save_baseline(self) -> None:
        """The learned baseline stored, by the leader only, so the next leader starts warm."""
        if self.monitor.baseline.last_ms is None or not self.is_leader():
            return  # never observed anything (or a standby): keep whatever is stored
        try:
            await self.store.save_baseline(self.monitor.baseline.to_dict())
        except Exception as e:  # a failed save costs a re-learn, never the kill loop
            self.log.warning("BASELINE_SAVE_FAILED", error=f"{type(e).__name__}: {e}")

    async def _check_releases(self, now_ms: int) -> None:
        """The version vector as a trip rule: an armed roster running a release it may not run
        (two releases, or one no signed rollout named) is killed."""
        assert self.quorum is not None
        await self.rollouts.refresh()
        by_host = reported_releases(self.quorum.hosts)
        if self.is_leader():
            await self.rollouts.settle(self.trust.roster, by_host, f"aggregator:{self.s.instance}")
        cut = self.release_split = self.rollouts.check(self.trust.roster, by_host)
        if cut is None or not self.is_armed():
            return
        if self.is_leader():
            self.log.error(
                "VERSION_SPLIT", hosts=sorted(cut.odd), releases=dict(cut.odd),
                majority=cut.majority,
            )  # fmt: skip
        await self._trip(VERSION_SPLIT, self.rollouts.describe(cut), now_ms, [])

    async def _guarded(
        self, rules: Sequence[str], at_ms: int, evaluate: Callable[[], Awaitable[None]]
    ) -> None:
        """Evaluate `rules`; one that cannot be evaluated kills the node (cause rule_fault)
        unless its fault only shows (`ruleguard.kills_on_fault`)."""
        error = await self.rule_guard.run(rules, at_ms, evaluate)
        if error:
            await self._rule_fault([r for r in rules if kills_on_fault(r)], error, at_ms)

    async def _rule_fault(self, rules: Sequence[str], error: str, at_ms: int) -> None:
        if rules and self.is_armed():
            detail = f"rule {', '.join(rules)} cannot be evaluated: {error}"
            await self._trip(RULE_FAULT, detail, at_ms, [])

    async def inputs_fault(self, e: Exception) -> None:
        """The tick's reads could not be applied: every rule is at fault."""
        rules = sorted(self.rule_guard.last_ms)
        error = self.rule_guard.fault(rules, e)
        at = self.last_eval_ms if self.last_eval_ms >= 0 else 0
        await self._rule_fault([r for r in rules if kills_on_fault(r)], error, at)

    async def _evaluate(self, at: int) -> None:
        ready = sorted(p for p in self._pending if p[0] <= at)
        if ready:
            self._pending = [p for p in self._pending if p[0] > at]
            for ts, host, count in ready:
                self.windows.add(ts, host, count)
        self.windows.advance(at)
        armed = self.is_armed()
        await self._guarded(self.monitor.config.causes, at, lambda: self._anomaly(at, armed))
        if self.limit_burst is not None:
            await self._guarded((LIMIT_BURST,), at, lambda: self._burst(at, armed))

    async def _anomaly(self, at: int, armed: bool) -> None:
        w = self.windows
        ev = self.evaluation = self.monitor.observe(
            at, w.slow.total, w.slow.by_host, armed=armed,
            fast_total=w.fast_total, fast_hosts=w.fast_by_host,
        )  # fmt: skip
        for level, event, fields in self.events.events(ev):
            getattr(self.log, level)(event, **fields)
        for t in ev.shadow_trips:
            self._shadow_total.labels(self.s.node, t.cause).inc()
        trips = list(ev.trips)
        if self.s.on_haunted == "isolate" and armed:
            # The haunted host alone is killed (a scoped kill); the other rules still kill
            # the node.
            for t in [t for t in trips if t.cause == HOST_SHARE and t.host]:
                await self._isolate(t.host or "", t.detail, at)
            trips = [t for t in trips if t.cause != HOST_SHARE]
        if trips and armed:
            await self._trip(trips[0].cause, trips[0].detail, at, [t.cause for t in trips[1:]])

    async def _burst(self, at: int, armed: bool) -> None:
        assert self.limit_burst is not None
        burst = self.limit_burst.observe(at)
        if burst is not None and armed:
            await self._trip(LIMIT_BURST, burst.detail, at, [])

    async def _trip(self, cause: str, detail: str, at_ms: int, also: list[str]) -> None:
        if not self.is_leader():
            # A standby keeps its windows warm but never acts. The rules latch a trip once
            # per breach, so the decision is kept: if the leader died or froze without
            # acting, this instance acts on it when it takes over (`_act_on_unacted`), or
            # kills on its own when the holder stays silent. The first decision of an arm is
            # kept: a rule that re-decides every tick must not keep the silence bound away.
            u = self._unacted
            if u is None or u.armed_ms != self.armed_ms:
                self._unacted = _Unacted(cause, detail, at_ms, list(also), self.armed_ms)
            return
        res = await self.store.kill(
            actor=f"aggregator:{self.s.instance}",
            reason=detail,
            cause=cause,
            floor=epoch_floor(self.quorum.hosts if self.quorum else {}, self.state.epoch),
            action="trip",
            only_if_armed=True,
            fence=self.lease.lead.token,
        )
        if res.refused == "fenced":
            # Paused past its lease while another instance took over: that one acts.
            self.lease.fenced()
            self.log.warning("TRIP_FENCED", cause=cause, instance=self.s.instance)
        if res.changed:
            self.trips += 1
            self.last_trip = (at_ms, cause)
            self._trips_total.labels(self.s.node, cause).inc()
            self.log.error(
                "TRIP", cause=cause, reason=detail, epoch=res.epoch, at_ms=at_ms, also=also
            )
            self.state = NodeRead(NodeState.KILLED, res.epoch, res.ver, detail)

    async def _isolate(self, host: str, detail: str, at_ms: int) -> None:
        if not self.is_leader():
            return  # a standby never acts; isolation is not taken over (the rule trips again)
        _, ver, _, _ = await self.store.scope(
            op="kill", kind="host", value=host, actor=f"aggregator:{self.s.instance}",
            reason=detail,
        )  # fmt: skip
        self.isolations += 1
        self._trips_total.labels(self.s.node, ISOLATE).inc()
        self.log.error("ISOLATE", host=host, reason=detail, scope_ver=ver, at_ms=at_ms)

    async def _act_on_unacted(self, now_ms: int, view: dict[str, str]) -> None:
        """A trip decided while standby, acted on after a takeover if it is still current.

        Current: the node is still ARMED by the same arm and the decision is less than one
        window old (an older one may no longer hold; a live leader would have acted on it).
        A standby whose breach the lease holder leaves unacted past a bound kills on its own
        (`leader_silent`): nothing written into the lease key can silence a trip.
        """
        u = self._unacted
        if u is None:
            return
        if not self.is_leader():
            await self._unless_silent(u, now_ms, view)
            return
        self._unacted = None
        fresh = now_ms - u.at_ms <= self.s.monitor.window_ms and u.armed_ms == self.armed_ms
        if fresh and self.is_armed():
            self.log.warning("TRIP_TAKEN_OVER", cause=u.cause, at_ms=u.at_ms)
            await self._trip(u.cause, u.detail, u.at_ms, u.also)

    async def _unless_silent(self, u: _Unacted, now_ms: int, view: dict[str, str]) -> None:
        """Kill (unfenced, only if still ARMED by the same arm) when the lease holder has
        left this breach unacted for longer than `leader.silent_bound_ms`."""
        if u.armed_ms != self.armed_ms or not self.is_armed():
            self._unacted = None  # acted on (killed), or re-armed since: nothing left to do
            return
        ttl_ms = int(self.s.lease_ttl * 1000)
        tick = parse_uint(view.get("tick_ms"))
        token = view.get("lease", "")
        doubt = leader.holder_doubt(
            self.lease.lead.holder, token, -1 if tick is None else tick, now_ms, ttl_ms
        )
        if now_ms - u.at_ms < leader.silent_bound_ms(doubt, ttl_ms):
            return
        self._unacted = None
        holder = leader.instance_of(self.lease.lead.holder)[:64] or "none"
        detail = f"{u.cause} unacted by the lease holder {holder} ({doubt or 'live'}): {u.detail}"
        res = await self.store.kill(
            actor=f"aggregator:{self.s.instance}", reason=detail, cause=leader.LEADER_SILENT,
            floor=epoch_floor(self.quorum.hosts if self.quorum else {}, self.state.epoch),
            action="trip", only_if_armed=True,
        )  # fmt: skip
        if res.changed:
            self.trips += 1
            self.last_trip = (now_ms, leader.LEADER_SILENT)
            self._trips_total.labels(self.s.node, leader.LEADER_SILENT).inc()
            self.log.error(
                "TRIP", cause=leader.LEADER_SILENT, reason=detail, epoch=res.epoch,
                at_ms=u.at_ms, holder=holder, doubt=doubt,
            )  # fmt: skip
            self.state = NodeRead(NodeState.KILLED, res.epoch, res.ver, detail)
