"""Every refusal of the arm proof reader: a stored proof or signed request broken one field at
a time is refused with its reason, and a gate reading it stays closed (`bad_proof`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from killswitch.core.node.names import InvalidName
from killswitch.core.proof.armproof import (
    BAD_PROOF,
    MAX_EPOCH,
    MAX_PROOF_BYTES,
    NO_OPERATORS,
    ONE_OPERATOR,
    VERSION,
    WRONG_EPOCH,
    WRONG_NODE,
    ArmRequest,
    Proof,
    ProofError,
    Verdict,
    canonical,
    check_roster_names,
    node_refusal,
    roster_of,
    verify_proof,
)
from killswitch.core.proof.sshsig import Operators

REQ = ArmRequest(
    "smars", 6, 9, 7, ("or-01", "or-02"), "open", 10**12,
    boots=(("or-01", "b0" * 8), ("or-02", "b0" * 8)),
)  # fmt: skip
NOBODY = Operators({})  # verification never reaches a signature in these cases


def fields(**change: Any) -> bytes:
    """REQ's signed fields with some changed (None: removed), in canonical form."""
    d: dict[str, object] = json.loads(REQ.encode())
    for k, v in change.items():
        if v is None:
            d.pop(k)
        else:
            d[k] = v
    return canonical(d)


def proof_of(message: bytes) -> str:
    return Proof(message, ("sig-a", "sig-b")).to_text()


PROOF_TEXT_CASES = [
    ("too-long", "x" * (MAX_PROOF_BYTES + 1), "proof too long"),
    ("not-json", "{msg:", "the proof is not JSON"),
    ("json-list", '["msg", "sigs"]', "the proof is not a JSON object"),
    ("json-string", '"a proof"', "the proof is not a JSON object"),
    ("no-msg", '{"sigs": []}', "the proof has no message"),
    ("msg-number", '{"msg": 7, "sigs": []}', "the proof has no message"),
    ("msg-not-ascii", '{"msg": "caf\\u00e9", "sigs": []}', "the proof has no message"),
    ("no-sigs", '{"msg": "m"}', "the proof's signatures are not a list"),
    ("sigs-string", '{"msg": "m", "sigs": "sig"}', "the proof's signatures are not a list"),
    ("sigs-of-numbers", '{"msg": "m", "sigs": ["a", 2]}', "the proof's signatures are not a list"),
]

BAD_NAME = (
    "must match [a-z0-9][a-z0-9._-]{0,62} "
    "(lower-case letters, digits, '.', '_', '-'; at most 63 characters)"
)
REQUEST_CASES: list[tuple[str, bytes, str]] = [
    ("not-json", b"{v:", "the signed message is not JSON"),
    ("not-utf8", b'{"v":"\xff"}', "the signed message is not JSON"),
    ("json-list", b"[1,2]", f"the signed message is not a {VERSION} request"),
    ("other-version", fields(v="killswitch-arm-0"),
     f"the signed message is not a {VERSION} request"),
    ("no-version", fields(v=None), f"the signed message is not a {VERSION} request"),
    ("roster-string", fields(roster="or-01"), "the signed roster is not a list of host names"),
    ("roster-of-numbers", fields(roster=[1, 2]), "the signed roster is not a list of host names"),
    ("roster-bad-name", fields(roster=["OR-01"]), f"invalid host name 'OR-01': {BAD_NAME}"),
    ("node-number", fields(node=7), "node is not text"),
    ("node-bad-name", fields(node="Smars"), f"invalid node name 'Smars': {BAD_NAME}"),
    ("lifts-epoch-missing", fields(lifts_epoch=None), "lifts_epoch is not a sane whole number"),
    ("lifts-epoch-bool", fields(lifts_epoch=True), "lifts_epoch is not a sane whole number"),
    ("lifts-ver-negative", fields(lifts_ver=-1), "lifts_ver is not a sane whole number"),
    ("epoch-float", fields(epoch=7.0), "epoch is not a sane whole number"),
    ("epoch-string", fields(epoch="7"), "epoch is not a sane whole number"),
    ("expires-absurd", fields(expires_ms=MAX_EPOCH * 1024 + 1),
     "expires_ms is not a sane whole number"),
    ("reason-number", fields(reason=1), "reason is not text"),
    ("scope-missing", fields(scope=None), "scope is not text"),
    ("scope-ver-string", fields(scope="host:or-01", scope_ver="4"),
     "scope_ver is not a sane whole number"),
    ("not-canonical", REQ.encode().replace(b",", b", ", 1),
     "the signed message is not in canonical form"),
    ("epoch-out-of-range", fields(epoch=MAX_EPOCH + 1), "the signed epoch is out of range"),
    ("epoch-does-not-lift", fields(epoch=6), "the signed epoch does not lift the node's epoch"),
    ("epoch-goes-back", fields(epoch=5), "the signed epoch does not lift the node's epoch"),
    ("scoped-moves-epoch", fields(scope="symbol:kcg", scope_ver=1),
     "a scoped lift must keep the node's epoch"),
]  # fmt: skip


class TestMalformedProofText:
    """The stored proof (JSON of message and signatures) cannot be read."""

    @pytest.mark.parametrize(
        ("text", "reason"), [c[1:] for c in PROOF_TEXT_CASES], ids=[c[0] for c in PROOF_TEXT_CASES]
    )
    def test_refused_with_its_reason_and_the_gate_stays_closed(
        self, text: str, reason: str
    ) -> None:
        """Proof.from_text names what is wrong, and verify_proof reports it as bad_proof."""
        with pytest.raises(ProofError) as refused:
            Proof.from_text(text)
        assert str(refused.value) == reason
        verdict = verify_proof(NOBODY, text)
        assert (verdict.ok, verdict.refusal, verdict.detail) == (False, BAD_PROOF, reason)
        assert roster_of(text) == ()


class TestMalformedRequest:
    """The signed request inside a readable proof is not one operators could have signed."""

    @pytest.mark.parametrize(
        ("message", "reason"), [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
    )
    def test_refused_with_its_reason_before_any_signature_is_checked(
        self, message: bytes, reason: str
    ) -> None:
        """ArmRequest.decode names the bad field; verify_proof refuses it as bad_proof with
        no request, so nothing it claims (roster, epoch) is believed."""
        with pytest.raises(ProofError) as refused:
            ArmRequest.decode(message)
        assert str(refused.value) == reason
        if message.isascii():  # a stored proof's message is ASCII by construction
            verdict = verify_proof(NOBODY, proof_of(message))
            assert (verdict.request, verdict.refusal, verdict.detail) == (None, BAD_PROOF, reason)
            assert roster_of(proof_of(message)) == ()

    def test_control_case_decodes(self) -> None:
        """The unbroken fields decode to the request they came from (the table's baseline)."""
        assert ArmRequest.decode(fields()) == REQ
        assert roster_of(proof_of(fields())) == ("or-01", "or-02")


SCOPED = ArmRequest("smars", 7, 9, 7, ("or-01",), "lift", 10**12, "host:or-01", 4)


class TestNodeRefusal:
    """What the aggregator decides for a verified proof against the node's stored state."""

    @pytest.mark.parametrize(
        ("verdict", "node", "epoch", "want"),
        [
            (Verdict(REQ, ("alice", "bob")), "smars", 7, ("", "")),
            (Verdict(REQ, ("alice", "bob")), "other", 7,
             (WRONG_NODE, "signed for node 'smars' scope 'node'")),
            (Verdict(SCOPED, ("alice", "bob")), "smars", 7,
             (WRONG_NODE, "signed for node 'smars' scope 'host:or-01'")),
            (Verdict(REQ, ("alice", "bob")), "smars", 8,
             (WRONG_EPOCH, "signed for epoch 7, the state says 8")),
            (Verdict(REQ, ("alice",), ONE_OPERATOR, "one"), "smars", 7, (ONE_OPERATOR, "one")),
            (Verdict(None, refusal=NO_OPERATORS, detail="none"), "smars", 7,
             (NO_OPERATORS, "none")),
        ],
        ids=["ok", "other-node", "scoped-lift", "other-epoch", "one-operator", "unverified"],
    )  # fmt: skip
    def test_node_refusal_table(
        self, verdict: Verdict, node: str, epoch: int, want: tuple[str, str]
    ) -> None:
        """A node opens only for its own node-scope request at its own epoch, two signers."""
        assert node_refusal(verdict, node, epoch) == want


class TestRosterNames:
    """The roster an operator asks to sign."""

    def test_sorted_and_deduplicated(self) -> None:
        """Host names come back sorted, each once."""
        assert check_roster_names(["or-02", "or-01", "or-02"]) == ("or-01", "or-02")

    @pytest.mark.parametrize("bad", ["", "OR-01", "or 01", "-or", "x" * 64])
    def test_a_bad_name_is_refused(self, bad: str) -> None:
        """One invalid host name refuses the whole roster, naming it."""
        with pytest.raises(InvalidName, match="invalid host name"):
            check_roster_names(["or-01", bad])
