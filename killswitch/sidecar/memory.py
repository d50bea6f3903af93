"""The write side of the sidecar's local epoch memory: write only on change, and turn a write
that fails into a reported problem, retried on every round trip until it succeeds.

It never decides what the gate does about it: the service blocks while `problem` is set.
"""

from __future__ import annotations

from typing import Any

from killswitch.core.node.state import NodeState
from killswitch.sidecar.settings import SidecarSettings
from killswitch.store.localstate import LocalState, Memo, new_boot_id


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
        self.new_boot = ""  # why this start is a new boot ("" when it kept its memory)

    def announce(self, epoch: int) -> None:
        """Log, once started, that this start is a new boot (if it is)."""
        if self.new_boot:
            self.log.warning(
                "NEW_BOOT", boot=self.memo.boot, epoch=epoch,
                reason=f"{self.new_boot}: no arm signed before opens this host; it blocks "
                "(unproven) until an arm or `arm --host` signed for this boot",
            )  # fmt: skip

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


def open_memory(
    settings: SidecarSettings, log: Any
) -> tuple[Memory, tuple[int, NodeState | None], str]:
    """The host's memory from its state file: (memory, the highest (epoch, state) seen, why
    the file was unreadable or "").

    A host with no memory of its boot (no readable file, or none at all) starts a new one,
    written at once (a crash must not change it): no proof signed before can name it, so it
    opens only after an arm or an admission (`arm --host`) signed for this boot.
    """
    local = (
        LocalState(settings.state_dir, settings.node, settings.host)
        if settings.state_dir and not settings.memoryless
        else None
    )
    max_epoch, max_state, memo, problem = local.load_all() if local else (0, None, None, "")
    memory = Memory(local, (max_epoch, max_state), log, memo)
    if memo is None:
        memory.remember(Memo(new_boot_id()))
        memory.new_boot = "no state file" if local is None else problem or "no boot id kept"
    return memory, (max_epoch, max_state), problem
