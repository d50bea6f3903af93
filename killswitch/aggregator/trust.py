"""What the aggregator believes about arms and the roster: only what two operators signed.

It verifies the stored arm proof once per change (never per tick), says whether the node's
ARMED state is proven for its epoch, and keeps the roster the last valid proof names; the
aggregator's own `--hosts` only propose a roster until the first signed arm, and a
difference is reported loudly, never acted on. It decides from what the aggregator read;
it never talks to Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from killswitch.core.proof.armproof import Verdict, node_refusal, verify_proof
from killswitch.core.proof.sshsig import Operators

MISMATCH_LOG_S = 30.0  # a --hosts that differ from the signed roster is said again this often


class Trust:
    """The roster to prove against and whether an ARMED state is proven."""

    def __init__(
        self,
        node: str,
        hosts: Sequence[str],
        operators: Operators | None,
        log: Any,
        clock: Callable[[], float],
    ) -> None:
        self.node = node
        self.hosts = tuple(hosts)
        self.operators = operators
        self.log = log
        self.clock = clock
        self.roster: tuple[str, ...] = self.hosts  # a proposal until the first signed arm
        self.signed_roster: tuple[str, ...] = ()
        self.mismatch = False
        self.refusal = ""  # why the current ARMED state is not proven ("" proven or not ARMED)
        self._mismatch_logged = -1e9
        self._text: str | None = None
        self._verdict: Verdict = verify_proof(operators, "")

    def learn(self, proof: str) -> bool:
        """Take the stored proof (verified only when it changed); True if the roster changed."""
        if proof == self._text:
            return False
        self._text = proof
        self._verdict = verify_proof(self.operators, proof)
        req = self._verdict.request
        changed = False
        if self._verdict.ok and req is not None and req.node == self.node:
            changed = req.roster != self.roster
            self.signed_roster = self.roster = req.roster
        self.mismatch = bool(self.signed_roster) and set(self.hosts) != set(self.signed_roster)
        if self.mismatch:
            self._mismatch_logged = -1e9  # say it at once for a new signed roster
        return changed

    def judge(self, armed: bool, epoch: int) -> str:
        """Why an ARMED state at `epoch` is not proven ("" proven); logs each new refusal."""
        previous = self.refusal
        self.refusal = node_refusal(self._verdict, self.node, epoch)[0] if armed else ""
        if self.refusal and self.refusal != previous:
            detail = node_refusal(self._verdict, self.node, epoch)[1]
            self.log.error("ARM_NOT_PROVEN", epoch=epoch, reason=self.refusal, detail=detail)
        return self.refusal

    def say_mismatch(self) -> None:
        if self.mismatch and self.clock() - self._mismatch_logged >= MISMATCH_LOG_S:
            self._mismatch_logged = self.clock()
            self.log.error(
                "ROSTER_MISMATCH",
                hosts=list(self.hosts),
                signed_roster=list(self.signed_roster),
                action="nothing changed: only a signed arm (--roster) changes the roster",
            )
