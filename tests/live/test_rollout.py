"""Rollouts, pure: which release each host may run, and what a stored record proves.

No Redis here: the decision (`core.proof.rollout.check`) by tables and properties, and the
verification of records signed with real throwaway operator keys (ssh-keygen).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.node.release import split
from killswitch.core.proof import rollout as ro
from killswitch.core.proof.armproof import ArmRequest, Proof, ProofError, verify_proof
from killswitch.core.proof.sshsig import Operators, parse_allowed_signers
from killswitch.ops.signing import ssh_sign
from killswitch.sim.operators import OperatorKeys, make_key

ROSTER = ["or-01", "or-02", "or-03"]
A, B, C = "a" * 64, "b" * 64, "c" * 64
NODE = "smars"


def canary(*hosts: str, phase: str = ro.CANARY) -> ro.Rollout:
    return ro.Rollout(1, phase, A, B, tuple(hosts), {})


class TestCheck:
    """The version vector with an approved release and a rollout."""

    @pytest.mark.parametrize(
        ("by_host", "approved", "rollout", "odd"),
        [
            # a canary: exactly the named hosts may run the new release
            ({"or-01": B, "or-02": A, "or-03": A}, A, canary("or-01"), None),
            ({"or-01": A, "or-02": A, "or-03": A}, A, canary("or-01"), None),
            ({"or-01": B, "or-02": B, "or-03": A}, A, canary("or-01"), {"or-02": B}),
            ({"or-01": C, "or-02": A, "or-03": A}, A, canary("or-01"), {"or-01": C}),
            ({"or-01": B, "or-02": B, "or-03": B}, A, canary("or-01"), {"or-02": B, "or-03": B}),
            # promoted: every host may run either
            ({"or-01": B, "or-02": A, "or-03": B}, A, canary("or-01", phase=ro.PROMOTED), None),
            ({"or-01": B, "or-02": C, "or-03": B}, A, canary("or-01", phase=ro.PROMOTED),
             {"or-02": C}),
            # no rollout (aborted, or never): the approved release only
            ({"or-01": B, "or-02": A, "or-03": A}, A, None, {"or-01": B}),
            ({"or-01": A, "or-02": A, "or-03": A}, A, None, None),
            # a unanimous "rollback" to a release nobody approved is a split
            ({"or-01": C, "or-02": C, "or-03": C}, A, None, {"or-01": C, "or-02": C, "or-03": C}),
            # nothing approved yet: one release across the roster, as before
            ({"or-01": C, "or-02": C, "or-03": C}, "", None, None),
            ({"or-01": C, "or-02": C, "or-03": A}, "", None, {"or-03": A}),
            # a host that never reported, or is off the roster, is not judged here
            ({"or-01": A, "or-09": C}, A, None, None),
        ],
    )  # fmt: skip
    def test_table(
        self,
        by_host: dict[str, str],
        approved: str,
        rollout: ro.Rollout | None,
        odd: dict[str, str] | None,
    ) -> None:
        """Each vector, approved release and rollout gives the odd hosts in the table."""
        cut = ro.check(ROSTER, by_host, approved, rollout)
        assert (None if cut is None else dict(cut.odd)) == odd

    @given(st.dictionaries(st.sampled_from(ROSTER), st.sampled_from([A, B, C, ""])))
    def test_nothing_approved_is_the_plain_version_vector(self, by_host: dict[str, str]) -> None:
        """With no approved release and no rollout, the check is exactly `release.split`."""
        assert ro.check(ROSTER, by_host, "", None) == split(ROSTER, by_host)

    @given(
        st.dictionaries(st.sampled_from(ROSTER), st.sampled_from([A, B, C])),
        st.sets(st.sampled_from(ROSTER), min_size=1),
        st.sampled_from([ro.CANARY, ro.PROMOTED]),
    )
    def test_odd_exactly_the_hosts_outside_what_they_may_run(
        self, by_host: dict[str, str], hosts: set[str], phase: str
    ) -> None:
        """A host is odd exactly when it runs a release the rollout does not allow it."""
        r = canary(*sorted(hosts), phase=phase)
        cut = ro.check(ROSTER, by_host, A, r)
        odd = {} if cut is None else dict(cut.odd)
        assert odd == {h: v for h, v in by_host.items() if v not in r.allowed(h)}
        if cut is not None:
            assert cut.majority == A and "rollout 1" in ro.describe(cut, r)

    def test_describe_a_rollback_names_the_approved_release(self) -> None:
        """The trip reason of a unanimous move names the hosts and the approved release."""
        cut = ro.check(ROSTER, dict.fromkeys(ROSTER, C), A, None)
        assert cut is not None
        text = ro.describe(cut, None)
        assert "or-01 runs cccc" in text and "approved release is aaaa" in text

    @pytest.mark.parametrize(
        ("by_host", "phase", "done"),
        [
            (dict.fromkeys(ROSTER, B), ro.PROMOTED, True),
            (dict.fromkeys(ROSTER, B), ro.CANARY, False),  # promotion is a signed step
            ({"or-01": B, "or-02": B}, ro.PROMOTED, False),  # or-03 never reported
            ({"or-01": B, "or-02": B, "or-03": A}, ro.PROMOTED, False),
        ],
    )
    def test_completed(self, by_host: dict[str, str], phase: str, done: bool) -> None:
        """A promoted rollout completes only once every roster host reports the new release."""
        assert ro.completed(ROSTER, by_host, canary("or-01", phase=phase)) is done

    @pytest.mark.parametrize(
        ("by_host", "approved", "hosts", "start"),
        [
            ({"or-01": C, "or-02": C, "or-03": C}, A, ["or-01"], A),
            ({"or-01": B, "or-02": A, "or-03": A}, "", ["or-01"], A),
            ({"or-01": B, "or-02": C, "or-03": A}, "", ["or-01"], ""),
            ({"or-01": A, "or-02": A}, "", ["or-01"], ""),  # or-03 never reported
        ],
    )
    def test_start_release(
        self, by_host: dict[str, str], approved: str, hosts: list[str], start: str
    ) -> None:
        """A rollout starts from the approved release, else from what the rest all run."""
        assert ro.start_release(ROSTER, by_host, approved, hosts) == start


def request(step: str = ro.BEGIN, **kw: object) -> ro.RolloutRequest:
    base = ro.RolloutRequest(NODE, step, 1, A, B, ("or-01",), "canary", 2**40)
    return replace(base, **kw)  # type: ignore[arg-type]


class TestRequest:
    """The signed message: canonical, bounded, and never an arm."""

    def test_round_trip(self) -> None:
        """A request decodes to itself."""
        req = request(hosts=("or-01", "or-02"))
        assert ro.RolloutRequest.decode(req.encode()) == req

    @pytest.mark.parametrize(
        ("kw", "word"),
        [
            ({"step": "launch"}, "unknown rollout step"),
            ({"seq": 0}, "out of range"),
            ({"to_release": "b" * 63}, "SHA-256"),
            ({"to_release": A}, "the release the node runs"),
            ({"hosts": ()}, "non-empty"),
            ({"hosts": ("or-02", "or-01")}, "sorted"),
        ],
    )
    def test_refused(self, kw: dict[str, Any], word: str) -> None:
        """A message that can never be a valid step does not decode, saying why."""
        with pytest.raises(ProofError, match=word):
            ro.RolloutRequest.decode(request(**kw).encode())

    def test_not_canonical_refused(self) -> None:
        """The same fields in another byte form are refused (one message, one signature)."""
        data = request().encode().replace(b'"seq":1', b'"seq": 1')
        with pytest.raises(ProofError, match="canonical"):
            ro.RolloutRequest.decode(data)

    def test_an_arm_is_no_rollout_and_a_rollout_no_arm(self) -> None:
        """Each kind of message refuses the other: a signature never crosses over."""
        arm = ArmRequest(
            NODE, 0, 0, 1, ("or-01",), "", 2**40, boots=(("or-01", "b0" * 8),)
        ).encode()
        with pytest.raises(ProofError, match="rollout"):
            ro.RolloutRequest.decode(arm)
        with pytest.raises(ProofError, match="arm"):
            ArmRequest.decode(request().encode())


@pytest.fixture(scope="module")
def mallory(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_key(tmp_path_factory.mktemp("mallory") / "mallory", "mallory"))


def operators_of(keys: OperatorKeys) -> Operators:
    return parse_allowed_signers(keys.file.read_text())


async def signed(keys: OperatorKeys, req: ro.RolloutRequest, *who: str) -> str:
    message = req.encode()
    sigs = [await ssh_sign(keys.key(w) if w in keys.keys else w, message) for w in who]
    return Proof(message, tuple(sigs)).to_text()


class TestVerifyRecord:
    """Only a record two operators signed exempts any host."""

    async def test_two_operators_prove_a_canary(self, operator_keys: OperatorKeys) -> None:
        """A begin signed by alice and bob is a canary rollout with the signed terms."""
        rec = {"seq": "1", "phase": ro.CANARY, "approved": A,
               "begin": await signed(operator_keys, request(), "alice", "bob"),
               "hosts": "or-01,or-02,or-03"}  # fmt: skip
        got, refusal, _ = ro.verify_record(operators_of(operator_keys), NODE, rec)
        assert refusal == "" and got is not None
        assert got.hosts == ("or-01",)  # the signed hosts, not the record's plain field
        assert (got.from_release, got.to_release) == (A, B)
        assert got.signed_by == {ro.BEGIN: ("alice", "bob")}

    async def test_promoted_needs_a_signed_promotion_of_the_same_rollout(
        self, operator_keys: OperatorKeys
    ) -> None:
        """Promoted: the begin and a promotion of the same terms, each by two operators."""
        ops = operators_of(operator_keys)
        begin = await signed(operator_keys, request(), "alice", "bob")
        promote = await signed(operator_keys, request(ro.PROMOTE), "bob", "alice")
        rec = {"seq": "1", "phase": ro.PROMOTED, "begin": begin, "promote": promote}
        got, refusal, _ = ro.verify_record(ops, NODE, rec)
        assert refusal == "" and got is not None and got.phase == ro.PROMOTED
        assert ro.verify_record(ops, NODE, {**rec, "promote": ""})[1] == ro.UNSIGNED
        other = await signed(operator_keys, request(ro.PROMOTE, hosts=("or-02",)), "alice", "bob")
        assert ro.verify_record(ops, NODE, {**rec, "promote": other})[1] == ro.MISMATCH

    async def test_forged_records_exempt_nothing(
        self, operator_keys: OperatorKeys, mallory: str
    ) -> None:
        """Unsigned, one operator twice, an outsider, an arm proof, another node, another
        number or another starting release: no rollout, each with its reason."""
        ops = operators_of(operator_keys)
        one = await signed(operator_keys, request(), "alice", "alice")
        outsider = await signed(operator_keys, request(), "alice", mallory)
        good = await signed(operator_keys, request(), "alice", "bob")
        arm_msg = ArmRequest(
            NODE, 0, 0, 1, ("or-01",), "", 2**40, boots=(("or-01", "b0" * 8),)
        ).encode()
        arm = Proof(arm_msg, (await ssh_sign(operator_keys.key("alice"), arm_msg),
                              await ssh_sign(operator_keys.key("bob"), arm_msg))).to_text()  # fmt: skip
        assert verify_proof(ops, arm).ok  # a valid arm proof ...
        cases = [
            ({"seq": "1", "phase": ro.CANARY}, ro.UNSIGNED),
            ({"seq": "1", "phase": ro.CANARY, "begin": "junk"}, ro.BAD_PROOF),
            ({"seq": "1", "phase": ro.CANARY, "begin": one}, ro.ONE_OPERATOR),
            ({"seq": "1", "phase": ro.CANARY, "begin": outsider}, ro.BAD_SIGNATURE),
            ({"seq": "1", "phase": ro.CANARY, "begin": arm}, ro.BAD_PROOF),  # ... is no rollout
            ({"seq": "2", "phase": ro.CANARY, "begin": good}, ro.MISMATCH),
            ({"seq": "1", "phase": ro.CANARY, "begin": good, "approved": C}, ro.MISMATCH),
        ]
        for rec, word in cases:
            got, refusal, detail = ro.verify_record(ops, NODE, rec)
            assert (got, refusal) == (None, word), (rec, detail)
        assert (
            ro.verify_record(ops, "other", {"seq": "1", "phase": ro.CANARY, "begin": good})[1]
            == ro.MISMATCH
        )
        assert (
            ro.verify_record(None, NODE, {"seq": "1", "phase": ro.CANARY, "begin": good})[1]
            == ro.NO_OPERATORS
        )

    @pytest.mark.parametrize("phase", [ro.ABORTED, ro.COMPLETE, "", "junk"])
    async def test_finished_records_exempt_nothing(
        self, operator_keys: OperatorKeys, phase: str
    ) -> None:
        """An aborted or complete record (or junk) proves no rollout, whatever it holds."""
        good = await signed(operator_keys, request(), "alice", "bob")
        rec = {"seq": "1", "phase": phase, "begin": good}
        assert ro.verify_record(operators_of(operator_keys), NODE, rec) == (None, "", "")


class TestFinished:
    """What the audit trail says about rollouts that ended."""

    def test_highest_aborted_or_complete(self) -> None:
        """Only abort and complete entries count; refusals and junk numbers do not."""
        entries = [
            {"action": "rollout_begin", "rollout": "7"},
            {"action": "rollout_abort", "rollout": "2"},
            {"action": "rollout_complete", "rollout": "3"},
            {"action": "refused", "rollout": "9"},
            {"action": "rollout_abort", "rollout": "1e9"},
            {"action": "rollout_abort", "rollout": "9" * 20},
        ]
        assert ro.finished(entries) == 3
        assert ro.finished([]) == 0
