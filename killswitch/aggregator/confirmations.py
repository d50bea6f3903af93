"""Follows one kill's confirmations until the whole roster confirmed it, and alarms loudly
(naming the missing hosts) when it takes longer than the confirm timeout.

It decides from what the aggregator already read; it never talks to Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from killswitch.core.node.roster import Quorum
from killswitch.core.node.state import NodeRead
from killswitch.core.settings.options import to_ms

ALARM_EVERY_MS = 5000


@dataclass
class KillWatch:
    """Confirmation tracking of one kill (epoch, ver) until the roster confirmed it."""

    epoch: int
    ver: int
    killed_ms: int
    done: bool = False
    last_alarm_ms: int = 0
    flat_done: bool = False
    last_flat_alarm_ms: int = 0


class ConfirmationWatch:
    """Feed it every tick's read of a KILLED node; it logs KILL_CONFIRMED or KILL_UNCONFIRMED."""

    def __init__(
        self,
        confirm_timeout: float,
        log: Any,
        *,
        operator_kill: Callable[[], None],
        confirmed: Callable[[float], None],
    ) -> None:
        self.timeout_ms = to_ms(confirm_timeout)
        self.log = log
        self._operator_kill = operator_kill
        self._confirmed = confirmed
        self.watch: KillWatch | None = None
        self.not_flat: list[str] = []  # blocked, subscribed, not flat after the bound

    def observe(self, read: NodeRead, state: Mapping[str, str], q: Quorum, now: int) -> None:
        w = self.watch
        if w is None or (w.epoch, w.ver) != (read.epoch, read.ver):
            killed_ms = int(state.get("killed_ms") or now)
            w = self.watch = KillWatch(read.epoch, read.ver, killed_ms)
            if state.get("cause") == "operator":
                self._operator_kill()
        self._flat(w, q, now)
        if w.done:
            return
        if q.complete:
            w.done = True
            elapsed = max(q.last_confirm_ms - w.killed_ms, 0) / 1000.0
            self._confirmed(elapsed)
            self.log.info(
                "KILL_CONFIRMED", epoch=w.epoch, hosts=len(q.confirmed), elapsed_s=elapsed
            )
        elif now - w.killed_ms > self.timeout_ms and now - w.last_alarm_ms > ALARM_EVERY_MS:
            w.last_alarm_ms = now
            self.log.error(
                "KILL_UNCONFIRMED", epoch=w.epoch, missing=list(q.missing),
                confirmed=len(q.confirmed), roster=len(q.roster),
            )  # fmt: skip

    def _flat(self, w: KillWatch, q: Quorum, now: int) -> None:
        """Hosts that block but whose subscribed trading processes have not proven flat.

        A host with no subscriber has nobody to prove anything and is not named here (its
        report shows `subscribers` 0); the bound is the same confirm timeout.
        """
        if w.flat_done:
            self.not_flat = []
            return
        owing = [
            h for h in q.confirmed
            if q.hosts[h].subscribers > 0 and q.hosts[h].flat_epoch != w.epoch
        ]  # fmt: skip
        if not owing:
            w.flat_done = q.complete
            self.not_flat = []
            return
        late = now - w.killed_ms > self.timeout_ms
        self.not_flat = owing if late else []
        if late and now - w.last_flat_alarm_ms > ALARM_EVERY_MS:
            w.last_flat_alarm_ms = now
            self.log.error("KILL_NOT_FLAT", epoch=w.epoch, hosts=owing)
