"""Kill notices over pub/sub: `KILLED <epoch> <ver>` closes the gate at once and is recorded
locally before the next round trip; junk is counted, never recorded. Losing a notice only
costs latency: the sync loop's round trip decides the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis

from killswitch.core.enforce.gate import Gate
from killswitch.core.node.bounds import parse_uint, plausible_epoch
from killswitch.core.node.state import NodeState
from killswitch.sidecar.fence import Fence, NoFence
from killswitch.sidecar.notify import StateNotifier
from killswitch.store.noperm import denial

Record = Callable[[int, NodeState | None], bool]  # the local record (`applying.Recorder`)


class NoticeListener:
    """Listens on the node's event channel (`listen()`) and acts on each notice (`notice()`);
    every notice sets `wake`, so the sync loop's round trip follows at once."""

    def __init__(
        self,
        redis: Redis,
        channel: str,
        gate: Gate,
        *,
        record: Record,
        fence: Fence | NoFence,
        notify: StateNotifier,
        log: Any,
        wake: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.gate = gate
        self._record = record
        self.fence = fence
        self.notify = notify
        self.log = log
        self._wake = wake
        self._stop = stop
        self.junk_inputs = 0  # notices that are not a bounded `KILLED <epoch> <ver>`
        self.held_recorded = 0  # epoch of a kill notice already recorded locally (0: none)
        self.failing = ""  # the cause of the subscription's failure ("" while subscribed)

    async def listen(self) -> None:
        """Kill notices over pub/sub wake the sync loop; losing them only costs latency."""
        channel = self.channel
        while not self._stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                while not self._stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if self.failing:  # read without a refusal: the subscription stands
                        self.log.info("NOTICES_RESTORED", channel=channel)
                        self.failing = ""
                    if msg is not None:
                        self.notice(str(msg.get("data", "")))
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._failed(e)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.5)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _failed(self, e: Exception) -> None:
        """Say once per cause that kill notices do not arrive (kills then wait for the next
        round trip: latency, not safety); an ACL refusal names the channel rule to add."""
        d = denial(e)
        why = f"{type(e).__name__}: {str(e)[:200]}"
        cause = f"acl:{d.permission}" if d is not None else type(e).__name__  # bounded
        if cause == self.failing:
            return
        self.failing = cause
        if d is not None:
            self.log.error("NOTICES_UNAVAILABLE", channel=self.channel, error=why,
                           permission=d.permission, rule=f"&{self.channel} and +subscribe")  # fmt: skip
        else:
            self.log.warning("NOTICES_UNAVAILABLE", channel=self.channel, error=why)

    def notice(self, data: str) -> None:
        """`KILLED <epoch> <ver>` closes the gate at once; the next round trip decides the rest.

        The notice's epoch is recorded locally (as KILLED) before that round trip, so the
        one-call confirmation it allows is never ahead of what this host remembers. A forged
        notice can only block this host, and an arm above its epoch clears it.
        """
        parts = data.split(" ")
        if len(parts) == 2 and parts[0] == "SCOPE" and parse_uint(parts[1]) is not None:
            return  # a scoped kill changed: the sync loop (woken) reads the scopes
        fence = parse_uint(parts[1]) if len(parts) == 2 and parts[0] == "FENCE" else None
        if fence is not None and plausible_epoch(fence, self.gate.view.max_epoch):
            # `kill --fence`: raise the kill fence now (only ever a block, like any notice)
            self.fence.follow(NodeState.KILLED, fence, True)
            return
        epoch = parse_uint(parts[1]) if len(parts) == 3 else None
        if len(parts) != 3 or parts[0] not in ("KILLED", "ARMED") or parse_uint(parts[2]) is None:
            epoch = None
        if epoch is None or not plausible_epoch(epoch, self.gate.view.max_epoch):
            # 10^29, -1, 7.5, junk words: never recorded, never arithmetic; counted and logged
            self.junk_inputs += 1
            self.log.warning("JUNK_INPUT", source="events", value=data[:80],
                             seen_epoch=self.gate.view.max_epoch)  # fmt: skip
            return
        if parts[0] == "KILLED" and self.gate.hold(epoch):
            self.fence.follow(NodeState.KILLED, epoch, False)  # --fence-on-kill: before the fsync
            view = self.gate.view
            if (epoch, NodeState.KILLED) != (view.max_epoch, view.max_state):
                # Memory and file agree: a restart behaves like this process would.
                self.gate.view = replace(view, max_epoch=epoch, max_state=NodeState.KILLED)
            if self._record(epoch, NodeState.KILLED):
                self.held_recorded = epoch
            self.notify.changed()
