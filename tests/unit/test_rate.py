"""The order rate a host reports (sidecar.rate.OrderRate)."""

from __future__ import annotations

import pytest

from killswitch.sidecar.rate import OrderRate


class TestOrderRate:
    def test_first_sample_is_zero(self) -> None:
        """One sample has no interval: the rate is 0, not a division by zero."""
        assert OrderRate().update(5.0, 100) == 0.0

    @pytest.mark.parametrize(
        ("samples", "want"),
        [
            ([(0.0, 0), (0.5, 50)], 100.0),
            ([(0.0, 0), (0.5, 500), (1.0, 600), (1.6, 700)], 100 / 0.6),  # older than 1 s: dropped
            ([(0.0, 0), (10.0, 1000)], 100.0),  # two samples kept however far apart
            ([(1.0, 10), (1.0, 20)], 0.0),  # no time passed
        ],
    )
    def test_rate_over_about_the_last_second(
        self, samples: list[tuple[float, int]], want: float
    ) -> None:
        """Orders a second over the samples of the last second, at least the two newest."""
        r = OrderRate()
        got = [r.update(t, n) for t, n in samples][-1]
        assert got == pytest.approx(want)
