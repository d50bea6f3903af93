"""Node states and the epoch rules a host applies to what it reads from Redis.

Pure: no Redis, no clock, no logging. The one rule this module exists to enforce is that a
host never goes back to an older epoch: a node state that is missing or older than the
highest epoch the host has seen is a regression, and a regression blocks orders.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from killswitch.core.node.bounds import INT_MAX, parse_uint, plausible_epoch

# Lua numbers are doubles: above 2**53 an epoch read, raised and written back by a script is no
# longer exact, so nothing may claim an epoch beyond it (a notice that does is absurd).
MAX_EPOCH = INT_MAX


class NodeState(enum.StrEnum):
    UNARMED = "UNARMED"  # never armed: orders blocked
    ARMED = "ARMED"  # orders allowed
    KILLED = "KILLED"  # orders blocked
    STALE = "STALE"  # this host cannot prove the node's state: orders blocked


class BlockReason(enum.StrEnum):
    """The one-word reasons of the gate protocol's BLOCK reply."""

    KILLED = "killed"
    UNARMED = "unarmed"  # never armed, or armed without a valid two-operator proof
    STALE = "stale"
    UNLISTED = "unlisted"  # the node is armed, but its signed roster does not list this host
    UNPROVEN = "unproven"  # armed, but no proof names this host's current boot (`arm --host`)
    DUPLICATE = "duplicate"  # another live process claims this host's name (core.node.duplicate)


# Arm refusals (core.proof.armproof) a host blocks with as `unproven`: no fresh proof for its boot.
UNPROVEN_REFUSALS = frozenset({"unproven", "expired", "wrong_lift"})


@dataclass(frozen=True, slots=True)
class NodeRead:
    """One authoritative read of the node state hash (None state: the key does not exist)."""

    state: NodeState | None
    epoch: int = 0
    ver: int = 0
    reason: str = ""

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> NodeRead:
        raw = h.get("state")
        if not raw:
            return cls(None)
        try:
            state = NodeState(raw)
        except ValueError:
            state = None  # garbage in the state key is no proof of anything
        epoch, ver = parse_uint(h.get("epoch")), parse_uint(h.get("ver") or "0")
        if state not in (NodeState.ARMED, NodeState.KILLED):
            return cls(None, epoch or 0, ver or 0, f"unreadable state {raw[:40]!r}")
        if epoch is None or ver is None:
            # 10^29, 1e3, -1, 7.5: junk written into Redis proves nothing and blocks
            bad = h.get("epoch") if epoch is None else h.get("ver")
            return cls(None, 0, 0, f"unreadable epoch/ver {str(bad)[:40]!r}")
        return cls(state, epoch, ver, h.get("reason", ""))


@dataclass(frozen=True, slots=True)
class HostView:
    """What one host believes about its node.

    `max_epoch` and `max_state` are the highest epoch seen and the state seen at it; they
    survive restarts (local state file) and only ever move forward. `state` is what the gate
    enforces now; `regression` says why the host refuses the current read, if it does;
    `refusal` why it does not accept an ARMED read as proven (enforced as UNARMED).
    """

    max_epoch: int = 0
    max_state: NodeState | None = None
    state: NodeState = NodeState.STALE
    epoch: int = 0
    ver: int = 0
    regression: str = ""
    refusal: str = ""

    @property
    def gate_open(self) -> bool:
        return self.state is NodeState.ARMED

    @property
    def block_reason(self) -> BlockReason:
        if self.state is NodeState.KILLED:
            return BlockReason.KILLED
        if self.state is NodeState.UNARMED:
            if self.refusal == BlockReason.DUPLICATE.value:
                return BlockReason.DUPLICATE
            if self.refusal in UNPROVEN_REFUSALS:
                return BlockReason.UNPROVEN
            return BlockReason.UNLISTED if self.refusal == "unlisted" else BlockReason.UNARMED
        return BlockReason.STALE


def boot_view(max_epoch: int = 0, max_state: NodeState | None = None) -> HostView:
    """A host starting up: closed (STALE) until its first authoritative read."""
    return HostView(max_epoch=max_epoch, max_state=max_state, epoch=max_epoch)


def observe(view: HostView, read: NodeRead) -> HostView:
    """Apply one authoritative read to a host's view; never moves `max_epoch` backwards."""
    if read.state is None:
        if view.max_epoch == 0 and not read.reason:
            return replace(view, state=NodeState.UNARMED, epoch=0, ver=0, regression="", refusal="")
        why = read.reason or "node state missing from Redis"
        return replace(
            view,
            state=NodeState.STALE,
            regression=f"{why}; this host has seen epoch {view.max_epoch}",
            refusal="",
        )
    if read.epoch < view.max_epoch:
        return replace(
            view,
            state=NodeState.STALE,
            regression=f"epoch went back from {view.max_epoch} to {read.epoch}",
            refusal="",
        )
    if read.epoch <= 0:
        return replace(
            view, state=NodeState.STALE, regression=f"invalid epoch {read.epoch}", refusal=""
        )
    if not plausible_epoch(read.epoch, view.max_epoch):
        # Every arm and kill moves the epoch by one: a leap this far is written by hand, and
        # accepting it would ratchet this host's memory up beyond any honest arm.
        return replace(
            view,
            state=NodeState.STALE,
            regression=f"implausible epoch {read.epoch} (this host has seen {view.max_epoch})",
            refusal="",
        )
    if (
        read.epoch == view.max_epoch
        and view.max_state is not None
        and read.state is not view.max_state
    ):
        # Every arm and every kill of an armed node takes a new epoch, so one epoch can
        # never be both ARMED and KILLED: this is an overwrite with older data.
        return replace(
            view,
            state=NodeState.STALE,
            regression=(
                f"epoch {read.epoch} was {view.max_state.value} here, Redis now says "
                f"{read.state.value}"
            ),
            refusal="",
        )
    return HostView(
        max_epoch=read.epoch,
        max_state=read.state,
        state=read.state,
        epoch=read.epoch,
        ver=read.ver,
        regression="",
    )


def observe_since(sent: HostView, now: HostView, read: NodeRead) -> HostView | None:
    """Apply a read whose round trip was sent at view `sent` to the view `now`.

    A kill notice may move the view while the round trip is in flight. The read is judged
    against `now`, so it can never lower the epoch the notice raised, nor reopen below it.
    A read that is a regression against `now` but was none against `sent` was taken before
    that notice: it is outdated, not Redis going back. None says so: apply nothing, the
    notice's hold stands until the next round trip (closing needs no proof, opening needs
    a read newer than the kill).
    """
    new = observe(now, read)
    if now == sent or not new.regression or observe(sent, read).regression:
        return new
    return None


def unproven(view: HostView, refusal: str) -> HostView:
    """An ARMED view whose arm this host cannot prove: enforced as UNARMED (or `unlisted`).

    The epoch is still remembered (an unproven state can only ever block), so a later signed
    arm must go above it like above any other epoch this host has seen.
    """
    if view.state is not NodeState.ARMED or not refusal:
        return view
    return replace(view, state=NodeState.UNARMED, refusal=refusal)


def next_epoch(current: int, floor: int) -> int:
    """The epoch a new arm or kill takes: above the stored epoch and above any a host reports."""
    return max(current, floor) + 1
