"""The in-process `Gate` on a fake clock: its state machine, counts and thread safety of a kill."""

from __future__ import annotations

import sys
import threading

import pytest
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.node.state import HostView, NodeState, boot_view

T0 = 500.0


def armed(epoch: int = 3) -> HostView:
    return HostView(max_epoch=epoch, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=epoch)


def killed(epoch: int = 4) -> HostView:
    return HostView(
        max_epoch=epoch, max_state=NodeState.KILLED, state=NodeState.KILLED, epoch=epoch
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log() -> CapturingLogger:
    return CapturingLogger()


@pytest.fixture
def gate(clock: Clock, log: CapturingLogger) -> Gate:
    return Gate("smars", "or-01", clock=clock, log=log)


class TestGateStateMachine:
    @pytest.mark.parametrize(("max_epoch", "max_state"), [(0, None), (6, NodeState.KILLED)])
    def test_closed_at_boot(
        self, clock: Clock, log: CapturingLogger, max_epoch: int, max_state: NodeState | None
    ) -> None:
        """A booting gate blocks as stale at the epoch it remembers, before any read."""
        g = Gate("smars", "or-01", view=boot_view(max_epoch, max_state), clock=clock, log=log)
        assert not g.is_open
        assert g.status() == (NodeState.STALE, max_epoch)
        assert g.check("o-1") == (False, max_epoch, "stale")
        assert g.lease_left() == 0.0

    def test_armed_allows_until_deadline(self, gate: Gate, clock: Clock) -> None:
        """An ARMED view allows orders until the lease deadline, then blocks them as stale."""
        gate.apply(armed(3), lease_deadline=T0 + 1.0)
        assert gate.check("o-1") == (True, 3, "")
        assert gate.status() == (NodeState.ARMED, 3)
        assert gate.lease_left() == pytest.approx(1.0)
        clock.now = T0 + 0.999
        assert gate.check("o-2") == (True, 3, "")
        clock.now = T0 + 1.0
        assert not gate.is_open
        assert gate.check("o-3") == (False, 3, "stale")
        assert gate.status() == (NodeState.STALE, 3)
        assert gate.lease_left() == 0.0

    def test_renewed_lease_reopens(self, gate: Gate, clock: Clock) -> None:
        """A fresh ARMED read after an expired lease allows orders again at the new epoch."""
        gate.apply(armed(3), lease_deadline=T0 + 1.0)
        clock.now = T0 + 2.0
        assert gate.check()[0] is False
        gate.apply(armed(5), lease_deadline=T0 + 3.0)
        assert gate.check() == (True, 5, "")

    def test_killed_refuses_even_with_future_deadline(self, gate: Gate) -> None:
        """A KILLED view blocks at once, whatever lease deadline comes with it."""
        gate.apply(armed(3), lease_deadline=T0 + 60)
        gate.apply(killed(4), lease_deadline=T0 + 3600)
        assert not gate.is_open
        assert gate.check("o-1") == (False, 4, "killed")
        assert gate.status() == (NodeState.KILLED, 4)
        assert gate.lease_left() == 0.0

    @pytest.mark.parametrize(
        ("view", "state", "reason"),
        [
            (HostView(state=NodeState.UNARMED), NodeState.UNARMED, "unarmed"),
            (killed(9), NodeState.KILLED, "killed"),
            (
                HostView(max_epoch=9, max_state=NodeState.KILLED, epoch=9, regression="went back"),
                NodeState.STALE,
                "stale",
            ),
        ],
    )
    def test_closed_views(self, gate: Gate, view: HostView, state: NodeState, reason: str) -> None:
        """Each closed view blocks with its own reason and reports its own state."""
        gate.apply(armed(3), lease_deadline=T0 + 60)
        gate.apply(view, lease_deadline=T0 + 60)
        assert gate.check("o-1") == (False, view.epoch, reason)
        assert gate.status() == (state, view.epoch)

    def test_close(self, gate: Gate) -> None:
        """close() blocks at once, as stale (no read proves the node armed any more)."""
        gate.apply(armed(3), lease_deadline=T0 + 60)
        gate.close()
        assert not gate.is_open
        assert gate.check("o-1") == (False, 3, "stale")
        gate.close()  # closing twice is harmless
        gate.apply(armed(3), lease_deadline=T0 + 60)
        assert gate.check("o-2") == (True, 3, "")

    def test_status_counts_nothing(self, gate: Gate) -> None:
        """status(), is_open and lease_left() are reads: no count moves."""
        gate.apply(armed(3), lease_deadline=T0 + 1)
        for _ in range(3):
            gate.status()
            _ = gate.is_open
            gate.lease_left()
        assert (gate.allowed, gate.blocked) == (0, 0)


class TestGateCounts:
    def test_counts_and_block_log(self, gate: Gate, clock: Clock, log: CapturingLogger) -> None:
        """Each decision moves exactly one count; each refusal is one BLOCK_ORDER event."""
        gate.apply(armed(3), lease_deadline=T0 + 1)
        for i in range(4):
            gate.check(f"a{i}")
        clock.now = T0 + 5
        gate.check("s1", "AAPL", "BUY", 100)
        gate.apply(killed(4), lease_deadline=T0 + 10)
        gate.check("k1", "MSFT", "SELL", 7)
        assert (gate.allowed, gate.blocked) == (4, 2)
        events = [c for c in log.calls if c.args == ("BLOCK_ORDER",)]
        assert [c.method_name for c in events] == ["warning", "warning"]
        assert [c.kwargs for c in events] == [
            {
                "node": "smars",
                "host": "or-01",
                "epoch": 3,
                "reason": "stale",
                "order_id": "s1",
                "symbol": "AAPL",
                "side": "BUY",
                "qty": 100,
            },
            {
                "node": "smars",
                "host": "or-01",
                "epoch": 4,
                "reason": "killed",
                "order_id": "k1",
                "symbol": "MSFT",
                "side": "SELL",
                "qty": 7,
            },
        ]

    @pytest.mark.parametrize(
        ("setup", "expected"),
        [
            pytest.param("open", True, id="open"),
            pytest.param("expired", False, id="expired"),
            pytest.param("killed", False, id="killed"),
            pytest.param("boot", False, id="boot"),
        ],
    )
    def test_allow_matches_check(
        self, clock: Clock, log: CapturingLogger, setup: str, expected: bool
    ) -> None:
        """allow() returns the same decision as check() and counts and logs the same way."""
        gates = [Gate("smars", "or-01", clock=clock, log=log) for _ in range(2)]
        for g in gates:
            if setup in ("open", "expired"):
                g.apply(armed(3), lease_deadline=T0 + 1)
            if setup == "killed":
                g.apply(killed(4), lease_deadline=T0 + 1)
        if setup == "expired":
            clock.now = T0 + 1
        by_allow, by_check = gates
        result = by_allow.allow("o-1")
        assert isinstance(result, bool)
        assert result is expected
        assert by_check.check("o-1")[0] is expected
        assert (by_allow.allowed, by_allow.blocked) == (by_check.allowed, by_check.blocked)
        assert by_allow.allowed + by_allow.blocked == 1
        blocks = [c for c in log.calls if c.args == ("BLOCK_ORDER",)]
        assert len(blocks) == (0 if expected else 2)


class TestGateThreads:
    def test_kill_from_another_thread_is_final(self, clock: Clock, log: CapturingLogger) -> None:
        """Once apply(KILLED) has returned, no allow() started after it returns True."""
        gate = Gate("smars", "or-01", clock=clock, log=log)
        gate.apply(armed(3), lease_deadline=T0 + 3600)
        killed_done = threading.Event()
        hammering = threading.Event()
        enough_after = threading.Event()
        stop = threading.Event()
        late_allows: list[int] = []
        calls = [0, 0]  # before the kill returned, after it

        def hammer() -> None:
            i = 0
            while not stop.is_set():
                after = killed_done.is_set()  # read before the call: the call starts after
                ok = gate.allow(f"o{i}")
                calls[after] += 1
                if after and ok:
                    late_allows.append(i)
                if i == 200:
                    hammering.set()
                if calls[1] >= 2000:
                    enough_after.set()
                i += 1

        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads as often as possible
        thread = threading.Thread(target=hammer)
        try:
            thread.start()
            assert hammering.wait(5)
            gate.apply(killed(4), lease_deadline=T0 + 3600)
            killed_done.set()
            assert enough_after.wait(5)
        finally:
            stop.set()
            thread.join(5)
            sys.setswitchinterval(old_interval)
        assert not thread.is_alive()
        assert late_allows == []
        assert calls[0] > 200
        assert calls[1] >= 2000
        assert gate.allowed + gate.blocked == calls[0] + calls[1]
        assert gate.blocked >= calls[1]
        assert gate.check("last") == (False, 4, "killed")
