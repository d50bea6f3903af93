"""The sidecar's check of the signed arm: verified once per new proof, never per order."""

from __future__ import annotations

from typing import Any

from killswitch.core.armproof import Verdict, gate_refusal, lift_refusal, verify_proof
from killswitch.core.sshsig import Operators
from killswitch.core.state import HostView, NodeState, unproven


class ArmCheck:
    """The proof this host holds (as Redis last returned it) and its verdict."""

    def __init__(self, operators: Operators | None, node: str, host: str, log: Any) -> None:
        self.operators = operators
        self.node = node
        self.host = host
        self.log = log
        self.digest = ""  # sha1 (as Redis computes it) of the proof held below
        self._text = ""
        self._verdict: Verdict | None = None
        self.verifications = 0
        self.refused = 0
        self._last_refusal: tuple[int, str] = (0, "")
        self._lifts: dict[str, Verdict] = {}  # proof text -> verdict: each lift verified once

    def hold(self, digest: str, proof: str) -> None:
        """A proof whose digest differs from the held one: verified at the next ARMED read."""
        self.digest, self._text, self._verdict = digest, proof, None

    def prove(self, new: HostView) -> HostView:
        """An ARMED read opens the gate only with two operators' signatures over this node,
        this epoch and a roster listing this host; anything else is enforced as UNARMED."""
        if new.state is not NodeState.ARMED:
            return new
        if self._verdict is None:
            self._verdict = verify_proof(self.operators, self._text)
            self.verifications += 1
        refusal, detail = gate_refusal(self._verdict, self.node, self.host, new.epoch)
        if refusal and self._last_refusal != (new.epoch, refusal):
            self._last_refusal = (new.epoch, refusal)
            self.refused += 1
            self.log.error("ARM_NOT_PROVEN", epoch=new.epoch, reason=refusal, detail=detail)
        elif not refusal and self._last_refusal != (new.epoch, ""):
            self._last_refusal = (new.epoch, "")
            self.log.info("ARM_VERIFIED", epoch=new.epoch, operators=list(self._verdict.principals))
        return unproven(new, refusal)

    def lift(self, scope: str, proof: str) -> tuple[int, str]:
        """(the scopes version a proof lifts, "" when two operators signed the lift of exactly
        `scope` on this node, else the refusal word): `core.scope.LiftCheck`."""
        verdict = self._lifts.get(proof)
        if verdict is None:
            if len(self._lifts) >= 64:  # stale proofs of long-lifted scopes: verify again
                self._lifts.clear()
            verdict = self._lifts[proof] = verify_proof(self.operators, proof)
            self.verifications += 1
        refusal, _ = lift_refusal(verdict, self.node, scope)
        return (verdict.request.scope_ver if verdict.request else 0), refusal
