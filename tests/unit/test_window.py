"""`SlidingWindow`: the node-wide order sum the aggregator trips on; pure, no Redis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.rules.window import SlidingWindow

WIDTH = 10_000  # a 10 s window, in milliseconds of Redis server time
NOW = 1_700_000_010_000


class TestSlidingWindow:
    @pytest.mark.parametrize(
        ("ts", "inside"),
        [
            pytest.param(NOW - WIDTH - 1, False, id="before-boundary"),
            pytest.param(NOW - WIDTH, False, id="exactly-at-boundary-is-out"),
            pytest.param(NOW - WIDTH + 1, True, id="one-ms-inside"),
            pytest.param(NOW - 1, True, id="just-before-now"),
            pytest.param(NOW, True, id="at-now"),
            pytest.param(NOW + 250, True, id="in-the-future-is-kept"),
        ],
    )
    def test_boundary(self, ts: int, inside: bool) -> None:
        """An entry counts for the window ending at now exactly when now - width < ts."""
        w = SlidingWindow(WIDTH)
        w.add(ts, "or-01", 40)
        w.advance(NOW)
        assert w.total == (40 if inside else 0)
        assert dict(w.by_host) == ({"or-01": 40} if inside else {})

    def test_per_host_totals(self) -> None:
        """Counts add up per host and across the node, and hosts leave when they drop to zero."""
        w = SlidingWindow(WIDTH)
        w.add(NOW - 9_000, "or-01", 120)
        w.add(NOW - 8_000, "or-02", 30)
        w.add(NOW - 2_000, "or-01", 5)
        w.add(NOW - 1_000, "or-03", 1)
        w.advance(NOW)
        assert w.total == 156
        assert dict(w.by_host) == {"or-01": 125, "or-02": 30, "or-03": 1}
        w.advance(NOW + 1_000)  # the 120 at NOW-9000 is now exactly on the boundary
        assert w.total == 36
        assert dict(w.by_host) == {"or-01": 5, "or-02": 30, "or-03": 1}
        w.advance(NOW + 2_000)
        assert dict(w.by_host) == {"or-01": 5, "or-03": 1}
        assert "or-02" not in w.by_host

    @pytest.mark.parametrize("count", [0, -3])
    def test_non_positive_counts_are_ignored(self, count: int) -> None:
        """A flush with no orders (or a nonsensical negative count) changes nothing."""
        w = SlidingWindow(WIDTH)
        w.add(NOW, "or-01", count)
        assert w.total == 0
        assert dict(w.by_host) == {}

    def test_clear(self) -> None:
        """clear() empties the window, and later entries count from zero."""
        w = SlidingWindow(WIDTH)
        w.add(NOW - 5, "or-01", 7)
        w.add(NOW - 4, "or-02", 9)
        w.clear()
        assert w.total == 0
        assert dict(w.by_host) == {}
        w.add(NOW, "or-02", 2)
        w.advance(NOW + WIDTH)  # the cleared entries must not be evicted a second time
        assert w.total == 0
        assert dict(w.by_host) == {}

    def test_advance_does_not_resurrect(self) -> None:
        """Moving `now` backwards does not bring evicted entries back."""
        w = SlidingWindow(WIDTH)
        w.add(NOW - WIDTH, "or-01", 3)
        w.advance(NOW)
        w.advance(NOW - 5_000)
        assert w.total == 0

    @pytest.mark.parametrize("width", [0, -1000])
    def test_width_must_be_positive(self, width: int) -> None:
        """A window of zero or negative width is refused when built."""
        with pytest.raises(ValueError, match="positive"):
            SlidingWindow(width)


HOSTS = ["or-01", "or-02", "or-03", "or-04"]


@st.composite
def flows(draw: st.DrawFn) -> tuple[int, list[tuple[int, str, int]], int]:
    """A width, flow entries with non-decreasing timestamps, and a final `now`."""
    width = draw(st.integers(min_value=1, max_value=5_000))
    start = draw(st.integers(min_value=0, max_value=10**12))
    gaps = draw(st.lists(st.integers(min_value=0, max_value=2_000), max_size=60))
    entries = []
    ts = start
    for gap in gaps:
        ts += gap
        entries.append((ts, draw(st.sampled_from(HOSTS)), draw(st.integers(-1, 50))))
    now = draw(st.integers(min_value=start - 1_000, max_value=ts + 3_000))
    return width, entries, now


def brute_force(
    width: int, entries: list[tuple[int, str, int]], now: int
) -> tuple[int, dict[str, int]]:
    """The documented semantics: an entry counts unless it fell out (ts <= now - width)."""
    by_host: dict[str, int] = {}
    for ts, host, count in entries:
        if count > 0 and ts > now - width:
            by_host[host] = by_host.get(host, 0) + count
    return sum(by_host.values()), by_host


class TestSlidingWindowProperties:
    @given(flows())
    def test_matches_brute_force(self, flow: tuple[int, list[tuple[int, str, int]], int]) -> None:
        """After adds and advance(now), the sums equal a brute-force count of the window."""
        width, entries, now = flow
        w = SlidingWindow(width)
        for ts, host, count in entries:
            w.add(ts, host, count)
        w.advance(now)
        total, by_host = brute_force(width, entries, now)
        assert w.total == total
        assert dict(w.by_host) == by_host

    @given(flows(), st.data())
    def test_interleaved_advances_match_brute_force(
        self, flow: tuple[int, list[tuple[int, str, int]], int], data: st.DataObject
    ) -> None:
        """Advancing along the way (as the aggregator does) ends with the same sums."""
        width, entries, now = flow
        w = SlidingWindow(width)
        for ts, host, count in entries:
            w.add(ts, host, count)
            if data.draw(st.booleans()):
                upto = min(ts, now)  # never past the final now, nor past entries yet to come
                w.advance(data.draw(st.integers(min_value=upto - width, max_value=upto)))
        w.advance(now)
        total, by_host = brute_force(width, entries, now)
        assert w.total == total
        assert dict(w.by_host) == by_host
        assert all(v > 0 for v in w.by_host.values())


class TestArrivalOrder:
    @given(
        st.lists(
            st.tuples(st.integers(0, 5_000), st.sampled_from(["a", "b", "c"]), st.integers(1, 50)),
            max_size=60,
        ),
        st.randoms(use_true_random=False),
        st.integers(0, 6_000),
    )
    def test_window_is_exact_whatever_the_arrival_order(
        self, entries: list[tuple[int, str, int]], rnd: object, now: int
    ) -> None:
        """Entries added in any order give the same totals as a brute-force sum of the window."""
        shuffled = list(entries)
        rnd.shuffle(shuffled)  # type: ignore[attr-defined]
        w = SlidingWindow(1_000)
        for ts, host, count in shuffled:
            w.add(ts, host, count)
        w.advance(now)
        inside = [(ts, h, c) for ts, h, c in entries if ts > now - 1_000]
        assert w.total == sum(c for _, _, c in inside)
        expect: dict[str, int] = {}
        for _, h, c in inside:
            expect[h] = expect.get(h, 0) + c
        assert dict(w.by_host) == expect
