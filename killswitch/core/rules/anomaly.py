"""Anomaly detection for one node: the `Monitor` that composes the trip rules over time.

It takes numbers (Redis server time in ms, orders in the sliding window and in the fast
window, per host) and returns frozen decisions. It must never read a clock, touch Redis,
log, or act: the aggregator and the backtest feed it the same way and act on what it
returns. The rules are the registry's (`core.rules.registry`, one module each in
`core.rules.trips`), evaluated in its order; their settings are `config.MonitorConfig`.
Their public names are re-exported here.

Breach time: a slow rule trips once its breaching evaluations within the last
`breach_span` windows cover (breach_windows - 1) x window_ms (`readings.Span`). So with the
defaults a single spike leaves the window before it can trip, a sustained flood trips one
window after the window sum crosses the line, and a pulse that dips under the line between
its pulses still adds up (`Rule.spans`). The fast rules hold for `fast_breach_ms` (one tick) instead:
their high multiple is what keeps them quiet. `runaway` trips at once: its four steps of
growth are their own confirmation.

Guarded learning (`_learn`): a window is learned only once confirmed normal (aged
breach_windows windows with no rule in breach), as at most `baseline_band` x the baseline,
and the baseline rises at most 2x per `baseline_doubling_ms`; warm-up ends on the median
of its windows. A flood cannot drag up the line it is judged against.

Operator feedback: a re-arm after a kill by the baseline rules alone (`baseline`,
`baseline_fast`, `runaway`) teaches the baseline the level that tripped (`Baseline.accept`), at the
first armed evaluation after `reset()`; a fast trip's level is its rate scaled to the
window. A re-arm after any other rule's trip teaches nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from statistics import median

from killswitch.core.rules.baseline import Baseline, BaselineTrip
from killswitch.core.rules.breach import Span, Streak
from killswitch.core.rules.config import (
    BASELINE,
    BASELINE_FAST,
    CAUSES,
    FAST_CAUSES,
    HOST_SHARE,
    HOST_SHARE_FAST,
    LEVELS,
    MAX_ORDERS,
    MAX_RATE,
    RUNAWAY,
    Evaluation,
    HauntedHost,
    LevelChange,
    MonitorConfig,
    RuleStatus,
    Trip,
    haunted_hosts,
    next_level,
)
from killswitch.core.rules.registry import RULES, by_cause
from killswitch.core.rules.rule import History, Instant, Reading, Rule


class Monitor:
    """The trip rules of one node over a learned baseline; deterministic and pure.

    `observe()` is called once per aggregator tick with the window ending at `now_ms`, and
    the fast window ending at the same instant (`fast_total`, `fast_hosts`; without them
    the fast rules are inactive). Pass `armed=False` while the node is killed or unarmed:
    nothing trips and nothing is learned (a killed node's silence is not its normal). Call
    `reset()` on re-arm. The last baseline trip is kept in `baseline.trip` (persisted with
    it) until a re-arm answers it. `roster` hosts missing from the host totals count as 0.
    `rules` is the registry it evaluates (`registry.RULES`, in that order): those the config
    turns on are judged.
    """

    def __init__(
        self,
        config: MonitorConfig | None = None,
        baseline: Baseline | None = None,
        roster: Iterable[str] = (),
        rules: tuple[Rule, ...] = RULES,
    ) -> None:
        self.config = config or MonitorConfig()
        params = self.config.baseline_params()
        if baseline is not None and baseline.params != params:
            raise ValueError("baseline was built for other parameters; use Baseline.from_dict")
        self.baseline = baseline if baseline is not None else Baseline(params)
        self.roster = tuple(sorted(roster))
        self.rules = tuple(r for r in by_cause(rules).values() if r.enabled(self.config))
        self._by_cause = {r.cause: r for r in self.rules}
        self._streaks = {r.cause: Streak() for r in self.rules}
        self._spans = {r.cause: Span() for r in self.rules if r.spans}
        self._levels = {r.cause: 0 for r in self.rules}
        self._rearmed = False  # reset() was called; the next armed evaluation answers it
        self._other_trip = False  # a non-baseline rule tripped since the last reset
        self._history = History()  # window sums while armed, for the runaway rule
        # Guarded learning: windows waiting to be confirmed normal (at, total, dt), and one
        # window sum per window during warm-up, whose median settles the warm-up's baseline.
        self._pending: deque[tuple[int, float, int]] = deque()
        self._warmup: list[float] = []
        self._warmup_last = 0
        self._learned_to = 0  # the last window guarded learning took in

    def reset(self, now_ms: int) -> None:
        """The node was re-armed: breach counts and warning levels start over.

        The baseline keeps what it learned, and the first armed `observe()` after this
        accepts the last baseline trip as normal (`Baseline.accept`) if that trip killed
        the node (it was observed with `armed=False` since) and no other rule tripped with
        it. Not here: an aggregator calls `reset()` on its first tick whatever the state, and
        nothing is learned while the node is killed. `now_ms` is for symmetry.
        """
        del now_ms
        for cause in self._streaks:
            self._streaks[cause] = Streak()
            self._levels[cause] = 0
        for cause in self._spans:
            self._spans[cause] = Span()
        # What is not stored with the baseline starts over, as after a restart.
        self._history = History()
        self._pending.clear()
        self._warmup.clear()
        self._learned_to = 0
        self._rearmed = True
        self._other_trip = False

    def _with_roster(self, totals: Mapping[str, int] | None) -> dict[str, int] | None:
        if totals is None:
            return None
        hosts = dict(totals)
        for host in self.roster:
            hosts.setdefault(host, 0)
        return hosts

    def observe(
        self,
        now_ms: int,
        node_total: int,
        host_totals: Mapping[str, int],
        *,
        armed: bool = True,
        fast_total: int | None = None,
        fast_hosts: Mapping[str, int] | None = None,
    ) -> Evaluation:
        cfg = self.config
        hosts = self._with_roster(host_totals) or {}
        fhosts = self._with_roster(fast_hosts)
        dt = self.baseline.advance(now_ms)
        accepted = None
        if not armed:
            self.baseline.mark_killed()
        elif self._rearmed:
            self._rearmed = False
            accepted = self.baseline.accept(now_ms)
        # Judge this window against what was learned before it, then maybe learn it.
        warm = self.baseline.learned_ms >= cfg.warmup_ms
        if warm and self._warmup:
            # Warm-up ends: the median of its windows, not their mean, is the baseline, so
            # a flood over less than half of the warm-up is judged as one when it ends.
            # Fewer than three windows make no median worth the name: the mean stays.
            if len(self._warmup) >= 3:
                self.baseline.settle(median(self._warmup))
            self._warmup.clear()
        expected = self.baseline.expected(now_ms)
        warm = warm and expected is not None
        if armed:
            self._history.add(now_ms, node_total, cfg.runaway_ms)
        else:
            self._history = History()
        at = Instant(
            now_ms=now_ms,
            armed=armed,
            node_total=node_total,
            hosts=hosts,
            fast_total=fast_total,
            fast_hosts=fhosts,
            expected=expected,
            warm=warm,
            history=self._history,
        )
        found = [(rule, rule.read(cfg, at)) for rule in self.rules]
        self._learn(now_ms, node_total, dt, armed, warm, found)

        trips: list[Trip] = []
        shadow_trips: list[Trip] = []
        warnings: list[LevelChange] = []
        rules: list[RuleStatus] = []
        for rule, r in found:
            streak = self._streaks[r.cause]
            span = self._spans.get(r.cause)
            if span is not None:
                needed_ms = (cfg.breach_windows - 1) * cfg.window_ms
                fired = span.judge(armed and r.breach, now_ms, needed_ms, cfg.span_ms)
                covered = span.covered(now_ms, cfg.span_ms)
                streak.count = 1 + covered // cfg.window_ms if armed and r.breach else 0
                streak.start_ms = span.start_ms(now_ms, cfg.span_ms)
            else:
                step_ms, needed = rule.hold(cfg)
                fired = streak.judge(armed and r.breach, now_ms, step_ms, needed)
            shadow = cfg.is_shadow(r.cause)
            if fired and r.limit is not None:
                trip = Trip(r.cause, now_ms, r.detail, r.value, r.limit, shadow, r.host)
                (shadow_trips if shadow else trips).append(trip)
            old = self._levels[r.cause]
            percent = 100.0 * r.value / r.limit if r.limit and r.active else 0.0
            new = self._levels[r.cause] = next_level(percent, old)
            if new != old:
                warnings.append(LevelChange(r.cause, now_ms, old, new, r.value, r.limit or 0.0))
            rules.append(
                RuleStatus(
                    r.cause, shadow, r.active, r.value, r.limit, new, streak.count, rule.width(cfg)
                )
            )
        if trips:
            self._remember(trips, node_total)
        return Evaluation(
            now_ms=now_ms,
            node_total=node_total,
            expected=expected,
            warm=warm,
            trips=tuple(trips),
            shadow_trips=tuple(shadow_trips),
            warnings=tuple(warnings),
            rules=tuple(rules),
            haunted=haunted_hosts(hosts, node_total, cfg.haunted_ratio, cfg.min_orders),
            accepted=accepted,
            fast_total=fast_total,
        )

    def _learn(
        self,
        now_ms: int,
        total: int,
        dt: int,
        armed: bool,
        warm: bool,
        found: list[tuple[Rule, Reading]],
    ) -> None:
        """Learn what is normal. Never a killed node's silence, never an anomaly.

        Earlier releases (`guarded` off) learn every window the baseline rule does not
        breach, at once: a flood's rising windows, each under the line when judged, taught
        the baseline to expect the flood. Guarded learning waits until a window is
        confirmed normal: it has aged `breach_windows` windows and no rule breached since it
        was seen (a breach forgets every window still waiting). Then `Baseline.learn` takes
        it as at most `band` x the baseline and rises at a bounded rate. Warm-up learns at
        once (there is nothing to judge against yet) and ends with the median.
        """
        cfg = self.config
        if not armed:
            self._pending.clear()
            return
        if not cfg.guarded:
            base = next((r for _, r in found if r.cause == BASELINE), None)
            if not (warm and base is not None and base.breach):
                self.baseline.learn(now_ms, float(total), dt)
            return
        if not warm:
            self.baseline.learn(now_ms, float(total), dt, profile=False)
            # One sample per window, once the window has filled since learning began; an
            # empty window is the node not trading yet (routers still starting), not a level.
            if (
                total > 0
                and self.baseline.learned_ms >= cfg.window_ms
                and (not self._warmup or now_ms - self._warmup_last >= cfg.window_ms)
            ):
                self._warmup.append(float(total))
                self._warmup_last = now_ms
            return
        self._pending.append((now_ms, float(total), dt))
        if any(r.breach for _, r in found):
            self._pending.clear()
            return
        confirmed = now_ms - cfg.breach_windows * cfg.window_ms
        while self._pending and self._pending[0][0] <= confirmed:
            at, sample, step = self._pending.popleft()
            self.baseline.learn(at, sample, step, guarded=True)
            self._learned_to = at

    def _remember(self, trips: list[Trip], node_total: int) -> None:
        """Keep a kill by the baseline rules alone for the re-arm to answer; forget it if any
        other rule trips before the re-arm (a static cap or a haunted host is not a level
        anyone should accept as normal)."""
        cfg = self.config
        levels = [self._by_cause[t.cause].teaches(cfg, t.value, node_total) for t in trips]
        if self._other_trip or any(level is None for level in levels):
            self._other_trip = True
            self.baseline.trip = None
            return
        first, value = trips[0], levels[0]
        assert value is not None
        start = self._streaks[first.cause].start_ms
        if self.config.guarded:
            # The windows waiting for confirmation when the breach began were forgotten too:
            # the re-arm answers for them as well (back to the last window learned).
            wait = self.config.breach_windows * self.config.window_ms
            start = max(start - wait, min(self._learned_to, start))
        self.baseline.trip = BaselineTrip(start, first.at_ms, value)


__all__ = [
    "BASELINE",
    "BASELINE_FAST",
    "CAUSES",
    "FAST_CAUSES",
    "HOST_SHARE",
    "HOST_SHARE_FAST",
    "LEVELS",
    "MAX_ORDERS",
    "MAX_RATE",
    "RUNAWAY",
    "Evaluation",
    "HauntedHost",
    "LevelChange",
    "Monitor",
    "MonitorConfig",
    "RuleStatus",
    "Trip",
    "haunted_hosts",
    "next_level",
]
