"""What the sidecar does with each round trip's read: the arm proven (signatures, then the
release attested, the host not claimed by a second live process), the local record of the
highest epoch, the new state applied to the gate, and the scoped kills applied (never
backwards, never lifted without a verified signed lift). The sidecar confirms what it applied.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from killswitch.core.enforce.gate import Gate
from killswitch.core.node.duplicate import DuplicateWatch
from killswitch.core.node.scope import Scopes, enforce, held_from_json, held_json, newer
from killswitch.core.node.state import (
    BlockReason,
    HostView,
    NodeRead,
    NodeState,
    observe_since,
    unproven,
)
from killswitch.sidecar.armcheck import ArmCheck
from killswitch.sidecar.attest import AttestLoop
from killswitch.sidecar.fence import Fence, NoFence
from killswitch.sidecar.memory import Memory
from killswitch.sidecar.notify import StateNotifier
from killswitch.sidecar.settings import SidecarSettings
from killswitch.store.store import FlushReply


class Recorder:
    """Writes the highest epoch seen locally; a failed write closes the gate (see Memory)."""

    def __init__(self, memory: Memory, gate: Gate) -> None:
        self.memory = memory
        self.gate = gate
        self.failures = 0  # writes that failed (each closed the gate)

    def __call__(self, epoch: int, state: NodeState | None) -> bool:
        if self.memory.record(epoch, state):
            return True
        self.gate.close()
        self.failures += 1
        return False


class ReadApplier:
    """Applies each round trip's read to the gate: `judged()` says what it proves, `single()`
    blocks a duplicate host, `apply_scopes()` and `apply()` enforce it. It starts with the
    scoped kills the state file kept."""

    def __init__(
        self,
        settings: SidecarSettings,
        gate: Gate,
        *,
        memory: Memory,
        record: Recorder,
        arms: ArmCheck,
        attest: AttestLoop,
        fence: Fence | NoFence,
        notify: StateNotifier,
        log: Any,
        wake: asyncio.Event,
        boot: str,
        local_problem: str,
    ) -> None:
        self.s = settings
        self.gate = gate
        self.memory = memory
        self._record = record
        self.arms = arms
        self.attest = attest
        self.fence = fence
        self.notify = notify
        self.log = log
        self._wake = wake
        self.boot = boot
        self.local_problem = local_problem  # the state file was unreadable ("" it was read)
        self._problem_epoch: int | None = None  # first epoch read while the file was unreadable
        self._attest_refusal = ""
        self.duplicate: DuplicateWatch | None = None  # made at the first round trip
        self.dup = ""  # why this host blocks as a duplicate ("" it does not)
        self.regressions = 0
        self._scope_regressed = False
        # the scoped kills enforced, and what this host knows of them (kept in the state file)
        self._restore_scopes()

    def judged(self, sent: HostView, read: NodeRead) -> HostView | None:
        """What a round trip's read (sent at view `sent`) proves, or None if it is outdated.

        Judged against the gate's view now: a kill notice may have moved it while the trip
        was in flight, and a read taken before that kill is not applied (`observe_since`).
        """
        held = self.gate.view.max_epoch  # what this host holds now, a notice's epoch included
        new = observe_since(sent, self.gate.view, read)
        return None if new is None else self._attested(self.arms.prove(new, held))

    def _attested(self, new: HostView) -> HostView:
        """A host that cannot prove its release blocks (`unarmed`, refusal `unattested`)."""
        problem = self.attest.current.problem
        if problem and new.state is NodeState.ARMED and self._attest_refusal != problem:
            self.log.error("ARM_NOT_PROVEN", epoch=new.epoch, reason="unattested", detail=problem)
        self._attest_refusal = problem
        return unproven(new, "unattested") if problem else new

    def single(self, new: HostView, reply: FlushReply) -> HostView:
        """Another live process writing as this host: both block (`duplicate`), named."""
        if self.duplicate is None:  # one sighting blocks for three liveness bounds
            self.duplicate = DuplicateWatch(self.boot, 3 * int(self.s.stale_after * 1000))
        problem = self.duplicate.observe(reply.prev_boot, reply.prev_pid, reply.now_ms)
        if problem != self.dup:
            level = "error" if problem else "info"
            getattr(self.log, level)("DUPLICATE_HOST", reason=problem or "no longer seen")
        self.dup = problem
        if not problem or new.state not in (NodeState.ARMED, NodeState.UNARMED):
            return new  # killed or stale: blocking already, with the reason that says why
        # before any other refusal: a second process is the first thing to fix
        return replace(new, state=NodeState.UNARMED, refusal=BlockReason.DUPLICATE.value)

    def apply(self, new: HostView | None, sent: float, fence: bool = False) -> None:
        """Enforce `new` (the lease from `sent`); `fence`: the read's kill asks for the
        network kill fence, which follows what the gate now enforces. None (an outdated
        read): nothing changes, a kill notice's hold stands until the next round trip."""
        if new is None:
            return
        old = self.gate.view
        if self.local_problem:
            # Without the file this host cannot tell an old ARMED from a new one, so it started
            # a new boot (`memory.new_boot`): no proof signed before names it. An ARMED that
            # `judged` let through was signed for this boot by two operators who saw this host
            # report the problem: a node arm after it started (above the first epoch it read)
            # or an admission of this boot (`arm --host`). Trust that one.
            if self._problem_epoch is None:
                self._problem_epoch = new.epoch
            if new.state is NodeState.ARMED and (
                new.epoch > self._problem_epoch or self.memory.new_boot
            ):
                self.log.warning(
                    "LOCAL_STATE_REPLACED", epoch=new.epoch, reason=self.local_problem,
                    first_epoch_read=self._problem_epoch,
                )  # fmt: skip
                self.local_problem = ""
        if self.arms.accepted != self.memory.memo.accepted:  # kept before the gate opens on it
            self.memory.memo = replace(self.memory.memo, accepted=self.arms.accepted)
        if (
            (new.max_epoch, new.max_state) != (old.max_epoch, old.max_state)
            or self.memory.problem
            or self.memory.unwritten
        ):
            self._record(new.max_epoch, new.max_state)
        if self.local_problem or self.memory.problem:
            new = HostView(
                max_epoch=new.max_epoch,
                max_state=new.max_state,
                state=NodeState.STALE,
                epoch=new.epoch,
                regression=self.local_problem or self.memory.problem,
                refusal=new.refusal,  # still reported: `unproven` is what `arm --host` admits
            )
        if new.regression and new.regression != old.regression:
            self.regressions += 1
            self.log.error("EPOCH_REGRESSION", epoch=new.max_epoch, reason=new.regression)
        self.gate.apply(new, sent + self.s.stale_after)
        self.notify.changed()
        if (new.state, new.epoch, new.ver) != (old.state, old.epoch, old.ver):
            self.log.info(
                "NODE_STATE", state=new.state.value, epoch=new.epoch, ver=new.ver,
                reason=new.regression or None,
            )  # fmt: skip
            if new.state in (NodeState.ARMED, NodeState.KILLED):
                self._wake.set()  # confirm on the very next round trip, not a flush later
        self.fence.follow(self.gate.view.state, self.gate.view.epoch, fence)

    def _restore_scopes(self) -> None:
        """The scoped kills the state file kept, enforced from the first answer (a restart
        forgets none); the first report then carries no scope version (see `notify`), so the
        first round trip returns the lift proofs too."""
        self.scope_held = held_from_json(self.memory.memo.scopes)
        self.scopes_read = False
        isolated, symbols = self.scope_held.scopes.for_host(self.s.host)
        if isolated or symbols:
            self.gate.set_scope(isolated, symbols, self.scope_held.scopes.ver)

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        """What the host reports about the scoped kills it enforces."""
        return (
            # none before the first reply: the round trip then returns the lift proofs too (a
            # restart kept its scopes in the state file, but not the proofs it needs)
            ("scope_ver", str(self.gate.scope_ver) if self.scopes_read else ""),
            # scopes still enforced although Redis no longer lists them (no verified lift)
            ("scope_kept", " ".join(sorted(self.scope_held.kept))),
        )

    @property
    def _enforced(self) -> set[str]:
        return {s.field for s in self.scope_held.scopes.active}

    @property
    def scopes(self) -> Scopes:
        """The scoped kills this host enforces (a read's, plus those kept without a lift)."""
        return self.scope_held.scopes

    def apply_scopes(self, read: Scopes) -> None:
        """Enforce the scoped kills read; a version below one applied is never a lift, and a
        scope gone from the read stays enforced unless the read proves its signed lift."""
        self.scopes_read = True  # a read's scopes from now on, not only the file's
        if read.ver == self.scopes.ver and {s.field for s in read.active} <= self._enforced:
            # Same version, nothing new to close. (Redis that lost the hash can reach this
            # version again with other scopes: those are applied, closing needs no proof.)
            return
        if newer(self.scopes, read) is self.scopes:
            if not self._scope_regressed:
                self.log.error("SCOPE_REGRESSION", seen=self.scopes.ver, read=read.ver)
            self._scope_regressed = True
            return
        self._scope_regressed = False
        held = enforce(self.scope_held, read, self.arms.lift)
        for scope, why in sorted(held.kept.items()):
            if self.scope_held.kept.get(scope) != why:
                self.log.error(
                    "SCOPE_KEPT_UNSIGNED_LIFT", scope=scope, reason=why, scope_ver=read.ver
                )
        isolated, symbols = held.scopes.for_host(self.s.host)
        # kept before the gate acts on it: a restart must not forget a scoped kill (a failed
        # write is `memory.problem`, which blocks the host until a write succeeds)
        self.memory.memo = replace(self.memory.memo, scopes=held_json(held))
        self._record(*self.memory.recorded)
        isolated = self.fence.holding(isolated) or isolated  # a bypass not recorded yet
        self.gate.set_scope(isolated, symbols, read.ver)
        self.log.info("SCOPE", scope_ver=read.ver, host_killed=isolated, symbols=sorted(symbols))
        self.scope_held = held
        self.notify.changed()
        self._wake.set()  # report the applied version on the very next round trip
