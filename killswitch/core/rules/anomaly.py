"""Anomaly detection for one node: the `Monitor` that composes the trip rules over time.

It takes numbers (Redis server time in ms, orders in the sliding window and in the fast
window, per host) and returns frozen decisions. It must never read a clock, touch Redis,
log, or act: the aggregator and the backtest feed it the same way and act on what it
returns. The rules and their settings are described in `rules`; their conditions are in
`readings`. Their public names are re-exported here.

Breach time: a slow rule trips once its breaching evaluations within the last
`breach_span` windows cover (breach_windows - 1) x window_ms (`readings.Span`). So with the
defaults a single spike leaves the window before it can trip, a sustained flood trips one
window after the window sum crosses the line, and a pulse that dips under the line between
its pulses still adds up. The fast rules hold for `fast_breach_ms` (one tick) instead:
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

import bisect
from collections import deque
from collections.abc import Iterable, Mapping
from statistics import median

from killswitch.core.rules import readings
from killswitch.core.rules.baseline import Baseline, BaselineTrip
from killswitch.core.rules.config import (
    BASELINE,
    BASELINE_CAUSES,
    BASELINE_FAST,
    CAUSES,
    FAST_CAUSES,
    HOST_SHARE,
    HOST_SHARE_FAST,
    LEVELS,
    MAX_ORDERS,
    MAX_RATE,
    RUNAWAY,
    SPAN_CAUSES,
    Evaluation,
    HauntedHost,
    LevelChange,
    MonitorConfig,
    RuleStatus,
    Trip,
    haunted_hosts,
    next_level,
)
from killswitch.core.rules.readings import Reading, Span, Streak


class Monitor:
    """The trip rules of one node over a learned baseline; deterministic and pure.

    `observe()` is called once per aggregator tick with the window ending at `now_ms`, and
    the fast window ending at the same instant (`fast_total`, `fast_hosts`; without them
    the fast rules are inactive). Pass `armed=False` while the node is killed or unarmed:
    nothing trips and nothing is learned (a killed node's silence is not its normal). Call
    `reset()` on re-arm. The last baseline trip is kept in `baseline.trip` (persisted with
    it) until a re-arm answers it. `roster` hosts missing from the host totals count as 0.
    """

    def __init__(
        self,
        config: MonitorConfig | None = None,
        baseline: Baseline | None = None,
        roster: Iterable[str] = (),
    ) -> None:
        self.config = config or MonitorConfig()
        params = self.config.baseline_params()
        if baseline is not None and baseline.params != params:
            raise ValueError("baseline was built for other parameters; use Baseline.from_dict")
        self.baseline = baseline if baseline is not None else Baseline(params)
        self.roster = tuple(sorted(roster))
        self._streaks = {c: Streak() for c in self.config.causes}
        self._spans = {c: Span() for c in self.config.causes if c in SPAN_CAUSES}
        self._levels = dict.fromkeys(self.config.causes, 0)
        self._rearmed = False  # reset() was called; the next armed evaluation answers it
        self._other_trip = False  # a non-baseline rule tripped since the last reset
        self._history = _History()  # window sums while armed, for the runaway rule
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
        self._history = _History()
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
        base = readings.baseline(cfg, node_total, expected, warm)
        on = cfg.causes
        found: dict[str, Reading] = {}
        if MAX_ORDERS in on and cfg.max_orders is not None:
            found[MAX_ORDERS] = readings.max_orders(cfg, node_total, cfg.max_orders)
        if BASELINE in on:
            found[BASELINE] = base
        if HOST_SHARE in on and cfg.max_host_share is not None:
            found[HOST_SHARE] = readings.host_share(cfg, node_total, hosts, cfg.max_host_share)
        if MAX_RATE in on and (cap := cfg.rate_cap) is not None:
            found[MAX_RATE] = readings.max_rate(cfg, fast_total, cap)
        if BASELINE_FAST in on:
            found[BASELINE_FAST] = readings.baseline_fast(cfg, fast_total, expected, warm)
        if HOST_SHARE_FAST in on and cfg.max_host_share is not None:
            found[HOST_SHARE_FAST] = readings.host_share(
                cfg, fast_total, fhosts, cfg.max_host_share, fast=True
            )
        if armed:
            self._history.add(now_ms, node_total, cfg.runaway_ms)
        else:
            self._history = _History()
        if RUNAWAY in on:
            # The steps are read only when the window is high enough to breach: most ticks.
            floor = readings.runaway_floor(cfg, expected)
            high = armed and warm and floor is not None and node_total > floor
            steps = self._history.steps(now_ms, cfg) if high else None
            found[RUNAWAY] = readings.runaway(cfg, node_total, steps, expected, warm)
        self._learn(now_ms, node_total, dt, armed, warm, base, found)

        trips: list[Trip] = []
        shadow_trips: list[Trip] = []
        warnings: list[LevelChange] = []
        rules: list[RuleStatus] = []
        for r in found.values():
            streak = self._streaks[r.cause]
            span = self._spans.get(r.cause)
            if span is not None:
                needed_ms = (cfg.breach_windows - 1) * cfg.window_ms
                fired = span.judge(armed and r.breach, now_ms, needed_ms, cfg.span_ms)
                covered = span.covered(now_ms, cfg.span_ms)
                streak.count = 1 + covered // cfg.window_ms if armed and r.breach else 0
                streak.start_ms = span.start_ms(now_ms, cfg.span_ms)
            else:
                step_ms, needed = readings.hold(cfg, r.cause)
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
            width = cfg.fast_window_ms if r.cause in FAST_CAUSES else cfg.window_ms
            rules.append(
                RuleStatus(r.cause, shadow, r.active, r.value, r.limit, new, streak.count, width)
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
        base: Reading,
        found: Mapping[str, Reading],
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
            if not (warm and base.breach):
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
        if any(r.breach for r in found.values()):
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
        if self._other_trip or any(t.cause not in BASELINE_CAUSES for t in trips):
            self._other_trip = True
            self.baseline.trip = None
            return
        first = trips[0]
        # A fast trip's level is a rate: the window at that rate is what a re-arm accepts.
        value = first.value * (self.config.fast_scale if first.cause == BASELINE_FAST else 1.0)
        if first.cause == RUNAWAY:  # its value is a growth factor: accept the window
            value = float(node_total)
        start = self._streaks[first.cause].start_ms
        if self.config.guarded:
            # The windows waiting for confirmation when the breach began were forgotten too:
            # the re-arm answers for them as well (back to the last window learned).
            wait = self.config.breach_windows * self.config.window_ms
            start = max(start - wait, min(self._learned_to, start))
        self.baseline.trip = BaselineTrip(start, first.at_ms, value)


class _History:
    """The window sums of the last few steps, by evaluation time, for the runaway rule."""

    __slots__ = ("times", "totals")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.totals: list[int] = []

    def add(self, now_ms: int, total: int, keep_ms: int) -> None:
        self.times.append(now_ms)
        self.totals.append(total)
        drop = bisect.bisect_left(self.times, now_ms - keep_ms - 1)
        if drop > len(self.times) // 2:  # trim in bulk: amortised O(1) per evaluation
            del self.times[:drop], self.totals[:drop]

    def at(self, t_ms: int) -> int | None:
        """The window sum of the last evaluation at or before `t_ms` (None: not that old)."""
        i = bisect.bisect_right(self.times, t_ms) - 1
        return None if i < 0 else self.totals[i]

    def steps(self, now_ms: int, cfg: MonitorConfig) -> list[int] | None:
        """Orders in each of the last `runaway_steps + 1` steps, newest first; None until
        the history reaches back that far (a step is `runaway_step` adjacent windows)."""
        w = cfg.window_ms
        if not self.times or self.times[0] > now_ms - cfg.runaway_ms + w:
            return None
        out = []
        for k in range(cfg.runaway_steps + 1):
            total = 0
            for j in range(cfg.runaway_step):
                v = self.at(now_ms - (k * cfg.runaway_step + j) * w)
                if v is None:
                    return None
                total += v
            out.append(total)
        return out


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
