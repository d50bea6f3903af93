"""Signed, staged rollouts: which release each roster host may run, and the split they define.

Pure: messages, records and reported releases in, decisions out; it never reads Redis or a
file. A rollout is begun, promoted and aborted by two operators each, like an arm, with the
arm's signatures (`core.proof.sshsig`, namespace "killswitch") over a message of its own kind
(`VERSION`), so an arm signature never reads as a rollout step and a rollout step never reads
as an arm. A record exempts hosts only when its signatures verify: nothing written into Redis
by hand widens what a host may run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from killswitch.core.node.release import Split, short, split
from killswitch.core.proof.armproof import (
    MAX_EPOCH,
    REQUIRED_OPERATORS,
    Proof,
    ProofError,
    canonical,
    field_int,
    field_str,
    signed_fields,
    signed_names,
    signed_node,
)

if TYPE_CHECKING:  # the verifier loads `cryptography`: `status` only reads records
    from killswitch.core.proof.sshsig import Operators

VERSION = "killswitch-rollout-1"
BEGIN, PROMOTE, ABORT = "begin", "promote", "abort"
STEPS = (BEGIN, PROMOTE, ABORT)
# Phases of a stored record: the first two exempt hosts (when signed), the rest are history.
CANARY, PROMOTED, COMPLETE, ABORTED = "canary", "promoted", "complete", "aborted"
ACTIVE = (CANARY, PROMOTED)
DIGEST_RE = re.compile(r"[0-9a-f]{64}")

# Why a stored record exempts nothing (what the aggregator reports; "" honoured).
UNSIGNED = "unsigned"
BAD_PROOF = "bad_proof"
BAD_SIGNATURE = "bad_signature"
ONE_OPERATOR = "one_operator"
MISMATCH = "mismatch"  # the signed steps do not agree with each other or with the record
REPLAYED = "replayed"  # an older rollout than one already seen: a replay
NO_OPERATORS = "no_operators"


@dataclass(frozen=True, slots=True)
class RolloutRequest:
    """The message both operators sign for one step (canonical JSON)."""

    node: str
    step: str  # BEGIN, PROMOTE or ABORT
    seq: int  # the rollout's number: a begin takes the stored one + 1, later steps repeat it
    from_release: str  # the release the node runs (its approved release)
    to_release: str  # the new release
    hosts: tuple[str, ...]  # the canary hosts, allowed to run `to_release` before promotion
    reason: str
    expires_ms: int  # Redis server time after which the step cannot be completed

    def encode(self) -> bytes:
        return canonical(
            {
                "v": VERSION,
                "node": self.node,
                "step": self.step,
                "seq": self.seq,
                "from": self.from_release,
                "to": self.to_release,
                "hosts": list(self.hosts),
                "reason": self.reason,
                "expires_ms": self.expires_ms,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> RolloutRequest:
        d = signed_fields(data, VERSION, "step")
        hosts = signed_names(d, "hosts", "hosts are")
        node = signed_node(d)
        req = cls(
            node=node,
            step=field_str(d, "step"),
            seq=field_int(d, "seq"),
            from_release=field_str(d, "from"),
            to_release=field_str(d, "to"),
            hosts=tuple(hosts),
            reason=field_str(d, "reason"),
            expires_ms=field_int(d, "expires_ms"),
        )
        if req.encode() != data:
            raise ProofError("the signed message is not in canonical form")
        problem = request_problem(req)
        if problem:
            raise ProofError(problem)
        return req

    def terms(self) -> tuple[str, int, str, str, tuple[str, ...]]:
        """What every step of one rollout must agree on (the step and the expiry aside)."""
        return self.node, self.seq, self.from_release, self.to_release, self.hosts


def request_problem(req: RolloutRequest) -> str:
    """Why `req` can never be a valid step ("" when it can)."""
    if req.step not in STEPS:
        return f"unknown rollout step {req.step!r}"
    if not 1 <= req.seq <= MAX_EPOCH:
        return "the rollout number is out of range"
    if not DIGEST_RE.fullmatch(req.to_release):
        return "the new release is not a SHA-256 digest (64 lowercase hex digits)"
    if req.from_release == req.to_release:
        return "the new release is the release the node runs"
    if not req.hosts or list(req.hosts) != sorted(set(req.hosts)):
        return "the canary hosts must be a non-empty, sorted list without repeats"
    return ""


@dataclass(frozen=True, slots=True)
class Rollout:
    """A rollout whose signatures verified: what it lets each host run."""

    seq: int
    phase: str  # CANARY or PROMOTED
    from_release: str
    to_release: str
    hosts: tuple[str, ...]
    signed_by: Mapping[str, tuple[str, ...]]  # step -> its two (or more) principals

    def allowed(self, host: str) -> tuple[str, ...]:
        if self.phase == PROMOTED or host in self.hosts:
            return (self.from_release, self.to_release)
        return (self.from_release,)


@dataclass(frozen=True, slots=True)
class StepVerdict:
    request: RolloutRequest | None
    principals: tuple[str, ...] = ()
    refusal: str = ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.request is not None and not self.refusal


def verify_step(operators: Operators | None, text: str, node: str, step: str) -> StepVerdict:
    """Verify one stored step: a `step` message for `node` signed by two distinct operators."""
    from killswitch.core.proof.sshsig import SignatureError, verify  # noqa: PLC0415  see above

    if operators is None:
        return StepVerdict(None, refusal=NO_OPERATORS, detail="no operators file loaded")
    if not text:
        return StepVerdict(None, refusal=UNSIGNED, detail=f"the {step} step carries no signatures")
    try:
        proof = Proof.from_text(text)
        req = RolloutRequest.decode(proof.message)
    except ProofError as e:
        return StepVerdict(None, refusal=BAD_PROOF, detail=str(e))
    if req.node != node or req.step != step:
        return StepVerdict(req, refusal=MISMATCH, detail=f"signed {req.step} of {req.node!r}")
    principals: list[str] = []
    for sig in proof.signatures[:8]:
        try:
            who = verify(operators, proof.message, sig)
        except SignatureError as e:
            return StepVerdict(req, refusal=BAD_SIGNATURE, detail=str(e))
        if who not in principals:
            principals.append(who)
    if len(principals) < REQUIRED_OPERATORS:
        return StepVerdict(
            req, tuple(principals), ONE_OPERATOR,
            f"{step} signed by {len(principals)} distinct operator(s), {REQUIRED_OPERATORS} needed",
        )  # fmt: skip
    return StepVerdict(req, tuple(principals))


def verify_record(
    operators: Operators | None, node: str, record: Mapping[str, str]
) -> tuple[Rollout | None, str, str]:
    """The rollout a stored record proves: (rollout or None, refusal word, detail).

    Only an active phase can exempt anything; its terms come from the signed messages, never
    from the record's plain fields (those are for people reading Redis).
    """
    phase = record.get("phase", "")
    if phase not in ACTIVE:
        return None, "", ""
    begin = verify_step(operators, record.get("begin", ""), node, BEGIN)
    if not begin.ok or begin.request is None:
        return None, begin.refusal or BAD_PROOF, begin.detail
    req = begin.request
    signed_by = {BEGIN: begin.principals}
    if phase == PROMOTED:
        promote = verify_step(operators, record.get("promote", ""), node, PROMOTE)
        if not promote.ok or promote.request is None:
            return None, promote.refusal or BAD_PROOF, promote.detail
        if promote.request.terms() != req.terms():
            return None, MISMATCH, "the promotion signs another rollout than the begin"
        signed_by[PROMOTE] = promote.principals
    if record.get("seq", "") != str(req.seq):
        return None, MISMATCH, f"the record says rollout {record.get('seq')!r}, signed {req.seq}"
    approved = record.get("approved", "")
    if approved and approved != req.from_release:
        return None, MISMATCH, f"it starts from {short(req.from_release)}, not the approved release"
    rollout = Rollout(req.seq, phase, req.from_release, req.to_release, req.hosts, signed_by)
    return rollout, "", ""


def check(
    roster: Sequence[str], by_host: Mapping[str, str], approved: str, rollout: Rollout | None
) -> Split | None:
    """The version vector with rollouts: None when every reporting roster host runs a release
    it may run, else the split (`majority`: the release the rest must run).

    - A verified rollout: its canary hosts (every host, once promoted) may run `from` or
      `to`; every other host must run `from`. A third release is a split.
    - No rollout, an approved release known: every host must run it; a unanimous move to
      another release (a "rollback" no rollout named) is a split too.
    - Neither: one release across the roster (`release.split`).
    """
    known = {h: by_host[h] for h in roster if h in by_host}
    if rollout is not None:
        odd = {h: r for h, r in sorted(known.items()) if r not in rollout.allowed(h)}
        return Split(rollout.from_release, odd) if odd else None
    if approved:
        odd = {h: r for h, r in sorted(known.items()) if r != approved}
        return Split(approved, odd) if odd else None
    return split(roster, by_host)


def completed(roster: Sequence[str], by_host: Mapping[str, str], rollout: Rollout | None) -> bool:
    """A promoted rollout is complete once every roster host reports its new release."""
    return (
        rollout is not None
        and rollout.phase == PROMOTED
        and bool(roster)
        and all(by_host.get(h) == rollout.to_release for h in roster)
    )


def approvable(roster: Sequence[str], by_host: Mapping[str, str]) -> str:
    """The release an arm approves: the one every roster host reports ("" none or several)."""
    found = {by_host.get(h, "") for h in roster}
    return found.pop() if len(found) == 1 else ""


def start_release(
    roster: Sequence[str], by_host: Mapping[str, str], approved: str, hosts: Sequence[str]
) -> str:
    """The `from` of a new rollout: the approved release, else the one release every host
    outside the canary set runs ("" when they do not agree)."""
    if approved:
        return approved
    return approvable([h for h in roster if h not in hosts], by_host)


def finished(entries: Iterable[Mapping[str, str]]) -> int:
    """The highest rollout number the audit entries record as aborted or complete (0 none)."""
    seqs = [
        int(e["rollout"])
        for e in entries
        if e.get("action") in ("rollout_abort", "rollout_complete")
        and e.get("rollout", "").isdigit()
        and len(e["rollout"]) <= 16
    ]
    return max(seqs, default=0)


def describe(cut: Split, rollout: Rollout | None) -> str:
    """The trip reason: the odd hosts, and what they should run."""
    odd = ", ".join(f"{h} runs {short(r)}" for h, r in sorted(cut.odd.items()))
    if rollout is not None:
        return (
            f"release split: {odd}; rollout {rollout.seq} ({rollout.phase}) allows "
            f"{short(rollout.from_release)}, and {short(rollout.to_release)} on "
            f"{'every host' if rollout.phase == PROMOTED else ','.join(rollout.hosts)}"
        )
    return f"release split: {odd}; the approved release is {short(cut.majority)}"
