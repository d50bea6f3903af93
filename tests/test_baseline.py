"""The learned baseline: EWMA arithmetic, time-of-day profile, and its Redis hash form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from killswitch.baseline import (
    DAY_MS,
    Baseline,
    BaselineParams,
    BaselineStateError,
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
    return b


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

    def test_other_window_rescales(self) -> None:
        """Stored for 10 s windows and read for 5 s ones, the volumes halve; warm-up survives."""
        b = Baseline(global_=Ewma(800.0, 1.0), learned_ms=400_000)
        b.profile[3] = Bucket(Ewma(1200.0, 1.0), 300_000)
        got = Baseline.from_dict(b.to_dict(), BaselineParams(window_ms=5000))
        assert got.global_.value == 400.0
        assert got.profile[3].ewma.value == 600.0
        assert got.learned_ms == 400_000

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
