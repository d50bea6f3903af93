"""What two operators sign to arm a node, and the check every gate makes before it opens.

Pure: bytes and numbers in, a decision out. The signed message binds the node, the state it
lifts (epoch and ver), the new epoch, the roster and each roster host's boot id, the reason,
the scope and an expiry, so a signature cannot be replayed onto another node, a later epoch,
another roster or a host that has since lost its memory. A proof is that message plus
signatures; it opens a gate only with two valid signatures of distinct operators (distinct
principals and distinct keys) over exactly this node, this epoch, a roster listing the host
and the host's current boot id, lifting the epoch the host holds, unexpired by its clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from killswitch.core.node.names import InvalidName, check_name

if TYPE_CHECKING:  # the verifier loads `cryptography`: `kill` and `status` only read proofs
    from killswitch.core.proof.sshsig import Operators

VERSION = "killswitch-arm-2"  # 2: boot ids signed (a -1 proof opens nothing)
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
# Fresh proofs (the host's own checks): each blocks with the gate word `unproven`.
UNPROVEN = "unproven"  # the proof does not name this host's current boot id
EXPIRED = "expired"  # the request expired by this host's clock before the host first saw it
WRONG_LIFT = "wrong_lift"  # the proof lifts an epoch this host does not hold
FRESH_REFUSALS = (UNPROVEN, EXPIRED, WRONG_LIFT)  # core.node.state.UNPROVEN_REFUSALS
_BOOT = re.compile(r"[0-9a-f]{16,64}")


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
    # scoped lift keeps the node's epoch: `epoch` equals `lifts_epoch` and opens no gate by
    # itself; a `host:<H>` one naming H's boot id admits H into the node's current arm.
    scope_ver: int = 0
    # (host, boot id) sorted: every roster host's for a node arm, the one host's for a host
    # scope, none for a symbol scope. A gate opens only for a proof naming its own boot id.
    boots: tuple[tuple[str, str], ...] = ()

    def boot_of(self, host: str) -> str:
        return dict(self.boots).get(host, "")

    def encode(self) -> bytes:
        scoped = {} if self.scope == SCOPE_NODE else {"scope_ver": self.scope_ver}
        return canonical(
            {
                **scoped,
                "boots": dict(self.boots),
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
            boots=signed_boots(d),
        )
        if req.encode() != data:
            raise ProofError("the signed message is not in canonical form")
        if req.epoch > MAX_EPOCH:
            raise ProofError("the signed epoch is out of range")
        if req.scope == SCOPE_NODE and req.epoch <= req.lifts_epoch:
            raise ProofError("the signed epoch does not lift the node's epoch")
        if req.scope != SCOPE_NODE and req.epoch != req.lifts_epoch:
            raise ProofError("a scoped lift must keep the node's epoch")
        named = {h for h, _ in req.boots}
        if req.scope == SCOPE_NODE and (not req.roster or named != set(req.roster)):
            raise ProofError("a node arm must name the boot id of every roster host")
        if req.scope != SCOPE_NODE and not named <= {req.scope.removeprefix("host:")}:
            raise ProofError("a scoped request names boot ids of hosts outside its scope")
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
    from killswitch.core.proof.sshsig import SignatureError, verify_signer  # noqa: PLC0415  see above

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
    keys: set[bytes] = set()
    for sig in proof.signatures[:8]:  # more than a handful is junk, not more proof
        try:
            who, key = verify_signer(operators, proof.message, sig)
        except SignatureError as e:
            return Verdict(req, refusal=BAD_SIGNATURE, detail=str(e))
        # one person is one principal and one key: a second key of the same principal, or
        # (were the file to allow it) one key under a second name, adds nobody
        if who not in principals and key not in keys:
            principals.append(who)
            keys.add(key)
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


def fresh_refusal(req: ArmRequest, host: str, boot: str, held: int, now_ms: int) -> tuple[str, str]:
    """Why a verified proof is not fresh for this host: (word, detail); ("", "") when it names
    the host's current boot id, lifts the epoch the host held before the arm (`held`) and has
    not expired by the host's clock (`now_ms`). Checked when a host first accepts a proof; one it
    accepted before (same epoch, same proof, same boot) is accepted again without it."""
    if not boot or req.boot_of(host) != boot:
        named = req.boot_of(host) or "none"
        return UNPROVEN, f"signed for boot {named}, this host's boot is {boot or 'unknown'}"
    # The host holds the epoch the arm lifts: at least the signed one (it saw the state the
    # operators lifted; above it when a forged notice or lost data raised it, which the arm's
    # new epoch goes above) and below the new one (an epoch it held before without accepting
    # this proof is one it refused, or a reused epoch).
    if not req.lifts_epoch <= held < req.epoch:
        return WRONG_LIFT, f"lifts epoch {req.lifts_epoch} to {req.epoch}, this host holds {held}"
    if now_ms > req.expires_ms:
        return EXPIRED, f"expired {(now_ms - req.expires_ms) / 1000:.1f}s ago by this host's clock"
    return "", ""


def admit_refusal(
    verdict: Verdict, node: str, host: str, epoch: int, boot: str, now_ms: int | None
) -> tuple[str, str]:
    """Why a `host:<host>` proof does not admit this host (its boot id) into the node's ARMED
    `epoch`: ("", "") when two operators signed exactly that, unexpired at `now_ms` (None: an
    admission this host accepted before, no expiry check)."""
    refusal, detail = lift_refusal(verdict, node, f"host:{host}")
    if refusal:
        return refusal, detail
    req = verdict.request
    assert req is not None
    if req.epoch != epoch:
        return WRONG_EPOCH, f"admits at epoch {req.epoch}, the state says {epoch}"
    if not boot or req.boot_of(host) != boot:
        return UNPROVEN, f"admits boot {req.boot_of(host) or 'none'}, this host's is {boot}"
    if now_ms is not None and now_ms > req.expires_ms:
        return EXPIRED, "the admission expired by this host's clock"
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


def lift_fresh_refusal(req: ArmRequest, host: str, boot: str, now_ms: int) -> tuple[str, str]:
    """Why a verified scoped lift may not open this host (its boot id, its clock): (word,
    detail); ("", "") when it may. A lift of this host's own scope must name its current boot
    (a restart since the signing voids it); any lift that opens this host (its own scope, or a
    symbol's) must not have expired by this host's clock when first seen. A lift of another
    host's scope opens nothing here and needs no freshness."""
    own = req.scope == f"host:{host}"
    if req.scope.startswith("host:") and not own:
        return "", ""
    if own and (not boot or req.boot_of(host) != boot):
        named = req.boot_of(host) or "none"
        return UNPROVEN, f"lifts boot {named}, this host's boot is {boot or 'unknown'}"
    if now_ms > req.expires_ms:
        return EXPIRED, f"expired {(now_ms - req.expires_ms) / 1000:.1f}s ago by this host's clock"
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


def signed_boots(d: dict[str, object]) -> tuple[tuple[str, str], ...]:
    """The signed host -> boot id object, as sorted pairs."""
    raw = d.get("boots")
    if not isinstance(raw, dict):
        raise ProofError("the signed boot ids are not an object")
    out: list[tuple[str, str]] = []
    for h, b in raw.items():
        if not isinstance(b, str) or not _BOOT.fullmatch(b):
            raise ProofError("a signed boot id is not 16-64 hex digits")
        try:
            out.append((check_name("host", str(h)), b))
        except InvalidName as e:
            raise ProofError(str(e)) from None
    return tuple(sorted(out))


def boots_of(reports: Mapping[str, Mapping[str, str]], hosts: Sequence[str]) -> dict[str, str]:
    """The boot id each of `hosts` reports (a host reporting none, or junk, is left out)."""
    out = {}
    for h in hosts:
        b = reports.get(h, {}).get("boot_id", "")
        if _BOOT.fullmatch(b):
            out[h] = b
    return out


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
