"""The epoch rules of `killswitch.core.node.state`: pure, so tables and properties, no Redis."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.node.state import (
    BlockReason,
    HostView,
    NodeRead,
    NodeState,
    boot_view,
    next_epoch,
    observe,
    observe_since,
)

ARMED = NodeState.ARMED
KILLED = NodeState.KILLED


def seen(*reads: NodeRead, start: HostView | None = None) -> HostView:
    """The view of a host that booted fresh (or at `start`) and then observed `reads`."""
    view = start if start is not None else boot_view()
    for read in reads:
        view = observe(view, read)
    return view


def names_epoch(message: str, epoch: int) -> bool:
    return re.search(rf"(?<!\d){epoch}(?!\d)", message) is not None


class TestObserve:
    @pytest.mark.parametrize(
        ("history", "read", "state", "epoch", "max_epoch"),
        [
            pytest.param((), NodeRead(None), NodeState.UNARMED, 0, 0, id="fresh-missing-unarmed"),
            pytest.param((), NodeRead(ARMED, 1, 1), ARMED, 1, 1, id="fresh-armed-e1"),
            pytest.param(
                (NodeRead(ARMED, 1, 1),), NodeRead(KILLED, 2, 1), KILLED, 2, 2, id="kill-after-arm"
            ),
            pytest.param(
                (NodeRead(KILLED, 2, 1),), NodeRead(ARMED, 3, 1), ARMED, 3, 3, id="rearm-after-kill"
            ),
            pytest.param(
                (NodeRead(KILLED, 4, 1),),
                NodeRead(KILLED, 4, 2),
                KILLED,
                4,
                4,
                id="re-kill-same-epoch-new-ver",
            ),
            pytest.param(
                (NodeRead(ARMED, 5, 1),), NodeRead(ARMED, 5, 1), ARMED, 5, 5, id="same-read-again"
            ),
            pytest.param((), NodeRead(ARMED, 9, 1), ARMED, 9, 9, id="fresh-jumps-to-e9"),
        ],
    )
    def test_accepted_reads(
        self,
        history: tuple[NodeRead, ...],
        read: NodeRead,
        state: NodeState,
        epoch: int,
        max_epoch: int,
    ) -> None:
        """A read at or above the highest epoch seen, with a consistent state, is enforced."""
        view = observe(seen(*history), read)
        assert view.state is state
        assert view.epoch == epoch
        assert view.max_epoch == max_epoch
        assert view.regression == ""
        assert view.gate_open is (state is ARMED)

    def test_accepted_read_records_ver_and_max_state(self) -> None:
        """An accepted read carries its ver and becomes the state remembered at its epoch."""
        view = seen(NodeRead(ARMED, 1, 1), NodeRead(KILLED, 2, 7))
        assert (view.ver, view.max_state) == (7, KILLED)

    @pytest.mark.parametrize(
        ("history", "read", "must_name"),
        [
            pytest.param(
                (NodeRead(ARMED, 7, 1),), NodeRead(ARMED, 4, 1), (7, 4), id="armed-older-epoch"
            ),
            pytest.param(
                (NodeRead(KILLED, 7, 1),), NodeRead(ARMED, 6, 3), (7, 6), id="kill-rolled-back"
            ),
            pytest.param(
                (NodeRead(ARMED, 12, 1),), NodeRead(KILLED, 11, 1), (12, 11), id="killed-older"
            ),
        ],
    )
    def test_epoch_regression_is_stale_and_named(
        self, history: tuple[NodeRead, ...], read: NodeRead, must_name: tuple[int, int]
    ) -> None:
        """A read with an epoch below the highest seen blocks, naming both epochs."""
        before = seen(*history)
        view = observe(before, read)
        assert view.state is NodeState.STALE
        assert not view.gate_open
        assert view.max_epoch == before.max_epoch
        assert view.max_state is before.max_state
        high, low = must_name
        assert names_epoch(view.regression, high), view.regression
        assert names_epoch(view.regression, low), view.regression

    def test_missing_state_after_epoch_3_is_stale(self) -> None:
        """A state key that vanished after the host saw epoch 3 is a regression, not UNARMED."""
        view = seen(NodeRead(ARMED, 3, 1), NodeRead(None))
        assert view.state is NodeState.STALE
        assert view.max_epoch == 3
        assert "missing" in view.regression
        assert names_epoch(view.regression, 3)

    def test_missing_state_after_boot_with_remembered_epoch_is_stale(self) -> None:
        """A host that remembers epoch 3 from its local file treats a missing key as regression."""
        view = observe(boot_view(3, KILLED), NodeRead(None))
        assert view.state is NodeState.STALE
        assert view.max_epoch == 3

    @pytest.mark.parametrize(
        ("recorded", "read"),
        [
            pytest.param(NodeRead(KILLED, 5, 2), NodeRead(ARMED, 5, 2), id="armed-over-killed"),
            pytest.param(NodeRead(ARMED, 5, 1), NodeRead(KILLED, 5, 1), id="killed-over-armed"),
        ],
    )
    def test_same_epoch_other_state_is_stale(self, recorded: NodeRead, read: NodeRead) -> None:
        """One epoch can never be both ARMED and KILLED: the second read is an overwrite."""
        view = seen(recorded, read)
        assert view.state is NodeState.STALE
        assert view.max_state is recorded.state
        assert names_epoch(view.regression, 5)
        assert recorded.state is not None
        assert recorded.state.value in view.regression

    @pytest.mark.parametrize("epoch", [0, -1])
    @pytest.mark.parametrize("state", [ARMED, KILLED])
    def test_invalid_epoch_with_a_state_is_stale(self, state: NodeState, epoch: int) -> None:
        """A state carried with a non-positive epoch proves nothing, even on a fresh host."""
        view = observe(boot_view(), NodeRead(state, epoch, 1))
        assert view.state is NodeState.STALE
        assert view.max_epoch == 0
        assert view.regression

    def test_stale_read_then_good_read_reopens(self) -> None:
        """A regression is not sticky: the next consistent read is enforced again."""
        view = seen(NodeRead(ARMED, 3, 1), NodeRead(ARMED, 2, 1), NodeRead(ARMED, 3, 1))
        assert view.state is ARMED
        assert view.regression == ""


class TestNodeReadFromHash:
    @pytest.mark.parametrize(
        ("h", "expected"),
        [
            pytest.param(
                {"state": "ARMED", "epoch": "3", "ver": "2", "reason": "open 09:30"},
                NodeRead(ARMED, 3, 2, "open 09:30"),
                id="armed",
            ),
            pytest.param(
                {"state": "KILLED", "epoch": "8", "ver": "1", "reason": "runaway SMARS"},
                NodeRead(KILLED, 8, 1, "runaway SMARS"),
                id="killed",
            ),
            pytest.param({}, NodeRead(None), id="no-key"),
            pytest.param({"state": ""}, NodeRead(None), id="empty-state"),
            pytest.param(
                {"state": "ARMED", "epoch": "x", "ver": ""},
                NodeRead(None, 0, 0, "unreadable epoch/ver 'x'"),
                id="bad-ints",
            ),
            *(
                pytest.param(
                    {"state": "ARMED", "epoch": junk, "ver": "1"},
                    NodeRead(None, 0, 0, f"unreadable epoch/ver {junk!r}"),
                    id=f"junk-epoch-{junk}",
                )
                for junk in ("1" + "0" * 29, "1e29", "-1", "7.5", " 7", "٣", "9007199254740992")
            ),
        ],
    )
    def test_table(self, h: dict[str, str], expected: NodeRead) -> None:
        """Hash fields map onto a NodeRead; unparsable integers read as 0."""
        assert NodeRead.from_hash(h) == expected

    @pytest.mark.parametrize("raw", ["armed", "ARMED ", "UNARMED", "STALE", "\x00", "KILLED\n"])
    def test_garbage_state_is_missing_with_reason(self, raw: str) -> None:
        """A state string that is not ARMED/KILLED reads as missing, with the reason quoted."""
        read = NodeRead.from_hash({"state": raw, "epoch": "4", "ver": "1"})
        assert read.state is None
        assert read.epoch == 4
        assert "unreadable state" in read.reason
        assert repr(raw) in read.reason

    def test_garbage_state_after_epochs_is_stale(self) -> None:
        """Garbage in the state key of a node the host has seen at epoch 2 blocks as STALE."""
        view = seen(NodeRead(ARMED, 2, 1), NodeRead.from_hash({"state": "ARMD", "epoch": "2"}))
        assert view.state is NodeState.STALE
        assert "unreadable state" in view.regression
        assert view.max_epoch == 2

    def test_garbage_state_on_fresh_host_is_stale_not_armed(self) -> None:
        """Garbage on a host that never saw an epoch is STALE: neither ARMED nor a clean UNARMED."""
        view = observe(boot_view(), NodeRead.from_hash({"state": "ARMED!", "epoch": "1"}))
        assert view.state is NodeState.STALE
        assert not view.gate_open
        assert "unreadable state" in view.regression


class TestViewBasics:
    def test_boot_view_is_closed_at_remembered_epoch(self) -> None:
        """A booting host blocks as STALE at the epoch it remembers."""
        view = boot_view(6, KILLED)
        assert (view.state, view.epoch, view.max_epoch, view.max_state) == (
            NodeState.STALE,
            6,
            6,
            KILLED,
        )
        assert not view.gate_open

    @pytest.mark.parametrize(
        ("state", "reason"),
        [
            (NodeState.KILLED, BlockReason.KILLED),
            (NodeState.UNARMED, BlockReason.UNARMED),
            (NodeState.STALE, BlockReason.STALE),
            (NodeState.ARMED, BlockReason.STALE),
        ],
    )
    def test_block_reason(self, state: NodeState, reason: BlockReason) -> None:
        """Each enforced state maps to its one-word protocol reason (ARMED only blocks if stale)."""
        assert HostView(state=state).block_reason is reason

    @pytest.mark.parametrize(
        ("current", "floor", "expected"),
        [(0, 0, 1), (7, 0, 8), (7, 9, 10), (12, 12, 13), (3, 2, 4)],
    )
    def test_next_epoch_table(self, current: int, floor: int, expected: int) -> None:
        """A new epoch is one above both the stored epoch and the highest a host reports."""
        assert next_epoch(current, floor) == expected


reads = st.builds(
    NodeRead,
    state=st.sampled_from([None, ARMED, KILLED]),
    epoch=st.integers(min_value=-2, max_value=8),
    ver=st.integers(min_value=0, max_value=3),
    reason=st.sampled_from(["", "unreadable state 'ARMD'"]),
)
boots = st.one_of(
    st.just(boot_view()),
    st.builds(
        boot_view,
        max_epoch=st.integers(min_value=1, max_value=6),
        max_state=st.sampled_from([ARMED, KILLED]),
    ),
)


class TestObserveProperties:
    @given(boots, st.lists(reads, max_size=30))
    def test_max_epoch_never_decreases(self, start: HostView, history: list[NodeRead]) -> None:
        """Whatever Redis says, the highest epoch a host has seen only moves forward."""
        view = start
        for read in history:
            new = observe(view, read)
            assert new.max_epoch >= view.max_epoch
            view = new

    @given(boots, st.lists(reads, max_size=30))
    def test_gate_opens_only_on_newest_armed(
        self, start: HostView, history: list[NodeRead]
    ) -> None:
        """The gate is open only right after an ARMED read at or above every epoch seen before."""
        view = start
        highest = start.max_epoch  # epochs the host has seen carried by a real state
        for read in history:
            view = observe(view, read)
            if view.gate_open:
                assert read.state is ARMED
                assert read.epoch >= max(highest, 1)
                assert view.epoch == read.epoch
            if read.state is ARMED and read.epoch > max(highest, 0):
                assert view.gate_open, "a strictly newer ARMED read must open the gate"
            if read.state is not None:
                highest = max(highest, read.epoch)

    @given(boots, st.lists(reads, max_size=30))
    def test_stale_exactly_when_regression(self, start: HostView, history: list[NodeRead]) -> None:
        """Every STALE view after a read explains itself, and only STALE views carry a regression."""
        view = start
        for read in history:
            view = observe(view, read)
            assert (view.state is NodeState.STALE) == bool(view.regression)

    @given(boots, st.lists(reads, max_size=20), reads)
    def test_observe_same_read_twice_is_stable(
        self, start: HostView, history: list[NodeRead], read: NodeRead
    ) -> None:
        """Reading the same hash twice in a row enforces the same state both times."""
        view = start
        for r in history:
            view = observe(view, r)
        once = observe(view, read)
        twice = observe(once, read)
        assert (twice.state, twice.max_epoch, twice.max_state) == (
            once.state,
            once.max_epoch,
            once.max_state,
        )

    @given(st.integers(min_value=0, max_value=2**63), st.integers(min_value=0, max_value=2**63))
    def test_next_epoch_above_both(self, current: int, floor: int) -> None:
        """A new epoch is strictly above the stored epoch and the reported floor."""
        assert next_epoch(current, floor) > max(current, floor)


def armed_at(epoch: int) -> HostView:
    return HostView(max_epoch=epoch, max_state=ARMED, state=ARMED, epoch=epoch, ver=1)


def noticed(view: HostView, epoch: int) -> HostView:
    """`view` once a kill notice for `epoch` was applied (what the sidecar's handler does)."""
    return replace(view, max_epoch=epoch, max_state=KILLED)


class TestObserveSince:
    """A read sent at one view, applied after a kill notice may have moved the view."""

    @pytest.mark.parametrize(
        ("notice", "read", "want"),
        [
            (None, NodeRead(ARMED, 1, 1), (ARMED, 1, 1, "")),
            (None, NodeRead(KILLED, 2, 2), (KILLED, 2, 2, "")),
            (None, NodeRead(ARMED, 0, 1), (NodeState.STALE, 1, ARMED, "went back from 1 to 0")),
            (2, NodeRead(ARMED, 1, 1), None),
            (2, NodeRead(ARMED, 2, 2), None),
            (9, NodeRead(ARMED, 1, 1), None),
            (2, NodeRead(KILLED, 2, 2), (KILLED, 2, 2, "")),
            (2, NodeRead(KILLED, 3, 3), (KILLED, 3, 3, "")),
            (2, NodeRead(ARMED, 3, 3), (ARMED, 3, 3, "")),
            (2, NodeRead(None), (NodeState.STALE, 2, KILLED, "missing")),
            (2, NodeRead(ARMED, 0, 1), (NodeState.STALE, 2, KILLED, "went back from 2 to 0")),
            (1, NodeRead(ARMED, 1, 1), None),
        ],
        ids=[
            "no-notice-same-arm", "no-notice-kill", "no-notice-epoch-0",
            "notice-then-older-arm", "notice-then-arm-at-its-epoch", "forged-notice-then-arm",
            "notice-then-its-kill", "notice-then-a-later-kill", "notice-then-a-later-arm",
            "notice-then-key-missing", "notice-then-epoch-0", "forged-notice-at-the-armed-epoch",
        ],
    )  # fmt: skip
    def test_table(
        self,
        notice: int | None,
        read: NodeRead,
        want: tuple[NodeState, int, NodeState | int, str] | None,
    ) -> None:
        """An outdated read is None; a read newer than the notice, or a regression whatever
        the notice said, is judged against the view now (never its older max)."""
        sent = armed_at(1)
        now = sent if notice is None else noticed(sent, notice)
        new = observe_since(sent, now, read)
        if want is None:
            assert new is None
            return
        assert new is not None
        state, max_epoch, third, why = want
        assert (new.state, new.max_epoch) == (state, max_epoch)
        if state is NodeState.STALE:
            assert new.max_state is third
            assert why in new.regression
        else:
            assert (new.epoch, new.ver) == (max_epoch, third)
            assert new.regression == ""

    @given(boots, reads, st.integers(min_value=0, max_value=9))
    def test_never_below_the_notice_nor_open_at_or_under_its_kill(
        self, sent: HostView, read: NodeRead, notice: int
    ) -> None:
        """Whatever the read, the view never goes below a notice applied meanwhile, and opens
        only on an ARMED read above the kill's epoch."""
        if notice < sent.max_epoch:
            return  # the gate refuses such a notice: nothing moves
        now = noticed(sent, notice)
        new = observe_since(sent, now, read)
        if new is None:
            return
        assert new.max_epoch >= notice
        if new.gate_open:
            assert read.state is ARMED and read.epoch > notice

    @given(boots, reads)
    def test_unmoved_view_is_plain_observe(self, sent: HostView, read: NodeRead) -> None:
        """Without a notice in flight the read applies exactly as `observe` would."""
        assert observe_since(sent, sent, read) == observe(sent, read)
