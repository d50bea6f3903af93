"""What the aggregator honours of a node's rollout: only a record two operators signed.

It reads the record every tick (one HGETALL), verifies its signatures only when it changed,
judges the version vector with it (`core.proof.rollout.check`), and marks a promoted rollout
complete once every roster host runs its release. It remembers the highest rollout it has
seen finished (learned at start from the audit trail: its own local copy and the copies it
rotated aside, which a Redis writer cannot reach, and Redis's), so an old record written back into Redis (a replay of an
aborted canary) exempts nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from killswitch.aggregator import auditlog
from killswitch.core.node.release import Split
from killswitch.core.proof import rollout as ro
from killswitch.core.proof.sshsig import Operators
from killswitch.store.rollout import RolloutStore


class RolloutWatch:
    """The node's verified rollout and approved release, as of the last `refresh`."""

    def __init__(
        self,
        store: RolloutStore,
        node: str,
        operators: Operators | None,
        log: Any,
        audit_copy: str = "",
    ) -> None:
        self.audit_copy = audit_copy
        self._history_read = False
        self.store = store
        self.node = node
        self.operators = operators
        self.log = log
        self.record: dict[str, str] = {}
        self.active: ro.Rollout | None = None
        self.refusal = ""  # why an active-looking record is not honoured ("" honoured/none)
        self.refused_seq = ""  # the number that record claims
        self.finished_seq = 0  # the highest rollout seen aborted or complete
        self._seen: tuple[tuple[str, str], ...] | None = None

    @property
    def approved(self) -> str:
        return self.record.get("approved", "")

    async def refresh(self) -> None:
        if not self._history_read:
            local = await asyncio.to_thread(auditlog.history, self.audit_copy)
            self.finished_seq = max(
                ro.finished(await self.store.audit_fields()), ro.finished(local)
            )
            self._history_read = True
        rec = await self.store.record()
        seen = tuple(sorted(rec.items()))
        if seen == self._seen:
            return
        self._seen, self.record = seen, rec
        seq = int(rec["seq"]) if rec.get("seq", "").isdigit() else 0
        if rec.get("phase") in (ro.ABORTED, ro.COMPLETE):
            self.finished_seq = max(self.finished_seq, seq)
        active, refusal, detail = ro.verify_record(self.operators, self.node, rec)
        if active is not None and active.seq <= self.finished_seq:
            active, refusal = None, ro.REPLAYED
            detail = f"rollout {active_seq(rec)} already finished here"
        previous = (self.active, self.refusal)
        self.active, self.refusal = active, refusal
        self.refused_seq = str(seq) if refusal else ""
        if refusal and refusal != previous[1]:
            self.log.error("ROLLOUT_NOT_PROVEN", reason=refusal, detail=detail, seq=seq)
        elif active is not None and active != previous[0]:
            self.log.warning(
                "ROLLOUT", seq=active.seq, phase=active.phase, hosts=list(active.hosts),
                from_release=active.from_release, to_release=active.to_release,
            )  # fmt: skip

    def check(self, roster: Sequence[str], by_host: Mapping[str, str]) -> Split | None:
        return ro.check(roster, by_host, self.approved, self.active)

    def describe(self, cut: Split) -> str:
        return ro.describe(cut, self.active)

    async def settle(self, roster: Sequence[str], by_host: Mapping[str, str], actor: str) -> None:
        """Complete a promoted rollout every roster host now runs (leader only)."""
        done = self.active
        if done is None or not ro.completed(roster, by_host, done):
            return
        if await self.store.complete(done.seq, done.to_release, actor):
            self.log.warning("ROLLOUT_COMPLETE", seq=done.seq, release=done.to_release)
        await self.refresh()

    def view(self) -> dict[str, str]:
        """For `status`: the rollout this aggregator honours ("" none) and why not."""
        a = self.active
        return {
            "rollout_seq": str(a.seq) if a else "",
            "rollout_phase": a.phase if a else "",
            "rollout_refusal": self.refusal,
            "rollout_refused_seq": self.refused_seq,
        }


def active_seq(rec: Mapping[str, str]) -> str:
    return rec.get("seq", "?")[:20]
