"""The sidecar's check of the signed arm: verified once per new proof, never per order.

A proof opens this host only when it is fresh for it (`core.proof.armproof.fresh_refusal`): it
names this host's boot id, lifts the epoch the host held and had not expired by the host's
clock when the host first accepted it; or when two operators admitted this boot into the
node's current arm (`arm --host`, `admit_refusal`). What it accepted is remembered (the
epoch and the proof's digest, kept in the state file by the caller), so a lease that lapses
or a restart with the state file reopens on the same proof without a new arm.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from killswitch.core.node.state import HostView, NodeState, unproven
from killswitch.core.proof.armproof import (
    Verdict,
    admit_refusal,
    fresh_refusal,
    gate_refusal,
    lift_fresh_refusal,
    lift_refusal,
    verify_proof,
)
from killswitch.core.proof.sshsig import Operators


def sha1_hex(text: str) -> str:
    """The digest Redis's `redis.sha1hex` gives for the same text."""
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class ArmCheck:
    """The proof this host holds (as Redis last returned it) and its verdict."""

    def __init__(
        self,
        operators: Operators | None,
        node: str,
        host: str,
        log: Any,
        *,
        boot: str = "",
        accepted: tuple[int, str] = (0, ""),
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.operators = operators
        self.node = node
        self.host = host
        self.log = log
        self.boot = boot
        self.accepted = accepted  # (epoch, sha1 of the proof) this boot opened on
        self.wall = wall
        self.digest = ""  # sha1 (as Redis computes it) of the proof held below
        self._text = ""
        self._verdict: Verdict | None = None
        self._admission = ""  # the latest `lift:host:<this host>` proof read
        self._admission_verdict: Verdict | None = None
        # (epoch, digest) of the last proof judged fresh or not, and that judgement
        self._first_sight: tuple[tuple[int, str], tuple[str, str]] = ((0, ""), ("", ""))
        self.verifications = 0
        self.refused = 0
        self._last_refusal: tuple[int, str] = (0, "")
        self._lifts: dict[str, Verdict] = {}  # proof text -> verdict: each lift verified once

    def announce(self) -> None:
        """Log, once started, that this gate can never open (it has no operators file)."""
        if self.operators is None:
            self.log.error(
                "NO_OPERATORS",
                reason="no --operators file: this gate cannot verify any arm and will never "
                "open (every order gets BLOCK unarmed). Give --operators PATH "
                "(KILLSWITCH_OPERATORS), the operators' allowed-signers file",
            )

    def hold(self, digest: str, proof: str) -> None:
        """A proof whose digest differs from the held one: verified at the next ARMED read."""
        self.digest, self._text, self._verdict = digest, proof, None

    def offer_admission(self, proof: str | None) -> None:
        """The proof of `arm --host <this host>` as read (verified when it is needed); None:
        the read carried none (lift proofs come only with a new scopes version)."""
        if proof is not None and proof != self._admission:
            self._admission, self._admission_verdict = proof, None

    def prove(self, new: HostView, held: int = 0) -> HostView:
        """An ARMED read opens the gate only with two operators' signatures over this node,
        this epoch and a roster listing this host, fresh for this host (`held`: the epoch it
        held before this read); anything else is enforced as UNARMED (or `unproven`)."""
        if new.state is not NodeState.ARMED:
            return new
        if self._verdict is None:
            self._verdict = verify_proof(self.operators, self._text)
            self.verifications += 1
        refusal, detail = gate_refusal(self._verdict, self.node, self.host, new.epoch)
        if not refusal:
            refusal, detail = self._fresh(self._verdict, new.epoch, held)
        if refusal and self._last_refusal != (new.epoch, refusal):
            self._last_refusal = (new.epoch, refusal)
            self.refused += 1
            self.log.error("ARM_NOT_PROVEN", epoch=new.epoch, reason=refusal, detail=detail)
        elif not refusal and self._last_refusal != (new.epoch, ""):
            self._last_refusal = (new.epoch, "")
            self.log.info("ARM_VERIFIED", epoch=new.epoch, operators=list(self._verdict.principals))
        return unproven(new, refusal)

    def _fresh(self, verdict: Verdict, epoch: int, held: int) -> tuple[str, str]:
        """("", "") when this boot may open on the node's verified proof at `epoch`."""
        if self.accepted == (epoch, self.digest):
            return "", ""  # accepted before (a lapsed lease, a restart with the state file)
        admitted = sha1_hex(self._admission) if self._admission else ""
        if admitted and self.accepted == (epoch, admitted) and not self._admits(epoch, None)[0]:
            return "", ""
        now_ms = int(self.wall() * 1000)
        assert verdict.request is not None
        if self._first_sight[0] == (epoch, self.digest):
            # Judged when first seen: the epoch it held then, the clock then. Held since (an
            # unproven ARMED is remembered), the epoch would read as a wrong lift.
            refusal, detail = self._first_sight[1]
        else:
            refusal, detail = fresh_refusal(verdict.request, self.host, self.boot, held, now_ms)
            self._first_sight = ((epoch, self.digest), (refusal, detail))
        if not refusal:
            self.accepted = (epoch, self.digest)
            return "", ""
        if admitted and not self._admits(epoch, now_ms)[0]:
            self.log.warning("ARM_ADMITTED", epoch=epoch, boot=self.boot, instead_of=refusal)
            self.accepted = (epoch, admitted)
            return "", ""
        return refusal, detail

    def _admits(self, epoch: int, now_ms: int | None) -> tuple[str, str]:
        if self._admission_verdict is None:
            self._admission_verdict = verify_proof(self.operators, self._admission)
            self.verifications += 1
        return admit_refusal(
            self._admission_verdict, self.node, self.host, epoch, self.boot, now_ms
        )

    def lift(self, scope: str, proof: str) -> tuple[int, str]:
        """(the scopes version a proof lifts, "" when two operators signed the lift of exactly
        `scope` on this node, fresh for this host, else the refusal word):
        `core.node.scope.LiftCheck`. Fresh (`lift_fresh_refusal`): a lift of this host's own
        scope names its current boot, and one that opens it has not expired by its clock."""
        verdict = self._lifts.get(proof)
        if verdict is None:
            if len(self._lifts) >= 64:  # stale proofs of long-lifted scopes: verify again
                self._lifts.clear()
            verdict = self._lifts[proof] = verify_proof(self.operators, proof)
            self.verifications += 1
        refusal, _ = lift_refusal(verdict, self.node, scope)
        if not refusal and verdict.request is not None:
            now_ms = int(self.wall() * 1000)
            refusal, _ = lift_fresh_refusal(verdict.request, self.host, self.boot, now_ms)
        return (verdict.request.scope_ver if verdict.request else 0), refusal
