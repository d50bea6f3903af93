"""Flatten-on-kill proof: which subscribed trading processes still owe a `FLAT <epoch>`.

Pure: subscribers are opaque hashable handles (the sidecar passes its connections). A host
is flat for a kill epoch once every process subscribed when that kill reached it (or that
subscribed later, during it) answered `FLAT` for that epoch. A host with no subscriber is
never flat: nobody proved anything. A subscriber that disconnects without answering keeps
the host not flat; that is the case an operator must look at.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class FlatTracker:
    """`killed(epoch, subs)` when a kill is enforced; `flat(sub, epoch)` on each FLAT."""

    __slots__ = ("_owed", "epoch", "flat_epoch")

    def __init__(self) -> None:
        self.epoch = 0  # the kill epoch being flattened (0: none)
        self.flat_epoch = 0  # the highest kill epoch proven flat
        self._owed: set[Hashable] = set()

    def killed(self, epoch: int, subscribers: Iterable[Hashable]) -> None:
        """The host now enforces a kill at `epoch`; every current subscriber owes a FLAT."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._owed = set(subscribers)

    def armed(self) -> None:
        """The kill is over: nothing is owed any more (an old FLAT changes nothing)."""
        self.epoch = 0
        self._owed = set()

    def subscribed(self, sub: Hashable) -> None:
        """A process subscribing during a kill is told at once and owes a FLAT too."""
        if self.epoch and self.flat_epoch != self.epoch:
            self._owed.add(sub)

    def flat(self, sub: Hashable, epoch: int) -> str:
        """Record `FLAT epoch` from `sub`; "" when accepted, else why not (for the reply)."""
        if not self.epoch:
            return "no kill to flatten"
        if epoch != self.epoch:
            return f"epoch {epoch} is not the kill being flattened ({self.epoch})"
        self._owed.discard(sub)
        if not self._owed:
            self.flat_epoch = self.epoch
        return ""

    @property
    def owed(self) -> int:
        """How many subscribers still owe a FLAT for the current kill."""
        return len(self._owed) if self.epoch and self.flat_epoch != self.epoch else 0
