"""FlatTracker: when a host counts as flat after a kill (pure, no sockets)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.enforce.flat import FlatTracker


class TestFlatTracker:
    def test_every_subscriber_must_answer(self) -> None:
        """Two subscribers at the kill: flat only after both answered for that epoch."""
        f = FlatTracker()
        f.killed(7, ["a", "b"])
        assert f.flat("a", 7) == "" and f.flat_epoch == 0 and f.owed == 1
        assert f.flat("b", 7) == "" and f.flat_epoch == 7 and f.owed == 0

    def test_wrong_epoch_refused(self) -> None:
        """A FLAT for another epoch, or with no kill, is refused and proves nothing."""
        f = FlatTracker()
        assert f.flat("a", 7) == "no kill to flatten"
        f.killed(7, ["a"])
        assert "not the kill" in f.flat("a", 6)
        assert f.flat_epoch == 0

    def test_late_subscriber_owes_too(self) -> None:
        """A process that subscribes during the kill is part of the proof."""
        f = FlatTracker()
        f.killed(3, ["a"])
        f.subscribed("b")
        f.flat("a", 3)
        assert f.flat_epoch == 0
        f.flat("b", 3)
        assert f.flat_epoch == 3

    def test_same_kill_again_keeps_progress(self) -> None:
        """The same epoch enforced again (a re-kill keeps the epoch) does not reset answers."""
        f = FlatTracker()
        f.killed(3, ["a", "b"])
        f.flat("a", 3)
        f.killed(3, ["a", "b"])
        f.flat("b", 3)
        assert f.flat_epoch == 3

    def test_arm_clears(self) -> None:
        """After an arm an old FLAT is refused and a new kill starts from scratch."""
        f = FlatTracker()
        f.killed(3, ["a"])
        f.armed()
        assert f.flat("a", 3) == "no kill to flatten"
        f.killed(5, ["a"])
        assert f.owed == 1

    @given(subs=st.sets(st.integers(0, 20), min_size=1), order=st.randoms())
    def test_flat_iff_all_answered(self, subs: set[int], order: object) -> None:
        """Whatever the answer order, flat exactly when the last owed subscriber answered."""
        f = FlatTracker()
        f.killed(9, subs)
        seq = sorted(subs)
        order.shuffle(seq)  # type: ignore[attr-defined]
        for i, s in enumerate(seq):
            assert f.flat_epoch == 0
            f.flat(s, 9)
            assert (f.flat_epoch == 9) == (i == len(seq) - 1)
