"""The write side of the sidecar's local epoch memory: write only on change, and turn a write
that fails into a reported problem, retried on every round trip until it succeeds.

It never decides what the gate does about it: the service blocks while `problem` is set.
"""

from __future__ import annotations

from typing import Any

from killswitch.core.state import NodeState
from killswitch.store.localstate import LocalState, Memo


class Memory:
    """Records the highest (epoch, state) seen and the memo (boot id, accepted proof, scoped
    kills); `problem` says why the last write failed."""

    def __init__(
        self,
        local: LocalState | None,
        recorded: tuple[int, NodeState | None],
        log: Any,
        memo: Memo | None = None,
    ) -> None:
        self.local = local
        self.recorded = recorded
        self.problem = ""
        self.log = log
        self.memo = memo or Memo()
        self._memo_written = self.memo

    @property
    def unwritten(self) -> bool:
        """The memo changed since it was last written."""
        return self.memo != self._memo_written

    def remember(self, memo: Memo) -> bool:
        """Write `memo` if it changed (or the last write failed); False if it failed."""
        self.memo = memo
        return self.record(*self.recorded)

    def record(self, epoch: int, state: NodeState | None) -> bool:
        """Write (epoch, state) if it changed or the last write failed; False if it failed.

        A host that cannot remember a kill across a restart must not trade, so a failure
        (disk full, read-only, a directory in its place) is logged once per reason and kept
        in `problem` until a later write succeeds.
        """
        same = (epoch, state) == self.recorded and self.memo == self._memo_written
        if self.local is None or (same and not self.problem):
            self.recorded, self._memo_written = (epoch, state), self.memo
            return True
        try:
            self.local.save(epoch, state, self.memo)
        except OSError as e:
            reason = f"local state file {self.local.path} unwritable: {e.strerror or e}"
            if reason != self.problem:
                self.log.error("LOCAL_STATE_UNWRITABLE", reason=reason, epoch=epoch)
            self.problem = reason
            return False
        if self.problem:
            self.log.info("LOCAL_STATE_WRITABLE", reason=self.problem, epoch=epoch)
            self.problem = ""
        self.recorded = (epoch, state)
        self._memo_written = self.memo
        return True
