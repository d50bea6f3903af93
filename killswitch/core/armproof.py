"""What two operators sign to arm a node, and the check every gate makes before it opens.

Pure: bytes and numbers in, a decision out. The signed message binds the node, the state it
lifts (epoch and ver), the new epoch, the roster, the reason, the scope and an expiry, so a
signature cannot be replayed onto another node, a later epoch or another roster. A proof
is that message plus signatures; it opens a gate only with two valid signatures of distinct
operators over exactly this node, this epoch and a roster listing the host.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from killswitch.core.names import InvalidName, check_name

if TYPE_CHECKING:  # the verifier loads `cryptography`: `kill` and `status` only read proofs
    from killswitch.core.sshsig import Operators

VERSION = "killswitch-arm-1"
SCOPE_NODE = "node"
MAX_PROOF_BYTES = 64 * 1024  # two RSA-16384 signatures and a long reason fit easily
MAX_EPOCH = 2**53  # epochs are exact integers everywhere (JSON, Lua doubles)
REQUIRED_OPERATORS = 2

# Why a gate stays closed for an ARMED read (reported in the host's report and status).
UNSIGNED = "unsigned"  # no proof at all: e.g. a raw HSET of the state
BAD_PROOF = "bad_proof"  # a proof that does not parse
BAD_SIGNATURE = "bad_signature"  # a signature that does not verify
ONE_OPERATOR = "one_operator"  # fewer than two distinct operators signed
WRONG_NODE = "wrong_node"
WRONG_EPOCH = "wrong_epoch"  # signed for another epoch: a replay
UNLISTED = "unlisted"  # the signed roster does not list this host
NO_OPERATORS = "no_operators"  # this process has no operators file: it cannot verify
WRONG_SCOPE = "wrong_scope"  # a lift signed for another scope (or a node arm)


class ProofError(ValueError):
    """A request or proof that cannot be read; the message says why."""


@dataclass(frozen=True, slots=True)
class ArmRequest:
    """The message both operators sign (canonical JSON, one byte string per request)."""

    node: str
    lifts_epoch: int  # the stored epoch this arm lifts (0: never armed)
    lifts_ver: int  # and its ver: a kill after the request (even of a killed node) voids it
    epoch: int  # the epoch the node takes when armed
    roster: tuple[str, ...]
    reason: str
    expires_ms: int  # Redis server time after which the request cannot be completed
    scope: str = SCOPE_NODE  # or "host:<H>" / "symbol:<S>": the lift of that scoped kill
    # A scoped lift: the scopes version it lifts (a later scoped kill voids the request). A
    # scoped lift keeps the node's epoch: `epoch` equals `lifts_epoch` and opens no gate.
    scope_ver: int = 0

    def encode(self) -> bytes:
        scoped = {} if self.scope == SCOPE_NODE else {"scope_ver": self.scope_ver}
        return canonical(
            {
                **scoped,
                "v": VERSION,
                "node": self.node,
                "lifts_epoch": self.lifts_epoch,
                "lifts_ver": self.lifts_ver,
                "epoch": self.epoch,
                "roster": list(self.roster),
                "reason": self.reason,
                "scope": self.scope,
                "expires_ms": self.expires_ms,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> ArmRequest:
        d = signed_fields(data, VERSION, "request")
        roster = signed_names(d, "roster", "roster is")
        node = signed_node(d)
        req = cls(
            node=node,
            lifts_epoch=field_int(d, "lifts_epoch"),
            lifts_ver=field_int(d, "lifts_ver"),
            epoch=field_int(d, "epoch"),
            roster=tuple(roster),
            reason=field_str(d, "reason"),
            expires_ms=field_int(d, "expires_ms"),
            scope=field_str(d, "scope"),
            scope_ver=field_int(d, "scope_ver") if "scope_ver" in d else 0,
        )
        if req.encode() != data:
            raise ProofError("the signed message is not in canonical form")
        if req.epoch > MAX_EPOCH:
            raise ProofError("the signed epoch is out of range")
        if req.scope == SCOPE_NODE and req.epoch <= req.lifts_epoch:
            raise ProofError("the signed epoch does not lift the node's epoch")
        if req.scope != SCOPE_NODE and req.epoch != req.lifts_epoch:
            raise ProofError("a scoped lift must keep the node's epoch")
        return req


@dataclass(frozen=True, slots=True)
class Proof:
    """A request and the signatures collected for it, as stored next to the node state."""

    message: bytes
    signatures: tuple[str, ...]

    def to_text(self) -> str:
        return json.dumps(
            {"msg": self.message.decode("ascii"), "sigs": list(self.signatures)},
            separators=(",", ":"),
        )

    @classmethod
    def from_text(cls, text: str) -> Proof:
        if len(text) > MAX_PROOF_BYTES:
            raise ProofError("proof too long")
        try:
            d = json.loads(text)
        except ValueError:
            raise ProofError("the proof is not JSON") from None
        if not isinstance(d, dict):
            raise ProofError("the proof is not a JSON object")
        msg, sigs = d.get("msg"), d.get("sigs")
        if not isinstance(msg, str) or not msg.isascii():
            raise ProofError("the proof has no message")
        if not isinstance(sigs, list) or not all(isinstance(s, str) for s in sigs):
            raise ProofError("the proof's signatures are not a list")
        return cls(msg.encode("ascii"), tuple(sigs))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What verifying a stored proof found: the request and who signed, or why not."""

    request: ArmRequest | None
    principals: tuple[str, ...] = ()
    refusal: str = ""  # one of the words above ("" when two operators signed)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.request is not None and not self.refusal


def verify_proof(operators: Operators | None, text: str) -> Verdict:
    """Verify a stored proof's signatures (the costly part: done once per new proof)."""
    from killswitch.core.sshsig import SignatureError, verify  # noqa: PLC0415  see above

    if operators is None:
        return Verdict(None, refusal=NO_OPERATORS, detail="no operators file loaded")
    if not text:
        return Verdict(None, refusal=UNSIGNED, detail="the ARMED state carries no signatures")
    try:
        proof = Proof.from_text(text)
        req = ArmRequest.decode(proof.message)
    except ProofError as e:
        return Verdict(None, refusal=BAD_PROOF, detail=str(e))
    principals: list[str] = []
    for sig in proof.signatures[:8]:  # more than a handful is junk, not more proof
        try:
            who = verify(operators, proof.message, sig)
        except SignatureError as e:
            return Verdict(req, refusal=BAD_SIGNATURE, detail=str(e))
        if who not in principals:
            principals.append(who)
    if len(principals) < REQUIRED_OPERATORS:
        return Verdict(
            req,
            tuple(principals),
            ONE_OPERATOR,
            f"signed by {len(principals)} distinct operator(s), {REQUIRED_OPERATORS} needed",
        )
    return Verdict(req, tuple(principals))


def gate_refusal(verdict: Verdict, node: str, host: str, epoch: int) -> tuple[str, str]:
    """Why an ARMED read at `epoch` must not open `host`'s gate: (word, detail); ("", "") opens.

    Cheap: the signatures were checked by `verify_proof`; this compares what they bind.
    """
    if not verdict.ok:
        return verdict.refusal, verdict.detail
    req = verdict.request
    assert req is not None
    if req.node != node:
        return WRONG_NODE, f"signed for node {req.node!r}"
    if req.scope != SCOPE_NODE:
        return BAD_PROOF, f"signed for scope {req.scope!r}"
    if req.epoch != epoch:
        return WRONG_EPOCH, f"signed for epoch {req.epoch}, the state says {epoch}"
    if host not in req.roster:
        return UNLISTED, f"{host} is not on the signed roster"
    return "", ""


def node_refusal(verdict: Verdict, node: str, epoch: int) -> tuple[str, str]:
    """Like `gate_refusal` for the whole node (the aggregator): no host check."""
    if not verdict.ok:
        return verdict.refusal, verdict.detail
    req = verdict.request
    assert req is not None
    if req.node != node or req.scope != SCOPE_NODE:
        return WRONG_NODE, f"signed for node {req.node!r} scope {req.scope!r}"
    if req.epoch != epoch:
        return WRONG_EPOCH, f"signed for epoch {req.epoch}, the state says {epoch}"
    return "", ""


def lift_refusal(verdict: Verdict, node: str, scope: str) -> tuple[str, str]:
    """Why a proof does not lift scoped kill `scope` ("host:<H>"/"symbol:<S>") on `node`:
    (word, detail); ("", "") when two operators signed exactly that lift."""
    if not verdict.ok:
        return verdict.refusal, verdict.detail
    req = verdict.request
    assert req is not None
    if req.node != node:
        return WRONG_NODE, f"signed for node {req.node!r}"
    if req.scope != scope:
        return WRONG_SCOPE, f"signed for scope {req.scope!r}"
    return "", ""


def roster_of(text: str) -> tuple[str, ...]:
    """The roster a stored proof names, unverified ("" or junk: none). Only ever used to make
    containment stricter (a kill waits for these hosts too), never to open anything."""
    try:
        return ArmRequest.decode(Proof.from_text(text).message).roster
    except ProofError:
        return ()


def check_roster_names(hosts: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted({check_name("host", h) for h in hosts}))


def canonical(d: dict[str, object]) -> bytes:
    """The one byte form a signed message may take: sorted keys, no spaces, ASCII."""
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def signed_fields(data: bytes, version: str, what: str) -> dict[str, object]:
    """The JSON object of a signed message of kind `version` (ProofError for anything else)."""
    try:
        d = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ProofError("the signed message is not JSON") from None
    if not isinstance(d, dict) or d.get("v") != version:
        raise ProofError(f"the signed message is not a {version} {what}")
    return d


def signed_names(d: dict[str, object], key: str, what: str) -> list[str]:
    """The signed list `key` of host names, each a valid name."""
    hosts = d.get(key)
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ProofError(f"the signed {what} not a list of host names")
    try:
        return [check_name("host", h) for h in hosts]
    except InvalidName as e:
        raise ProofError(str(e)) from None


def signed_node(d: dict[str, object]) -> str:
    try:
        return check_name("node", field_str(d, "node"))
    except InvalidName as e:
        raise ProofError(str(e)) from None


def field_int(d: dict[str, object], k: str) -> int:
    v = d.get(k)
    if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= MAX_EPOCH * 1024:
        raise ProofError(f"{k} is not a sane whole number")
    return v


def field_str(d: dict[str, object], k: str) -> str:
    v = d.get(k)
    if not isinstance(v, str):
        raise ProofError(f"{k} is not text")
    return v
