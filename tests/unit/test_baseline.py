"""The learned baseline: EWMA arithmetic, time-of-day profile, and its Redis hash form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.core.rules.baseline import (
    DAY_MS,
    Baseline,
    BaselineParams,
    BaselineStateError,
    BaselineTrip,
    Bucket,
    Ewma,
)

DAY0 = 1_343_779_200_000  # 2012-08-01 00:00 UTC
MIN = 60_000


class TestEwma:
    def test_empty_has_no_value(self) -> None:
        """Before any sample there is no estimate, rather than a made-up zero."""
        assert Ewma().value is None

    @pytest.mark.parametrize("sample", [0.0, 17.0, 1234.5])
    def test_first_sample_is_the_estimate(self, sample: float) -> None:
        """Bias correction: one short sample is the estimate, not a fraction of it."""
        e = Ewma()
        e.update(sample, 100, 45_000)
        assert e.value == pytest.approx(sample)

    @pytest.mark.parametrize(
        ("half_lives", "expected"),
        [(1, 1500.0), (2, 1750.0), (3, 1875.0)],
    )
    def test_half_life(self, half_lives: int, expected: float) -> None:
        """After one half-life a new level has moved the estimate halfway, then 3/4, 7/8."""
        e = Ewma()
        for _ in range(1000):
            e.update(1000.0, 1000, 10_000)  # long enough that the start no longer matters
        for _ in range(half_lives * 100):
            e.update(2000.0, 100, 10_000)
        assert e.value == pytest.approx(expected, rel=1e-6)

    def test_tick_rate_does_not_matter(self) -> None:
        """Ten updates of 100 ms weigh the same as one of a second."""
        fine, coarse = Ewma(1000.0, 1.0), Ewma(1000.0, 1.0)
        for _ in range(10):
            fine.update(3000.0, 100, 45_000)
        coarse.update(3000.0, 1000, 45_000)
        assert fine.value == pytest.approx(coarse.value, rel=1e-12)


class TestAdvance:
    @pytest.mark.parametrize(
        ("last", "now", "dt", "new_last"),
        [
            (None, 5000, 0, 5000),  # first call: nothing to learn for yet
            (5000, 5100, 100, 5100),
            (5000, 5000, 0, 5000),
            (5000, 4000, 0, 5000),  # a clock stepping back is ignored, not unlearned
            (5000, 5000 + 8 * 3_600_000, 10_000, 5000 + 8 * 3_600_000),  # a night: one window
        ],
    )
    def test_advance(self, last: int | None, now: int, dt: int, new_last: int) -> None:
        """Learning time is the time since the last call, capped at one window."""
        b = Baseline(BaselineParams(window_ms=10_000), last_ms=last)
        assert b.advance(now) == dt
        assert b.last_ms == new_last


class TestProfile:
    @pytest.mark.parametrize(
        ("offset_ms", "bucket"),
        [
            (0, 0),
            (4 * MIN + 59_999, 0),
            (5 * MIN, 1),
            ((9 * 60 + 30) * MIN, 114),
            (DAY_MS - 1, 287),
        ],
    )
    def test_buckets_of_the_utc_day(self, offset_ms: int, bucket: int) -> None:
        """5-minute buckets of the UTC day, the same bucket every day."""
        b = Baseline()
        assert b.bucket_of(DAY0 + offset_ms) == bucket
        assert b.bucket_of(DAY0 + DAY_MS + offset_ms) == bucket

    def test_bucket_speaks_after_a_full_bucket(self) -> None:
        """A bucket is trusted only once it has learned a whole bucket's worth of time."""
        b = Baseline()
        start = DAY0 + 9 * 60 * MIN
        for i in range(2999):
            b.learn(start + i * 100, 800.0, 100)
        assert b.profile_expected(start + 100) is None  # 299.9 s learned: not yet
        b.learn(start + 2999 * 100, 800.0, 100)
        assert b.profile_expected(start + 100) == pytest.approx(800.0)

    @pytest.mark.parametrize(
        ("global_", "profile", "expected"),
        [
            (None, None, None),
            (500.0, None, 500.0),
            (None, 900.0, 900.0),
            (500.0, 900.0, 900.0),
            (1200.0, 900.0, 1200.0),
        ],
    )
    def test_expected_is_the_larger(
        self, global_: float | None, profile: float | None, expected: float | None
    ) -> None:
        """Expected volume is max(global EWMA, this time of day's profile)."""
        b = Baseline()
        now = DAY0 + 570 * MIN
        if global_ is not None:
            b.global_ = Ewma(global_, 1.0)
        if profile is not None:
            b.profile[b.bucket_of(now)] = Bucket(Ewma(profile, 1.0), 300_000)
        assert b.expected(now) == expected


@st.composite
def learned(draw: st.DrawFn) -> Baseline:
    """A baseline that learned a random history over random times of day."""
    b = Baseline(BaselineParams(window_ms=10_000, bucket_ms=60_000))
    now = DAY0 + draw(st.integers(0, DAY_MS))
    for dt, sample in draw(
        st.lists(st.tuples(st.integers(0, 200_000), st.floats(0, 1e7)), max_size=30)
    ):
        now += dt
        b.learn(now, sample, b.advance(now))
    if draw(st.booleans()):
        start = now - draw(st.integers(0, 100_000))
        b.trip = BaselineTrip(start, now, draw(st.floats(0, 1e7)), draw(st.booleans()))
    return b


OPEN = DAY0 + 570 * MIN  # 09:30 UTC, the first ms of bucket 114


def tripped(start: int, at: int, value: float = 10_000.0, killed: bool = True) -> Baseline:
    """A warm baseline of 1000 orders per window with a baseline trip on record."""
    b = Baseline(global_=Ewma(1000.0, 1.0), learned_ms=3_600_000, last_ms=at)
    b.trip = BaselineTrip(start, at, value, killed)
    return b


class TestAccept:
    def test_global_becomes_at_least_the_tripping_level(self) -> None:
        """A re-arm after a kill makes the tripping window's level the global expectation."""
        b = tripped(OPEN + 5000, OPEN + 15_000)
        assert b.accept(OPEN + 75_000) == BaselineTrip(OPEN + 5000, OPEN + 15_000, 10_000.0, True)
        assert b.global_.value == pytest.approx(10_000.0)
        assert b.trip is None

    def test_global_above_the_level_is_kept(self) -> None:
        """Accepting a level below what the global EWMA already expects lowers nothing."""
        b = tripped(OPEN + 5000, OPEN + 15_000, value=600.0)
        b.accept(OPEN + 75_000)
        assert b.global_.value == 1000.0

    @pytest.mark.parametrize(
        ("start", "at", "rearm", "credited"),
        [
            # breach + kill, all inside the 09:30 bucket
            (OPEN + 5000, OPEN + 15_000, OPEN + 75_000, {114: 70_000}),
            # re-armed two hours later: nothing past the end of the trip's bucket
            (OPEN + 5000, OPEN + 15_000, OPEN + 2 * 3_600_000, {114: 295_000}),
            # a breach straddling 09:35: both buckets it touched, and no further
            (OPEN + 295_000, OPEN + 305_000, OPEN + 3_600_000, {114: 5000, 115: 300_000}),
            # the kill ran past the bucket the breach was in: that bucket only
            (OPEN + 280_000, OPEN + 290_000, OPEN + 350_000, {114: 20_000}),
        ],
    )
    def test_profile_learns_the_breach_buckets(
        self, start: int, at: int, rearm: int, credited: dict[int, int]
    ) -> None:
        """Buckets the breach touched learn its level for their time from its start to the re-arm."""
        b = tripped(start, at)
        b.accept(rearm)
        assert {i: bucket.learned_ms for i, bucket in b.profile.items()} == credited
        for bucket in b.profile.values():
            assert bucket.ewma.value == pytest.approx(10_000.0)

    @pytest.mark.parametrize(
        "b",
        [
            tripped(OPEN + 5000, OPEN + 15_000, killed=False),  # the kill never landed
            Baseline(global_=Ewma(1000.0, 1.0)),  # no trip on record
        ],
    )
    def test_nothing_to_accept(self, b: Baseline) -> None:
        """Without a trip that killed the node, a re-arm teaches nothing and clears the record."""
        before = (b.global_.value, dict(b.profile))
        assert b.accept(OPEN + 75_000) is None
        assert (b.global_.value, b.profile, b.trip) == (*before, None)

    def test_mark_killed(self) -> None:
        """Seeing the node killed marks the trip as one a re-arm answers; no trip, no change."""
        b = tripped(OPEN, OPEN + 10_000, killed=False)
        b.mark_killed()
        assert b.trip is not None and b.trip.killed
        empty = Baseline()
        empty.mark_killed()
        assert empty.trip is None

    @settings(max_examples=80, deadline=None)
    @given(
        learned(),
        st.integers(0, DAY_MS),
        st.integers(0, 600_000),
        st.integers(0, 7_200_000),
        st.floats(0, 1e7),
    )
    def test_accept_is_bounded(
        self, b: Baseline, start: int, breach: int, kill: int, value: float
    ) -> None:
        """Accepting moves each estimate only towards the tripping level, and the global up to it."""
        start += DAY0
        b.trip = BaselineTrip(start, start + breach, value, True)
        now = start + breach + kill
        global_before = b.global_.value
        before = {i: x.ewma.value for i, x in b.profile.items()}
        learned_before = sum(x.learned_ms for x in b.profile.values())
        b.accept(now)
        want = value if global_before is None else max(global_before, value)
        assert b.global_.value == pytest.approx(want, rel=1e-9, abs=1e-12)
        for i, x in b.profile.items():
            old, new = before.get(i), x.ewma.value
            assert new is not None
            lo, hi = (value, value) if old is None else (min(old, value), max(old, value))
            assert lo * (1 - 1e-9) - 1e-12 <= new <= hi * (1 + 1e-9) + 1e-12
        added = sum(x.learned_ms for x in b.profile.values()) - learned_before
        assert added == min(now, b.bucket_span(start + breach)[1]) - start


class TestSerialization:
    @settings(max_examples=80, deadline=None)
    @given(learned())
    def test_round_trip(self, b: Baseline) -> None:
        """Read back from its Redis hash form, a baseline is exactly what was stored."""
        stored = b.to_dict()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in stored.items())
        assert Baseline.from_dict(stored, b.params) == b

    def test_bytes_as_redis_returns_them(self) -> None:
        """The hash may come back as bytes (redis-py without decode_responses)."""
        b = Baseline(global_=Ewma(812.5, 0.75), learned_ms=400_000, last_ms=DAY0)
        raw = {k.encode(): v.encode() for k, v in b.to_dict().items()}
        assert Baseline.from_dict(raw, b.params) == b

    def test_trip_round_trip(self) -> None:
        """The trip a re-arm may answer is stored with the baseline and read back as it was."""
        b = tripped(OPEN + 5000, OPEN + 15_000, value=12_345.5, killed=True)
        stored = b.to_dict()
        assert stored["trip"] == f"{OPEN + 5000} {OPEN + 15_000} 12345.5 1"
        assert Baseline.from_dict(stored, b.params) == b

    def test_stored_without_trip_still_loads(self) -> None:
        """A hash stored before trips were kept loads as before, with no trip to answer."""
        stored = {
            "format": "1",
            "window_ms": "10000",
            "bucket_ms": "300000",
            "learned_ms": "400000",
            "last_ms": str(DAY0),
            "global": "812.5 0.75",
            "p114": "1200.0 1.0 300000",
        }
        got = Baseline.from_dict(stored, BaselineParams())
        assert got.trip is None and got.global_.value == pytest.approx(812.5 / 0.75)
        # The slow estimate, stored since, starts from the global one.
        assert got.to_dict() == {**stored, "slow": "812.5 0.75"}

    @settings(max_examples=40, deadline=None)
    @given(learned())
    def test_only_buckets_start_with_p(self, b: Baseline) -> None:
        """Earlier readers parse every `p` key as a bucket, so no other field may start with p."""
        for key in b.to_dict():
            assert not key.startswith("p") or key[1:].isdecimal()

    def test_other_window_rescales(self) -> None:
        """Stored for 10 s windows and read for 5 s ones, the volumes halve; warm-up survives."""
        b = Baseline(global_=Ewma(800.0, 1.0), learned_ms=400_000)
        b.profile[3] = Bucket(Ewma(1200.0, 1.0), 300_000)
        b.trip = BaselineTrip(DAY0, DAY0 + 10_000, 5000.0, True)
        got = Baseline.from_dict(b.to_dict(), BaselineParams(window_ms=5000))
        assert got.global_.value == 400.0
        assert got.profile[3].ewma.value == 600.0
        assert got.learned_ms == 400_000
        assert got.trip == BaselineTrip(DAY0, DAY0 + 10_000, 2500.0, True)

    def test_other_bucket_size_drops_profile(self) -> None:
        """A profile cannot be re-bucketed honestly, so it is dropped; the rest is kept."""
        b = Baseline(global_=Ewma(800.0, 1.0), learned_ms=400_000)
        b.profile[3] = Bucket(Ewma(1200.0, 1.0), 300_000)
        got = Baseline.from_dict(b.to_dict(), BaselineParams(bucket_ms=600_000))
        assert got.profile == {}
        assert got.global_.value == 800.0

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"format": "0"}, "format"),
            ({"window_ms": "ten"}, "window_ms"),
            ({"window_ms": "0"}, "window_ms"),
            ({"learned_ms": None}, "learned_ms"),
            ({"global": "1.0"}, "global"),
            ({"global": "nan 1"}, "global"),
            ({"global": "-5 1"}, "global"),
            ({"p999": "1 1 1"}, "p999"),
            ({"px": "1 1 1"}, "px"),
            ({"trip": "1 2 x 0"}, "trip"),
            ({"trip": "1 2 3"}, "trip"),
            ({"trip": "1 2 3 2"}, "trip"),
            ({"trip": "1 2 -3 1"}, "trip"),
        ],
    )
    def test_bad_state_names_the_field(self, change: dict[str, str | None], field: str) -> None:
        """A damaged hash is refused with an error naming the bad field."""
        stored = Baseline(global_=Ewma(1.0, 1.0)).to_dict()
        for k, v in change.items():
            if v is None:
                del stored[k]
            else:
                stored[k] = v
        with pytest.raises(BaselineStateError, match=field):
            Baseline.from_dict(stored, BaselineParams())

    @pytest.mark.parametrize(
        ("field", "value"),
        [("window_ms", 0), ("half_life_ms", -1), ("bucket_ms", DAY_MS + 1), ("profile_min_ms", -1)],
    )
    def test_bad_params_name_the_field(self, field: str, value: int) -> None:
        """Bad learning parameters are refused, naming the field."""
        with pytest.raises(ValueError, match=field):
            BaselineParams(**{field: value})
