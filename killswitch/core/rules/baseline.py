"""The learned baseline of one node: how many orders per window are normal right now.

Pure arithmetic on numbers handed in (Redis server time in ms, orders per window). It must
never read a clock, touch Redis or decide a trip: `killswitch.core.rules.anomaly` judges a window
against `expected()` and tells this module whether the sample is normal enough to learn.

Two estimates, both exponentially weighted means (EWMA) of the node's window sum:

- the global EWMA, with a short half-life (default 45 s), follows the node through its day;
- the time-of-day profile, one EWMA per bucket of the UTC day (default 5 min), remembers
  what each part of the day looked like on earlier days, so tomorrow's open is expected.

`expected()` is the larger of the two (see `Baseline.expected` for why not a blend).

A third, slow EWMA (default half-life 2 h) remembers the node's level through a lull, so
the busy hour after lunch is judged against the morning, not against the lull.

Guarded learning (`learn(..., guarded=True)`, what the `Monitor` uses once warm): a sample
above `band` x the current expectation is learned as that edge, and the global and slow
estimates may rise by at most 2x per `doubling_ms` (they fall freely). So nothing the node
sends can drag the baseline up faster than that; only the operators can (`accept()`).

One exception to "learns only what it is told is normal": the last baseline trip is kept
(`Baseline.trip`), and when the node is re-armed after it, `accept()` learns the window
that tripped. Re-arming takes two approvers who looked at the trip: it is the operator
saying that level is normal for this node at this time of day.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

DAY_MS = 86_400_000
FORMAT = "1"  # bump when the layout of to_dict() changes; from_dict() refuses others


class BaselineStateError(ValueError):
    """A stored baseline could not be read back; the message names the bad field."""


@dataclass(frozen=True, slots=True)
class BaselineParams:
    """How fast the baseline learns. All durations in milliseconds."""

    window_ms: int = 10_000
    half_life_ms: int = 45_000
    bucket_ms: int = 300_000
    # Measured in time spent inside the bucket: a 5-minute bucket learns 5 minutes a day, so
    # 15 minutes means each day weighs 1 - 2**(-5/15) = 21%, a half-life of about 3 days.
    profile_half_life_ms: int = 900_000
    # A bucket speaks only after it has learned this long (default: one full bucket, i.e.
    # it has seen that time of day once). A half-seen bucket would speak for a moment only.
    profile_min_ms: int | None = None
    # The slow EWMA's half-life; None: no slow estimate (expected = max(global, profile)).
    slow_half_life_ms: int | None = 7_200_000
    band: float | None = 1.5  # guarded learning: a sample is learned as at most band x expected
    doubling_ms: int | None = 3_600_000  # guarded learning rises at most 2x in this time
    # The rise bound never holds an estimate below this (orders per window): under it the
    # baseline rule's limit is its `min_orders` floor anyway, and a node back from silence
    # (a night, a lunch break) must be able to climb back to it.
    floor: float = 20.0

    def __post_init__(self) -> None:
        for name in ("window_ms", "half_life_ms", "bucket_ms", "profile_half_life_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("slow_half_life_ms", "doubling_ms"):
            if (v := getattr(self, name)) is not None and v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        if self.band is not None and not self.band >= 1.0:
            raise ValueError(f"band must be at least 1, got {self.band}")
        if self.bucket_ms > DAY_MS:
            raise ValueError(f"bucket_ms must be at most one day ({DAY_MS}), got {self.bucket_ms}")
        if self.profile_min_ms is not None and self.profile_min_ms < 0:
            raise ValueError(f"profile_min_ms must not be negative, got {self.profile_min_ms}")

    @property
    def bucket_trust_ms(self) -> int:
        return self.bucket_ms if self.profile_min_ms is None else self.profile_min_ms


@dataclass(slots=True)
class Ewma:
    """A time-decayed EWMA kept as a decayed sum and a decayed weight.

    The estimate is `acc / weight` (bias-corrected) instead of a mean seeded with the first
    sample: a node's first windows are often half-filled, and a seed would anchor on them.
    """

    acc: float = 0.0
    weight: float = 0.0

    def update(self, sample: float, dt_ms: int, half_life_ms: int) -> None:
        # Decay by elapsed time, not per call, so the tick rate does not change the half-life.
        keep = 0.5 ** (dt_ms / half_life_ms)
        self.acc = keep * self.acc + (1.0 - keep) * sample
        self.weight = keep * self.weight + (1.0 - keep)

    @property
    def value(self) -> float | None:
        return self.acc / self.weight if self.weight > 0.0 else None

    def cap(self, before: float | None, rise: float, floor: float) -> None:
        """Hold the estimate at most `rise` x what it was `before` this update, but never
        under `floor`: the rise bound of guarded learning."""
        value = self.value
        if before is None or value is None:
            return
        limit = max(before * rise, floor)
        if value > limit:
            self.acc = limit * self.weight

    def settle(self, value: float) -> None:
        """Make the estimate `value`, keeping its weight (the warm-up's median)."""
        if self.weight > 0.0:
            self.acc = value * self.weight


@dataclass(slots=True)
class Bucket:
    """One time-of-day bucket of the profile."""

    ewma: Ewma = field(default_factory=Ewma)
    learned_ms: int = 0


@dataclass(frozen=True, slots=True)
class BaselineTrip:
    """A baseline trip a re-arm may answer: the breach that tripped, and whether it killed.

    Kept with the baseline (and stored with it) so a re-arm after an aggregator restart is
    still an answer to the trip the previous one made.
    """

    start_ms: int  # the breach's first evaluation: from here on nothing was learned
    at_ms: int  # the trip
    value: float  # orders in the tripping window: the level a re-arm accepts
    killed: bool = False  # the node was observed killed after the trip


@dataclass(slots=True)
class Baseline:
    """What the node's window volume normally is; learns only what it is told is normal.

    Time only moves forward here: `advance()` ignores a clock that steps back (a Redis
    failover to a slower clock) instead of unlearning.
    """

    params: BaselineParams = field(default_factory=BaselineParams)
    global_: Ewma = field(default_factory=Ewma)
    slow: Ewma = field(default_factory=Ewma)
    profile: dict[int, Bucket] = field(default_factory=dict)
    learned_ms: int = 0  # total time learned; warm-up is measured against this
    last_ms: int | None = None  # server time of the last advance()
    trip: BaselineTrip | None = None  # the last baseline trip, until a re-arm answers it

    def bucket_of(self, now_ms: int) -> int:
        return (now_ms % DAY_MS) // self.params.bucket_ms

    def advance(self, now_ms: int) -> int:
        """Move to `now_ms`; return the time to learn for, capped at one window.

        The cap is why a restart, a night off or a killed node do not decay what was learned:
        a gap counts as one window, not as hours of forgetting.
        """
        last = self.last_ms
        if last is not None and now_ms <= last:
            return 0
        self.last_ms = now_ms
        if last is None:
            return 0
        return min(now_ms - last, self.params.window_ms)

    def learn(
        self, now_ms: int, sample: float, dt_ms: int, *, guarded: bool = False, profile: bool = True
    ) -> None:
        """Fold `sample` (orders in the window ending at `now_ms`) in, weighted by `dt_ms`.

        `guarded`: the sample counts as at most `band` x what is expected now, and the
        global and slow estimates rise by at most 2x per `doubling_ms`. `profile=False`
        leaves the time-of-day profile alone (warm-up: the median settles what it learned).
        """
        if dt_ms <= 0:
            return
        p = self.params
        rise = None
        if guarded:
            ref = self.expected(now_ms)
            if ref is not None and p.band is not None:
                sample = min(sample, max(p.band * ref, p.floor))
            if p.doubling_ms is not None:
                rise = 2.0 ** (dt_ms / p.doubling_ms)
        estimates = [(self.global_, p.half_life_ms)]
        if p.slow_half_life_ms is not None:
            estimates.append((self.slow, p.slow_half_life_ms))
        for ewma, half_life in estimates:
            before = ewma.value
            ewma.update(sample, dt_ms, half_life)
            if rise is not None:
                # Bounded by its own past only, not by the profile's: a bucket learned from
                # today's flow (as at most band x the expectation) must not let the global
                # estimate climb to it, or buckets would ratchet each other up.
                ewma.cap(before, rise, p.floor)
        if profile:
            bucket = self.profile.setdefault(self.bucket_of(now_ms), Bucket())
            bucket.ewma.update(sample, dt_ms, p.profile_half_life_ms)
            bucket.learned_ms += dt_ms
        self.learned_ms += dt_ms

    def settle(self, value: float) -> None:
        """The end of warm-up: the global and slow estimates become `value` (the median of
        the warm-up's windows), so a flood during warm-up is not what the node is judged by."""
        self.global_.settle(value)
        self.slow.settle(value)

    def bucket_span(self, at_ms: int) -> tuple[int, int]:
        """The [start, end) in ms of the profile bucket holding `at_ms` (the day's last
        bucket is short when the bucket size does not divide the day)."""
        day = at_ms - at_ms % DAY_MS
        start = day + self.bucket_of(at_ms) * self.params.bucket_ms
        return start, min(start + self.params.bucket_ms, day + DAY_MS)

    def mark_killed(self) -> None:
        """The node is observed killed: a later re-arm answers the last trip."""
        if self.trip is not None and not self.trip.killed:
            self.trip = replace(self.trip, killed=True)

    def accept(self, now_ms: int) -> BaselineTrip | None:
        """The node was re-armed at `now_ms`: learn the last trip's window as normal.

        Only a trip that killed the node is answered by a re-arm; the record is consumed
        either way. What is learned, and no more:

        - the global EWMA becomes at least the tripping window's value, so the same level
          right after the re-arm is not a breach (more than multiplier x it still is);
        - each profile bucket the breach touched (from its first evaluation to the trip,
          usually one bucket) learns that value for the time in it from the breach's start
          to the re-arm: the time nothing was learned because of the breach and the kill.
          Tomorrow's same time of day expects it as if the breach had been normal, and a
          re-arm hours later teaches no bucket past the one the trip was in.

        Returns the trip that was accepted, or None.
        """
        trip, self.trip = self.trip, None
        if trip is None or not trip.killed or now_ms < trip.at_ms:
            return None
        p = self.params
        g = self.global_
        if g.weight > 0.0:
            g.acc = max(g.acc, trip.value * g.weight)
        else:
            g.acc, g.weight = trip.value, 1.0
        t = trip.start_ms
        while t <= trip.at_ms and t < now_ms:
            end = min(self.bucket_span(t)[1], now_ms)
            bucket = self.profile.setdefault(self.bucket_of(t), Bucket())
            bucket.ewma.update(trip.value, end - t, p.profile_half_life_ms)
            bucket.learned_ms += end - t
            t = end
        return trip

    def profile_expected(self, now_ms: int) -> float | None:
        bucket = self.profile.get(self.bucket_of(now_ms))
        if bucket is None or bucket.learned_ms < self.params.bucket_trust_ms:
            return None
        return bucket.ewma.value

    def expected(self, now_ms: int) -> float | None:
        """Orders per window expected now: max(global EWMA, this time of day's profile).

        The max and not a blend, because the two fail in opposite directions and only a
        false trip kills a healthy node. The profile knows the 09:30 open before it happens
        (the global EWMA can only follow it); the global EWMA knows today is busier than
        usual at 11:00 (a blend would pull the expectation down to a quiet history and trip
        a healthy busy day). The price is sensitivity at known-busy times, which the host
        share and static cap rules cover. None until anything was learned.

        The slow EWMA joins the max for the same reason: it remembers the morning through a
        lunch lull, so the afternoon's return is not judged against the lull.
        """
        values = [self.global_.value, self.profile_expected(now_ms)]
        if self.params.slow_half_life_ms is not None:
            values.append(self.slow.value)
        known = [v for v in values if v is not None]
        return max(known) if known else None

    def to_dict(self) -> dict[str, str]:
        """Flat strings for a Redis hash. Floats as repr(), which reads back exactly."""
        out = {
            "format": FORMAT,
            "window_ms": str(self.params.window_ms),
            "bucket_ms": str(self.params.bucket_ms),
            "learned_ms": str(self.learned_ms),
            "last_ms": "" if self.last_ms is None else str(self.last_ms),
            "global": f"{self.global_.acc!r} {self.global_.weight!r}",
            "slow": f"{self.slow.acc!r} {self.slow.weight!r}",
        }
        if self.trip is not None:
            # Not a `p` key: those are buckets, and earlier versions refuse a `p` they cannot
            # parse. Without this field (an older store) there is no trip to answer.
            t = self.trip
            out["trip"] = f"{t.start_ms} {t.at_ms} {t.value!r} {int(t.killed)}"
        for index in sorted(self.profile):
            b = self.profile[index]
            out[f"p{index}"] = f"{b.ewma.acc!r} {b.ewma.weight!r} {b.learned_ms}"
        return out

    @classmethod
    def from_dict(
        cls, data: Mapping[str, str] | Mapping[bytes, bytes], params: BaselineParams
    ) -> Baseline:
        """Read back `to_dict()` (str or bytes, as redis-py returns it) for `params`.

        A baseline stored for another window width is rescaled (orders per window scale
        with the width). A profile stored with another bucket size cannot be re-bucketed
        honestly and is dropped; the global EWMA and the warm-up survive.
        """
        d = {_text(k): _text(v) for k, v in data.items()}
        if d.get("format") != FORMAT:
            raise BaselineStateError(f"format: expected {FORMAT!r}, got {d.get('format')!r}")
        window_ms = _int(d, "window_ms")
        if window_ms <= 0:
            raise BaselineStateError(f"window_ms: must be positive, got {window_ms}")
        scale = params.window_ms / window_ms
        acc, weight = _floats(d, "global", 2)
        # A hash stored before the slow estimate existed starts it from the global one.
        s_acc, s_weight = _floats(d, "slow", 2) if "slow" in d else (acc, weight)
        last = d.get("last_ms", "")
        baseline = cls(
            params=params,
            global_=Ewma(acc * scale, weight),
            slow=Ewma(s_acc * scale, s_weight),
            learned_ms=_int(d, "learned_ms"),
            last_ms=_int(d, "last_ms") if last else None,
            trip=_trip(d, scale),
        )
        if _int(d, "bucket_ms") != params.bucket_ms:
            return baseline
        for key in d:
            if not key.startswith("p"):
                continue
            index = _parse_int(key, key[1:])
            b_acc, b_weight, b_learned = _floats(d, key, 3)
            if not (0 <= index < math.ceil(DAY_MS / params.bucket_ms)):
                raise BaselineStateError(f"{key}: no such bucket for bucket_ms={params.bucket_ms}")
            baseline.profile[index] = Bucket(Ewma(b_acc * scale, b_weight), int(b_learned))
        return baseline


def _trip(d: Mapping[str, str], scale: float) -> BaselineTrip | None:
    if "trip" not in d:
        return None
    parts = d["trip"].split()
    try:
        start, at, value, killed = int(parts[0]), int(parts[1]), float(parts[2]), int(parts[3])
    except (ValueError, IndexError):
        killed, value = -1, 0.0
    if len(parts) != 4 or killed not in (0, 1) or not (math.isfinite(value) and value >= 0.0):
        raise BaselineStateError(f"trip: expected 'start_ms at_ms value 0|1', got {parts}")
    return BaselineTrip(start, at, value * scale, bool(killed))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _parse_int(key: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BaselineStateError(f"{key}: not an integer: {raw!r}") from None


def _int(d: Mapping[str, str], key: str) -> int:
    if key not in d:
        raise BaselineStateError(f"{key}: missing")
    return _parse_int(key, d[key])


def _floats(d: Mapping[str, str], key: str, n: int) -> list[float]:
    parts = d.get(key, "").split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) and v >= 0.0 for v in values):
        raise BaselineStateError(f"{key}: expected {n} finite non-negative numbers, got {parts}")
    return values
