"""Two live processes claiming one host name: both block (`duplicate`) and say who the other is.

Pure: the sidecar feeds it what each round trip returned about the host's report before the
call (the boot token and pid that wrote it) and server time. A process's first round trip
may find the previous boot's report (a restart): that is no evidence. After that, any report
written by another boot between two of our own calls means another process writes as this
host now; it keeps the host blocked `hold_ms` past the last such sighting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class DuplicateWatch:
    """What one sidecar process has seen of others writing its host's report."""

    own: str  # this process's boot token
    hold_ms: int  # how long one sighting keeps the host blocked
    flushed: bool = False  # this process has written the report at least once
    until_ms: int = 0  # server time until which the host blocks as a duplicate
    other: str = ""  # the other process as last seen ("pid P, boot B")

    def observe(self, prev_boot: str, prev_pid: str, now_ms: int) -> str:
        """Take one round trip's sighting; returns why the host blocks ("" it does not)."""
        if self.flushed and prev_boot and prev_boot != self.own:
            self.until_ms = now_ms + self.hold_ms
            self.other = f"pid {prev_pid[:12] or '?'}, boot {prev_boot[:12]}"
        self.flushed = True
        return self.problem(now_ms)

    def problem(self, now_ms: int) -> str:
        if now_ms >= self.until_ms:
            return ""
        return f"duplicate: another live process ({self.other}) reports as this host"
