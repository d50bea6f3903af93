"""`status`'s exit code: which roster hosts do not prove the node's state (pure table), and
the verb on real sidecars (a frozen host makes `status` and `status --fleet` exit 3)."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from killswitch.core.node.health import disagreements
from killswitch.core.node.roster import quorum
from kstest import Fleet, wait_until

NOW = 1_000_000


def report(gate: str = "closed", view: str = "KILLED", age_ms: int | None = 10) -> dict[str, str]:
    if age_ms is None:
        return {}
    return {"ts_ms": str(NOW - age_ms), "gate": gate, "view": view, "max_epoch": "7"}


CONFIRM = {"epoch": "7", "ver": "1", "applied_ms": str(NOW - 5)}


def judge(
    state: str,
    reports: dict[str, dict[str, str]],
    confirmed: tuple[str, ...] = (),
    scoped: tuple[str, ...] = (),
    unlisted_open: tuple[str, ...] = (),
) -> dict[str, str]:
    roster = sorted(reports)
    confirms = dict.fromkeys(confirmed, CONFIRM)
    q = quorum(roster, 7, 1, reports, confirms, NOW, state)
    return disagreements(state, q, scoped, unlisted_open)


class TestDisagreements:
    """Each state's rule for one host, and what is named."""

    @pytest.mark.parametrize(
        ("state", "rep", "confirmed", "scoped", "want"),
        [
            ("KILLED", report(), True, False, None),
            ("KILLED", report(), False, False, "unconfirmed"),
            ("KILLED", report(gate="open", view="ARMED"), True, False, "open while KILLED"),
            ("KILLED", report(age_ms=5_000), True, False, "stale: silent for 5.0s"),
            ("KILLED", report(age_ms=None), False, False, "missing: has never reported"),
            ("ARMED", report(gate="open", view="ARMED"), False, False, None),
            ("ARMED", report(view="ARMED"), False, False, "blocking while ARMED (ARMED)"),
            ("ARMED", report(view="KILLED"), False, True, None),
            ("ARMED", report(gate="open", view="ARMED"), False, True, "open though a scoped"),
            ("UNARMED", report(view="UNARMED"), False, False, None),
            ("UNARMED", report(gate="open", view="ARMED"), False, False, "open while UNARMED"),
            ("JUNK", report(), True, False, "node state unreadable"),
        ],
    )  # fmt: skip
    def test_one_host(
        self, state: str, rep: dict[str, str], confirmed: bool, scoped: bool, want: str | None
    ) -> None:
        """A host agrees, or is named with the first reason that applies."""
        got = judge(state, {"h1": rep}, ("h1",) if confirmed else (), ("h1",) if scoped else ())
        if want is None:
            assert got == {}
        else:
            assert got["h1"].startswith(want), got

    def test_open_unlisted_host_is_named_unless_armed(self) -> None:
        """An off-roster host with an open gate spoils a KILLED node's proof, not an ARMED one's."""
        reports = {"h1": report()}
        assert judge("KILLED", reports, ("h1",), (), ("zz",)) == {
            "zz": "open while KILLED, not on the roster"
        }
        assert judge("ARMED", {"h1": report("open", "ARMED")}, (), (), ("zz",)) == {}

    def test_every_bad_host_is_named(self) -> None:
        """Two bad hosts of three: both named, the good one not."""
        reports = {"a": report(), "b": report(age_ms=9_000), "c": report(gate="open")}
        assert set(judge("KILLED", reports, ("a", "b", "c"))) == {"b", "c"}


HOSTS = ["or-01", "or-02", "or-03"]


@pytest.fixture
def three(redis_url: str, node: str) -> Iterator[Fleet]:
    f = Fleet(redis_url, node, HOSTS)
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(20)
        yield f
    finally:
        f.stop()


class TestStatusExitCodes:
    """`status` and `status --fleet` on real sidecars: 0 when every host agrees, else 3 naming them."""

    def test_frozen_host_makes_status_exit_3_naming_it(self, three: Fleet) -> None:
        """ARMED and all open: 0; or-02 frozen (SIGSTOP): 3 naming node/or-02 as stale; resumed: 0."""
        three.arm()
        wait_until(lambda: three.cli_json("status")[0] == 0, 20, 0.05, "all three open")
        three.sidecars["or-02"].send(signal.SIGSTOP)
        try:
            wait_until(lambda: three.cli_json("status")[0] == 3, 20, 0.05, "or-02 stale")
            code, rep = three.cli_json("status")
            assert code == 3 and list(rep["disagree"]) == ["or-02"], rep
            assert rep["disagree"]["or-02"].startswith("stale"), rep
            res = three.cli("status")
            assert res.returncode == 3
            assert f"{three.node}/or-02: stale" in res.stdout + res.stderr
            fleet = three.cli("status", "--fleet", "--json")
            assert fleet.returncode == 3
            assert f"{three.node}/or-02: stale" in fleet.stderr
        finally:
            three.sidecars["or-02"].send(signal.SIGCONT)
        wait_until(lambda: three.cli_json("status")[0] == 0, 20, 0.05, "or-02 back")

    def test_killed_and_confirmed_is_0(self, three: Fleet) -> None:
        """A kill every host confirmed: status exits 0 with nothing in `disagree`."""
        three.arm()
        code, rep = three.cli_json("kill", "--reason", "drill", "--operator", "sre")
        assert code == 0, rep
        code, rep = three.cli_json("status")
        assert code == 0 and rep["disagree"] == {} and rep["state"] == "KILLED", rep


class TestRenderedTables:
    """Columns fit the longest value; instants in the audit read as times."""

    def test_long_host_names_keep_their_columns(self) -> None:
        """A 63-character host name and a short one line up under the header."""
        from killswitch.cli.render import _hosts

        long = "h" * 63
        rep = {"hosts": {long: {"alive": True, "gate": "open"}, "a": {"alive": True}}}
        lines = _hosts(rep)
        cols = {ln.index(" yes ") for ln in lines[1:]} | {lines[0].index(" alive")}
        assert len(cols) == 1, lines

    def test_audit_action_and_times(self) -> None:
        """`arm_request` does not push the actor column; `expires_ms` is shown as a UTC time."""
        from killswitch.cli.render import _audit

        rows = [
            {"time": "t1", "seq": 1, "action": "arm_request", "actor": "alice", "reason": "r",
             "fields": {"expires_ms": "1796628256070"}},
            {"time": "t2", "seq": 2, "action": "kill", "actor": "bob", "reason": "r", "fields": {}},
        ]  # fmt: skip
        text = _audit({"node": "n", "entries": rows}).splitlines()
        assert text[0].index("alice") == text[1].index("bob"), text
        assert "expires=2026-12-07T07:24:16.070" in text[0] and "1796628256070" not in text[0], text
