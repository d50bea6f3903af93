"""The network fence's pure parts (core.enforce.fence): endpoints, the ruleset built from the settings,
what a read-back listing proves, refusals into decisions, the capability check, and the
fence fields of `kill`/`status`. No nft, no Redis."""

from __future__ import annotations

from typing import Any

import pytest

from killswitch.core.enforce import fence as f
from killswitch.core.enforce.fence import Endpoint, FenceError, FenceSpec, Listing
from killswitch.core.node.roster import fence_report

SPEC = FenceSpec(
    (f.parse_endpoint("10.0.0.5:9878"), f.parse_endpoint("[2001:db8::5]:443")), (0, 1001)
)


def listing_of(
    spec: FenceSpec, *, killed: bool = False, refused: int = 0, bypass: Any = ()
) -> dict[str, Any]:
    """The `nft -j list table` output of a correct install of `spec`."""

    def obj(kind: str, **kw: Any) -> dict[str, Any]:
        return {kind: {"family": "inet", "table": "killswitch", **kw}}

    rules = {"out": 2, "inp": 2, "guard": 4, "kill": int(killed), "killin": int(killed)}
    items: list[dict[str, Any]] = [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "killswitch", "handle": 1}},
        obj("counter", name="refused", packets=refused, bytes=60 * refused),
        obj("counter", name="killed", packets=0, bytes=0),
        obj("set", name="allow", type="uid", elem=list(spec.allow_uids)),
        obj("set", name="ep4", elem=[{"concat": [str(e.addr), e.port]} for e in spec.v4]),
        obj("set", name="ep6", elem=[{"concat": [str(e.addr), e.port]} for e in spec.v6]),
        obj("set", name="bypass", type="uid", **({"elem": list(bypass)} if bypass else {})),
        obj("chain", name="out", hook="output"),
        obj("chain", name="inp", hook="input"),
        *(obj("chain", name=c) for c in ("guard", "kill", "killin")),
    ]
    handle = 10
    for chain, n in rules.items():
        for _ in range(n):
            handle += 1
            items.append(obj("rule", chain=chain, handle=handle, expr=[]))
    return {"nftables": items}


class TestEndpoints:
    @pytest.mark.parametrize(
        ("text", "addr", "port"),
        [
            ("10.0.0.5:9878", "10.0.0.5", 9878),
            ("[2001:db8::5]:443", "2001:db8::5", 443),
            (" 127.0.0.1:1 ", "127.0.0.1", 1),
        ],
    )
    def test_parsed(self, text: str, addr: str, port: int) -> None:
        """ADDR:PORT and [IPv6]:PORT parse into an address and a port."""
        e = f.parse_endpoint(text)
        assert (str(e.addr), e.port) == (addr, port)

    @pytest.mark.parametrize(
        ("text", "why"),
        [
            ("venue.example:9878", "not an IP address"),
            ("2001:db8::5:443", "brackets"),
            ("10.0.0.5", "not ADDR:PORT"),
            ("10.0.0.5:0", "not ADDR:PORT"),
            ("10.0.0.5:65536", "not ADDR:PORT"),
            ("10.0.0.5:x", "not ADDR:PORT"),
        ],
    )
    def test_refused(self, text: str, why: str) -> None:
        """Names, unbracketed IPv6 and bad ports are refused, saying why."""
        with pytest.raises(FenceError, match=why):
            f.parse_endpoint(text)

    def test_round_trip(self) -> None:
        """An endpoint prints as it is written (the form `ss` filters take)."""
        assert [str(e) for e in SPEC.endpoints] == ["10.0.0.5:9878", "[2001:db8::5]:443"]

    @pytest.mark.parametrize(
        ("value", "ok"),
        [("0", True), ("4294967294", True), ("-1", False), ("4294967295", False), ("x", False)],
    )
    def test_uid(self, value: str, ok: bool) -> None:
        """A uid is 0..2^32-2 (2^32-1 is no uid)."""
        if ok:
            assert f.parse_uid(value) == int(value)
        else:
            with pytest.raises(ValueError):
                f.parse_uid(value)

    def test_spec_needs_endpoints_and_uids(self) -> None:
        """A fence with no endpoint, or no allowed uid, is refused."""
        with pytest.raises(FenceError, match="no endpoint"):
            FenceSpec((), (0,))
        with pytest.raises(FenceError, match="at least one uid"):
            FenceSpec(SPEC.endpoints, ())


class TestRuleset:
    def cmds(self, doc: dict[str, Any]) -> list[tuple[str, str, str]]:
        out = []
        for c in doc["nftables"]:
            ((verb, body),) = c.items()
            ((kind, obj),) = body.items()
            out.append((verb, kind, obj.get("name") or obj.get("chain", "")))
        return out

    def test_standing_replaces_sets_and_rules_but_keeps_kill_chains(self) -> None:
        """The standing install flushes its sets and chains but never the kill chains nor the
        counters, so a kill fence and the counts survive a restart."""
        cmds = self.cmds(f.standing(SPEC))
        flushed = {name for verb, _, name in cmds if verb == "flush"}
        assert flushed == {"allow", "ep4", "ep6", "out", "inp", "guard"}
        assert ("add", "counter", "refused") in cmds and ("add", "set", "bypass") in cmds
        assert not any(verb == "delete" for verb, _, _ in cmds)

    def test_bypass_set_found_is_not_added_again(self) -> None:
        """A table found with its `bypass` set: the set is not added again (nft 1.0 could not
        name its dynamic flag in JSON, and adding it without fails)."""
        found = f.parse_listing(listing_of(SPEC))
        assert ("add", "set", "bypass") not in self.cmds(f.standing(SPEC, found))

    def test_elements(self) -> None:
        """The allowed uids and the endpoints by family go into their sets."""
        adds = {
            c["add"]["element"]["name"]: c["add"]["element"]["elem"]
            for c in f.standing(SPEC)["nftables"]
            if "element" in c.get("add", {})
        }
        assert adds == {
            "allow": [0, 1001],
            "ep4": [{"concat": ["10.0.0.5", 9878]}],
            "ep6": [{"concat": ["2001:db8::5", 443]}],
        }

    def test_guard_judges_syns_by_uid_and_names_the_refused(self) -> None:
        """`guard` runs the kill chain first, lets non-SYN packets pass, accepts allowed uids,
        and adds any other uid to `bypass`, counts and resets."""
        guard = [c["add"]["rule"]["expr"] for c in f.standing(SPEC)["nftables"]
                 if c.get("add", {}).get("rule", {}).get("chain") == "guard"]  # fmt: skip
        assert guard[0] == [{"jump": {"target": "kill"}}]
        assert guard[1][0]["match"]["right"] == "syn" and guard[1][1] == {"accept": None}
        assert guard[2][0]["match"]["right"] == "@allow"
        assert guard[3][1:] == [
            f._ADD_UID,
            {"counter": "refused"},
            {"reject": {"type": "tcp reset"}},
        ]

    def test_kill_fence_and_lift(self) -> None:
        """The kill fence fills both kill chains (counted, reset); the lift empties them."""
        kill = self.cmds(f.kill_fence())
        assert kill == [("flush", "chain", "kill"), ("flush", "chain", "killin"),
                        ("add", "rule", "kill"), ("add", "rule", "killin")]  # fmt: skip
        assert self.cmds(f.lift()) == [("flush", "chain", "kill"), ("flush", "chain", "killin")]

    def test_cut_filter(self) -> None:
        """`ss -K` is given every endpoint."""
        assert f.cut_filter(SPEC.endpoints) == "( dst 10.0.0.5:9878 or dst [2001:db8::5]:443 )"

    def test_forget_bypass(self) -> None:
        """Read uids are deleted from the set, once each."""
        (cmd,) = f.forget_bypass([7, 7, 3])["nftables"]
        assert cmd["delete"]["element"]["elem"] == [3, 7]


class TestProof:
    @pytest.mark.parametrize("killed", [False, True])
    def test_a_correct_install_is_proven(self, killed: bool) -> None:
        """A listing of exactly the intended table proves it, kill fence up or down."""
        listing = f.parse_listing(listing_of(SPEC, killed=killed))
        assert listing.killed is killed
        assert f.problems(listing, SPEC, killed=killed) == []

    @pytest.mark.parametrize(
        ("change", "problem"),
        [
            (lambda d: {"nftables": []}, "table inet killswitch is missing"),
            (lambda d: drop(d, "rule", "guard"), "chain guard has 3 rules, not 4"),
            (lambda d: drop(d, "chain", "inp"), "chain inp is not hooked on input"),
            (lambda d: setv(d, "allow", [0]), "set allow does not hold the allowed uids"),
            (lambda d: setv(d, "ep4", []), "sets ep4/ep6 do not hold the fenced endpoints"),
            (lambda d: drop(d, "counter", "killed"), "counter killed is missing"),
        ],
    )
    def test_what_is_not_proven_is_named(self, change: Any, problem: str) -> None:
        """Each thing missing or different from the intended table is named."""
        listing = f.parse_listing(change(listing_of(SPEC)))
        assert problem in f.problems(listing, SPEC, killed=False)

    def test_kill_fence_up_or_down_is_checked(self) -> None:
        """A kill fence that should be up and is not, or the reverse, is named."""
        down, up = (f.parse_listing(listing_of(SPEC, killed=k)) for k in (False, True))
        assert f.problems(down, SPEC, killed=True) == ["the kill fence is not in place"]
        assert f.problems(up, SPEC, killed=False) == ["the kill fence is still in place"]

    def test_other_tables_are_ignored(self) -> None:
        """Objects of another table or family never count as ours."""
        doc = listing_of(SPEC)
        doc["nftables"].append(
            {"rule": {"family": "inet", "table": "other", "chain": "guard", "handle": 99}}
        )
        doc["nftables"].append(
            {"counter": {"family": "ip", "table": "killswitch", "name": "refused", "packets": 9}}
        )
        listing = f.parse_listing(doc)
        assert f.problems(listing, SPEC, killed=False) == [] and listing.refused == 0


def drop(doc: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """`doc` without the first `kind` object named (or, for a rule, in chain) `name`."""
    items = doc["nftables"]
    for i, item in enumerate(items):
        body = item.get(kind)
        if body and (body.get("name") == name or body.get("chain") == name):
            return {"nftables": items[:i] + items[i + 1 :]}
    raise AssertionError(f"no {kind} {name}")


def setv(doc: dict[str, Any], name: str, elems: list[Any]) -> dict[str, Any]:
    for item in doc["nftables"]:
        if item.get("set", {}).get("name") == name:
            item["set"]["elem"] = elems
    return doc


class TestRefusals:
    @pytest.mark.parametrize(
        ("last", "now", "uids", "want"),
        [
            (None, 5, (), None),  # the first read sets the baseline
            (5, 5, (), None),
            (5, 3, (), None),  # reset by hand: a new baseline, not a bypass
            (5, 7, (4242,), f.Bypass(2, (4242,))),
            (0, 1, (), f.Bypass(1, ())),  # counted, but the uid was read away: "unknown"
        ],
    )
    def test_refused_since(
        self, last: int | None, now: int, uids: tuple[int, ...], want: Any
    ) -> None:
        """New refusals since the last read, with the uids that made them."""
        listing = f.parse_listing(listing_of(SPEC, refused=now, bypass=uids))
        assert f.refused_since(last, listing) == want

    def test_named(self) -> None:
        """The uids name a bypass; none read means `unknown`."""
        assert f.Bypass(2, (7, 9)).named() == "7,9" and f.Bypass(1, ()).named() == "unknown"


class TestCapability:
    @pytest.mark.parametrize(
        ("cap_eff", "ok"),
        [
            ("000001ffffffffff", True),
            ("0000000000001000", True),
            ("0000000000000fff", False),
            ("00000000a80425fb", False),
            ("zz", False),
        ],
    )
    def test_cap_net_admin_bit(self, cap_eff: str, ok: bool) -> None:
        """CAP_NET_ADMIN is bit 12 of CapEff."""
        assert f.has_cap(f"Name:\tx\nCapInh:\t0\nCapEff:\t{cap_eff}\n") is ok

    def test_no_capeff_line(self) -> None:
        """Without a CapEff line nothing is assumed."""
        assert f.has_cap("Name:\tx\n") is False


class TestFenceView:
    ROSTER = ("a", "b", "c", "d")

    def reports(self) -> dict[str, dict[str, str]]:
        return {
            "a": {"fence": "killed", "fence_epoch": "7"},
            "b": {"fence": "killed", "fence_epoch": "6"},  # an older kill's
            "c": {"fence": "failed", "fence_problem": "nft: no such table"},
            "d": {},
        }

    def test_requested(self) -> None:
        """A kill that asked for the fence: only hosts proven for this epoch are fenced; every
        other roster host is named with why."""
        fenced, failed = f.fence_view(self.ROSTER, "KILLED", 7, True, self.reports())
        assert fenced == ["a"]
        assert failed == {"b": "kill fence not proven", "c": "nft: no such table",
                          "d": "no --fence on this host"}  # fmt: skip

    def test_not_requested(self) -> None:
        """Without the request only a failed fence is named (a --fence-on-kill host still
        lists as fenced)."""
        fenced, failed = f.fence_view(self.ROSTER, "KILLED", 7, False, self.reports())
        assert (fenced, failed) == (["a"], {"c": "nft: no such table"})

    def test_armed(self) -> None:
        """An armed node has no fenced host; a failed standing fence is still named."""
        assert f.fence_view(self.ROSTER, "ARMED", 7, False, self.reports()) == (
            [], {"c": "nft: no such table"},
        )  # fmt: skip

    @pytest.mark.parametrize(
        ("report", "want"),
        [
            ({}, None),
            ({"fence": "junk"}, None),
            ({"fence": "standing", "fence_refused": "3"},
             {"state": "standing", "epoch": 0, "refused": 3, "problem": "", "bypass": ""}),
            ({"fence": "killed", "fence_epoch": "9", "fence_refused": "x" * 30, "bypass": "8 4242"},
             {"state": "killed", "epoch": 9, "refused": 0, "problem": "", "bypass": "8 4242"}),
        ],
    )  # fmt: skip
    def test_fence_report(self, report: dict[str, str], want: Any) -> None:
        """A host's report becomes hosts[H].fence; junk reads as nothing or 0."""
        assert fence_report(report) == want


def test_endpoint_order() -> None:
    """Endpoints sort by family, address, port (the sets and filters are stable)."""
    a, b = Endpoint(f.parse_endpoint("10.0.0.2:1").addr, 1), f.parse_endpoint("10.0.0.1:2")
    assert sorted([a, b]) == [b, a]
    assert Listing().refused == 0 and Listing().bypass_uids == ()
