"""Lifting a scoped kill, pure: a host drops a scope only on a verified lift proof."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.node.roster import host_status
from killswitch.core.node.scope import (
    REPLAYED_LIFT,
    UNSIGNED_LIFT,
    Held,
    LiftCheck,
    Scopes,
    enforce,
    parse_scopes,
)
from killswitch.core.proof.armproof import (
    BAD_SIGNATURE,
    EXPIRED,
    ONE_OPERATOR,
    UNPROVEN,
    WRONG_NODE,
    WRONG_SCOPE,
    ArmRequest,
    Verdict,
    lift_fresh_refusal,
    lift_refusal,
)

H, S = "host:or-02", "symbol:KCG"


def read(ver: int, *fields: str, lifts: dict[str, str] | None = None) -> Scopes:
    h = {"_ver": str(ver), **dict.fromkeys(fields, "{}")}
    h.update({f"lift:{f}": p for f, p in (lifts or {}).items()})
    return parse_scopes(h)


def held(ver: int, since: dict[str, int]) -> Held:
    return Held(read(ver, *since), since)


def signed(proofs: dict[str, tuple[int, str]]) -> LiftCheck:
    """A verifier that answers from a table keyed by proof text (the sidecar's is ArmCheck)."""

    def check(scope: str, proof: str) -> tuple[int, str]:
        return proofs.get(proof, (0, BAD_SIGNATURE))

    return check


GOOD = signed({"p5": (5, ""), "p3": (3, ""), "bad": (9, BAD_SIGNATURE), "one": (9, ONE_OPERATOR)})


class TestReportedKept:
    @pytest.mark.parametrize(
        ("raw", "kept"),
        [("", ()), ("host:a symbol:B", ("host:a", "symbol:B")), ("  host:a  ", ("host:a",))],
        ids=["none", "two", "padded"],
    )
    def test_host_status_reads_scope_kept(self, raw: str, kept: tuple[str, ...]) -> None:
        """A host's reported `scope_kept` (space separated) is listed in its status."""
        s = host_status("or-01", {"scope_kept": raw}, {}, 0)
        assert s.scope_kept == kept and s.to_json()["scope_kept"] == list(kept)


class TestParseLifts:
    def test_lift_fields_are_proofs_not_scopes(self) -> None:
        """`lift:<kind>:<value>` fields are read as lift proofs, never as active scopes."""
        s = parse_scopes({"_ver": "3", "lift:host:a": "P", "symbol:X": "{}"})
        assert s.lifts == {"host:a": "P"} and s.hosts == frozenset()
        assert [x.field for x in s.active] == ["symbol:X"]


class TestEnforce:
    @pytest.mark.parametrize(
        ("before", "after", "fields", "kept", "since"),
        [
            (held(3, {H: 3}), read(5), [H], {H: UNSIGNED_LIFT}, {H: 3}),
            (held(3, {H: 3}), read(5, lifts={H: "p3"}), [], {}, {}),
            (held(3, {H: 3}), read(5, lifts={H: "p5"}), [], {}, {}),
            (held(4, {H: 4}), read(5, lifts={H: "p3"}), [H], {H: REPLAYED_LIFT}, {H: 4}),
            (held(3, {H: 3}), read(5, lifts={H: "bad"}), [H], {H: BAD_SIGNATURE}, {H: 3}),
            (held(3, {H: 3}), read(5, lifts={H: "one"}), [H], {H: ONE_OPERATOR}, {H: 3}),
            (held(3, {H: 3}), read(5, lifts={S: "p5"}), [H], {H: UNSIGNED_LIFT}, {H: 3}),
            (held(3, {H: 3}), read(5, H), [H], {}, {H: 5}),
            (held(3, {H: 3}), read(5, S), [H, S], {H: UNSIGNED_LIFT}, {H: 3, S: 5}),
            (Held(), read(2, H, lifts={S: "p5"}), [H], {}, {H: 2}),
            (held(3, {H: 3, S: 2}), read(5, lifts={H: "p5", S: "p3"}), [], {}, {}),
        ],
        ids=["vanished-unsigned", "lift-at-seen-ver", "lift-above-seen-ver", "replayed-older",
             "bad-signature", "one-operator", "proof-of-another-scope", "still-listed",
             "new-scope-old-kept", "first-read", "two-lifts"],
    )  # fmt: skip
    def test_table(
        self,
        before: Held,
        after: Scopes,
        fields: list[str],
        kept: dict[str, str],
        since: dict[str, int],
    ) -> None:
        """What a host enforces after a read, what it keeps without a lift and why, and the
        newest version it saw each scope listed at."""
        out = enforce(before, after, GOOD)
        assert [s.field for s in out.scopes.active] == fields
        assert (dict(out.kept), dict(out.since), out.scopes.ver) == (kept, since, after.ver)

    def test_kept_scope_still_blocks(self) -> None:
        """A kept host or symbol scope is in what the host enforces, not only in `kept`."""
        out = enforce(held(3, {H: 3, S: 3}), read(4), GOOD)
        assert out.scopes.for_host("or-02") == (True, frozenset({"KCG"}))

    def test_kept_then_relisted_then_lifted(self) -> None:
        """A kept scope killed again is listed; a lift signed after that new kill drops it."""
        out = enforce(held(3, {H: 3}), read(4), GOOD)
        out = enforce(out, read(5, H), GOOD)
        assert out.since == {H: 5} and out.kept == {}
        assert enforce(out, read(6, lifts={H: "p3"}), GOOD).kept == {H: REPLAYED_LIFT}
        assert enforce(out, read(6, lifts={H: "p5"}), GOOD).scopes.active == ()

    @given(
        st.dictionaries(st.sampled_from([H, S, "host:a", "symbol:B"]), st.integers(0, 9)),
        st.lists(st.sampled_from([H, S, "host:a", "symbol:B"]), unique=True),
        st.integers(0, 12),
    )
    def test_without_valid_proofs_nothing_is_lifted(
        self, since: dict[str, int], listed: list[str], ver: int
    ) -> None:
        """With every proof refused, a host enforces every scope it held and every scope read."""
        before = held(max(since.values(), default=0), since)
        lifts = dict.fromkeys(since, "bad")
        out = enforce(before, read(ver, *listed, lifts=lifts), GOOD)
        assert {s.field for s in out.scopes.active} == set(since) | set(listed)
        assert set(out.kept) == set(since) - set(listed)

    @given(
        st.dictionaries(st.sampled_from([H, S, "host:a", "symbol:B"]), st.integers(0, 9)),
        st.lists(st.sampled_from([H, S, "host:a", "symbol:B"]), unique=True),
    )
    def test_valid_fresh_proofs_give_exactly_the_read(
        self, since: dict[str, int], listed: list[str]
    ) -> None:
        """With a valid proof newer than anything seen for every scope, the read is enforced."""
        before = held(max(since.values(), default=0), since)
        out = enforce(before, read(10, *listed, lifts=dict.fromkeys(since, "p10")),
                      signed({"p10": (10, "")}))  # fmt: skip
        assert [s.field for s in out.scopes.active] == sorted(listed) and out.kept == {}


def verdict(node: str = "n1", scope: str = H, refusal: str = "") -> Verdict:
    req = ArmRequest(node=node, lifts_epoch=2, lifts_ver=1, epoch=2, roster=("or-02",),
                     reason="", expires_ms=9, scope=scope, scope_ver=4)  # fmt: skip
    return Verdict(req, ("alice", "bob"), refusal)


class TestLiftRefusal:
    @pytest.mark.parametrize(
        ("v", "word"),
        [
            (verdict(), ""),
            (verdict(node="n2"), WRONG_NODE),
            (verdict(scope="host:or-03"), WRONG_SCOPE),
            (verdict(scope="node"), WRONG_SCOPE),
            (verdict(refusal=ONE_OPERATOR), ONE_OPERATOR),
            (Verdict(None, refusal=BAD_SIGNATURE), BAD_SIGNATURE),
        ],
        ids=["exact", "other-node", "other-scope", "node-arm", "one-operator", "bad-signature"],
    )
    def test_binding(self, v: Verdict, word: str) -> None:
        """A verified proof lifts only the scope and node it names, signed by two operators."""
        assert lift_refusal(v, "n1", H)[0] == word

    def test_request_round_trip(self) -> None:
        """A scoped lift request encodes its scope and the scopes version it lifts."""
        v = verdict()
        assert v.request is not None
        d = json.loads(v.request.encode())
        assert (d["scope"], d["scope_ver"]) == (H, 4)


class TestLiftFreshness:
    """`lift_fresh_refusal`: a lift opens a host only for its boot and before it expires."""

    @staticmethod
    def req(scope: str, boots: tuple[tuple[str, str], ...] = (), expires: int = 1000) -> ArmRequest:
        return ArmRequest(
            node="n", lifts_epoch=3, lifts_ver=5, epoch=3, roster=("h1", "h2"), reason="r",
            expires_ms=expires, scope=scope, scope_ver=7, boots=boots,
        )  # fmt: skip

    @pytest.mark.parametrize(
        ("scope", "boots", "boot", "now", "want"),
        [
            ("host:h1", (("h1", "b1"),), "b1", 999, ""),
            ("host:h1", (("h1", "b1"),), "b1", 1000, ""),
            ("host:h1", (("h1", "b1"),), "b1", 1001, EXPIRED),
            ("host:h1", (("h1", "b0"),), "b1", 999, UNPROVEN),
            ("host:h1", (), "b1", 999, UNPROVEN),
            ("host:h1", (("h1", "b1"),), "", 999, UNPROVEN),
            ("host:h1", (("h2", "b1"),), "b1", 999, UNPROVEN),
            ("host:h2", (("h2", "b9"),), "b1", 5000, ""),  # another host's scope opens nothing
            ("symbol:KCG", (), "b1", 1000, ""),
            ("symbol:KCG", (), "b1", 1001, EXPIRED),
        ],
    )
    def test_table(
        self, scope: str, boots: tuple[tuple[str, str], ...], boot: str, now: int, want: str
    ) -> None:
        """Each row: the refusal word a host (h1, boot `boot`, clock `now`) gives the lift."""
        assert lift_fresh_refusal(self.req(scope, boots), "h1", boot, now)[0] == want
