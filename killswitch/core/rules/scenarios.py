"""The anomaly scenarios: deterministic order flows that decide what the rules must catch
and what they must let be, replayed by `backtest --scenario`, the benchmark and live tests.

Pure: a scenario is a rate per host over time (orders per second at production time, 10 s
windows) and a seeded Poisson sampler turns it into `FlowEvent`s. Nothing here reads a
clock, a file or Redis. A live test compresses time as the demo does: it drives host `h` at
`rate(h, t * k)` with windows k times shorter, the rates per second unchanged.

The node: eight hosts at 10 orders/s each (80/s, 800 per 10 s window), with a baseline
learned at that level unless the scenario starts cold.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.backtest import FlowEvent, replay
from killswitch.core.rules.baseline import Baseline
from killswitch.core.settings.options import default_ms

HOSTS = tuple(f"or-{i:02d}" for i in range(1, 9))
PER_HOST = 10.0  # orders/s per host, the node's normal
DAY0 = 1_343_779_200_000  # 2012-08-01 00:00 UTC
OPEN_S = 13.5 * 3600  # 09:30 New York in UTC seconds of the day
SESSION_S = 6.5 * 3600
START_S = 14 * 3600  # where the incident scenarios start: mid-morning, the baseline warm
PRE_S = 180.0  # normal flow before an incident's onset: every rule's history fills

Rate = Callable[[str, float], float]  # (host, seconds since the scenario's start) -> orders/s


@dataclass(frozen=True)
class Scenario:
    """One flow: what each host sends, when the incident starts (None: a normal day, where
    every trip is false) and whether the aggregator starts with a learned baseline."""

    name: str
    title: str
    duration_s: float
    onset_s: float | None
    rate: Rate = field(repr=False)
    warm: bool = True  # starts from a baseline learned at the node's normal rate
    start_s: float = START_S  # seconds of the UTC day at t = 0
    day: int = 0  # days after DAY0
    accepted: bool = False  # a legitimate change: its first trip is answered by a re-arm
    volume: float = 1.0  # every rate x this (a compressed live run), normal included

    @property
    def start_ms(self) -> int:
        return DAY0 + self.day * 86_400_000 + round(self.start_s * 1000)

    def compressed(self, k: float, volume: float = 1.0) -> Scenario:
        """The same flow with time k x faster (rates per second unchanged, or `volume` x
        them), for windows k x shorter: what a live test drives, as the demo compresses
        10 s windows to 1 s. A window k x shorter holds k x fewer orders, so its counts
        are noisier: `volume` buys some of that back."""
        rate = self.rate

        def fast(h: str, t: float) -> float:
            return rate(h, t * k) * volume

        onset = None if self.onset_s is None else self.onset_s / k
        return replace(
            self, rate=fast, duration_s=self.duration_s / k, onset_s=onset,
            volume=self.volume * volume,
        )  # fmt: skip

    def multiple(self, t_s: float) -> float:
        """The node's rate at `t_s` as a multiple of its normal."""
        return sum(self.rate(h, t_s) for h in HOSTS) / (PER_HOST * len(HOSTS) * self.volume)


def _poisson(rng: random.Random, lam: float) -> int:
    if lam > 30:  # the normal approximation: exact enough for counts this large
        return max(round(rng.gauss(lam, math.sqrt(lam))), 0)
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k, p = k + 1, p * rng.random()
    return k


def events(s: Scenario, seed: int = 0, flush_ms: int = 100) -> list[FlowEvent]:
    """Seeded Poisson counts per host per flush; each host flushes at its own phase."""
    rng = random.Random(f"{s.name}/{seed}")
    out = []
    end = round(s.duration_s * 1000)
    for i, host in enumerate(HOSTS):
        phase = (i * 10) % flush_ms
        for t in range(phase, end, flush_ms):
            if n := _poisson(rng, s.rate(host, t / 1000) * flush_ms / 1000):
                out.append(FlowEvent(s.start_ms + t, host, n))
    out.sort(key=lambda e: e.ts_ms)
    return out


def learned(
    config: MonitorConfig, per_s: float, now_ms: int, history_ms: int = 4 * 3_600_000
) -> Baseline:
    """A baseline that has expected `per_s` orders/s for `history_ms` (past warm-up) up to
    `now_ms`, with no time-of-day profile yet: a node trading steadily for a while."""
    baseline = Baseline(config.baseline_params())
    per_window = per_s * config.window_ms / 1000
    t = now_ms - max(history_ms, config.warmup_ms + 2 * config.window_ms)
    baseline.advance(t)
    while t < now_ms:
        t = min(t + config.window_ms, now_ms)
        baseline.learn(t, per_window, baseline.advance(t), profile=False)
    return baseline


def compressed(config: MonitorConfig, k: float) -> MonitorConfig:
    """`config` with every duration k x shorter and `min_orders` k x smaller (a window k x
    shorter holds k x fewer orders); the fast rules stay at 1 s, so with 1 s windows they
    are off, as in the demo."""

    def short(v: int | None) -> int | None:
        return None if v is None else max(round(v / k), 1)

    return replace(
        config,
        window_ms=round(config.window_ms / k),
        half_life_ms=round(config.half_life_ms / k),
        warmup_ms=round(config.warmup_ms / k),
        profile_bucket_ms=round(config.profile_bucket_ms / k),
        profile_half_life_ms=round(config.profile_half_life_ms / k),
        baseline_doubling_ms=short(config.baseline_doubling_ms),
        baseline_slow_half_life_ms=short(config.baseline_slow_half_life_ms),
        min_orders=round(config.min_orders / k),
    )


def start_baseline(s: Scenario, config: MonitorConfig) -> dict[str, str] | None:
    if not s.warm:
        return None
    return learned(config, PER_HOST * len(HOSTS), s.start_ms).to_dict()


# -- the incidents ---------------------------------------------------------------------------


def _normal(_h: str, _t: float) -> float:
    return PER_HOST


def post_burst_flood(pre_s: float = PRE_S) -> Scenario:
    """A 2.5x burst for three windows, then every host at 6.25x (the issue's 125/s after a
    burst of 50/s, on hosts that normally send 20/s)."""
    burst, onset = pre_s - 30, pre_s

    def rate(_h: str, t: float) -> float:
        return PER_HOST * (6.25 if t >= onset else 2.5 if t >= burst else 1.0)

    title = "6.25x flood right after a 2.5x burst"
    return Scenario("post_burst_flood", title, pre_s + 120, onset, rate)


def runaway(doubling_min: float, pre_s: float = PRE_S) -> Scenario:
    """From the onset the node doubles every `doubling_min` minutes (up to 1000x)."""
    d = doubling_min * 60

    def rate(_h: str, t: float) -> float:
        growth: float = 2.0 ** (max(t - pre_s, 0.0) / d)
        return PER_HOST * min(growth, 1000.0)

    name = f"runaway_{doubling_min:g}m"
    title = f"runaway doubling every {doubling_min:g} min"
    return Scenario(name, title, pre_s + min(12 * d, 7200), pre_s, rate)


def ramp() -> Scenario:
    """A linear ramp from 1x to 10x over 30 minutes, then 10x."""

    def rate(_h: str, t: float) -> float:
        return PER_HOST * (1.0 + 9.0 * min(max(t - PRE_S, 0.0) / 1800, 1.0))

    return Scenario("ramp", "linear ramp 1x -> 10x over 30 min", PRE_S + 2400, PRE_S, rate)


def pulse(pre_s: float = PRE_S) -> Scenario:
    """6x for 15 s, normal for 10 s, repeated: under the line between its pulses."""

    def rate(_h: str, t: float) -> float:
        on = t >= pre_s and (t - pre_s) % 25 < 15
        return PER_HOST * (6.0 if on else 1.0)

    return Scenario("pulse", "pulse: 6x 15 s, 1x 10 s, repeated", pre_s + 300, pre_s, rate)


def warmup_flood() -> Scenario:
    """The aggregator starts with no baseline; 3.5 minutes into its 5-minute warm-up the
    node floods at 6x."""
    onset = 210.0

    def rate(_h: str, t: float) -> float:
        return PER_HOST * (6.0 if t >= onset else 1.0)

    return Scenario("warmup_flood", "6x flood during warm-up", 600, onset, rate, warm=False)


def cold_start_flood() -> Scenario:
    """The node floods at 6x from the first second the aggregator (no baseline) sees."""

    def rate(_h: str, _t: float) -> float:
        return PER_HOST * 6.0

    return Scenario("cold_start_flood", "6x flood at cold start", 600, 0.0, rate, warm=False)


def step_change() -> Scenario:
    """A legitimate new level: 6x from the onset on (a new venue, a new strategy). It trips
    once; the operators' re-arm accepts it, and nothing trips after that."""

    def rate(_h: str, t: float) -> float:
        return PER_HOST * (6.0 if t >= PRE_S else 1.0)

    title = "legitimate 6x step, accepted by a re-arm"
    return Scenario("step_change", title, PRE_S + 1800, PRE_S, rate, accepted=True)


def haunted() -> Scenario:
    """One host ramps slowly from its normal to 10x over 20 minutes; the rest are normal."""

    def rate(h: str, t: float) -> float:
        if h != "or-03":
            return PER_HOST
        return PER_HOST * (1.0 + 9.0 * min(max(t - PRE_S, 0.0) / 1200, 1.0))

    return Scenario("haunted", "one host ramps 1x -> 10x over 20 min", PRE_S + 1500, PRE_S, rate)


def incidents() -> list[Scenario]:
    return [
        post_burst_flood(), runaway(1), runaway(5), runaway(15), ramp(), pulse(),
        warmup_flood(), cold_start_flood(), step_change(), haunted(),
    ]  # fmt: skip


# -- normal days -----------------------------------------------------------------------------


def normal_day(seed: int) -> Scenario:
    """A trading day, 09:30-16:00 New York: a 2.5x open burst and a 2.5x close burst of one
    to three windows, 2.5x news bursts of one to three windows, a lunch lull at half the
    level (12:00-13:30, eased in and out over 5 minutes), hosts unevenly loaded, the day's
    level within 15% of the usual. Day `seed` of the month, its draws from the seed."""
    rng = random.Random(f"normal_day/{seed}")
    level = rng.uniform(0.85, 1.15)
    weight = {h: rng.uniform(0.8, 1.2) for h in HOSTS}
    bursts = [(0.0, rng.uniform(10, 30)), (SESSION_S - 30, rng.uniform(10, 30))]
    for _ in range(rng.randint(3, 6)):
        bursts.append((rng.uniform(600, SESSION_S - 600), rng.uniform(10, 30)))
    lull_in, lull_out = 2.5 * 3600, 4.0 * 3600

    def shape(t: float) -> float:
        if lull_in <= t < lull_out:
            ease = min(t - lull_in, lull_out - t, 300.0) / 300.0
            return 1.0 - 0.5 * ease
        return 1.0

    def rate(h: str, t: float) -> float:
        burst = 2.5 if any(b <= t < b + n for b, n in bursts) else 1.0
        return PER_HOST * level * weight[h] * shape(t) * burst

    title = "normal day: open/close bursts, lunch lull, news bursts"
    return Scenario(f"normal_day_{seed}", title, SESSION_S, None, rate, start_s=OPEN_S, day=seed)


def named(name: str) -> Scenario:
    """The scenario called `name`: an incident, or `normal_day_N` (day N of the month)."""
    for s in incidents():
        if s.name == name:
            return s
    prefix = "normal_day_"
    if name.startswith(prefix) and name[len(prefix) :].isdecimal():
        return normal_day(int(name[len(prefix) :]))
    known = ", ".join([s.name for s in incidents()] + [f"{prefix}N"])
    raise ValueError(f"no scenario {name!r}; known: {known}")


# -- replaying them --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one rule set did on one scenario."""

    scenario: str
    trips: tuple[tuple[int, str], ...]  # (ms after the start, cause), enforcing only
    detected_s: float | None  # onset to the first trip
    cause: str | None
    let_through: int | None  # orders sent from the onset to the first trip
    multiple: float | None  # the node's rate at the first trip, x its normal
    after_accept: int = 0  # trips after the first (a re-arm accepted it)


def run(
    s: Scenario,
    config: MonitorConfig,
    *,
    seed: int = 0,
    tick_ms: int = default_ms("tick"),
    flush_ms: int = 100,
    flow: Sequence[FlowEvent] | None = None,
    baseline: dict[str, str] | None = None,
) -> Outcome:
    """Replay `s` through the aggregator's `Monitor` in virtual time (`backtest.replay`).

    An incident stops at its first trip, unless it is `accepted` (then the node is re-armed
    a minute after each trip, which teaches the baseline its level, and later trips count as
    false). A normal day is re-armed a minute after each trip; every trip is false.
    """
    flow = events(s, seed, flush_ms) if flow is None else flow
    stop = s.onset_s is not None and not s.accepted
    result = replay(
        flow,
        config,
        tick_ms=tick_ms,
        rearm_after_ms=None if stop else 60_000,
        baseline=baseline if baseline is not None else start_baseline(s, config),
        roster=HOSTS,
    )
    trips = tuple((t.at_ms - s.start_ms, t.cause) for t in result.trips if not t.shadow)
    if s.onset_s is None or not trips:
        return Outcome(s.name, trips, None, None, None, None)
    onset = s.start_ms + round(s.onset_s * 1000)
    first_ms, cause = trips[0]
    sent = sum(e.count for e in flow if onset <= e.ts_ms <= s.start_ms + first_ms)
    return Outcome(
        s.name,
        trips,
        round(first_ms / 1000 - s.onset_s, 1),
        cause,
        sent,
        round(s.multiple(first_ms / 1000), 2),
        len(trips) - 1 if s.accepted else 0,
    )
