"""Roster and quorum decisions of `killswitch.core.node.roster`: pure, from plain dicts and server time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.node.roster import (
    DEFAULT_ALIVE_MS,
    HostStatus,
    epoch_floor,
    host_status,
    not_ready_for_arm,
    quorum,
)

NOW = 1_700_000_000_000  # Redis server time, ms
ROSTER = ("or-01", "or-02", "or-03", "or-04")


def report(age_ms: int, *, stale_after_ms: int | None = 1000, **extra: object) -> dict[str, str]:
    """A host report hash as the sidecar writes it, `age_ms` before NOW."""
    h = {
        "ts_ms": str(NOW - age_ms),
        "gate": "open",
        "view": "ARMED",
        "max_epoch": "7",
        "orders_per_s": "12.5",
        "allowed": "100",
        "blocked": "3",
        "regression": "",
        "boot_id": "b0" * 8,
    }
    if stale_after_ms is not None:
        h["stale_after_ms"] = str(stale_after_ms)
    h.update({k: str(v) for k, v in extra.items()})
    return h


def confirm(epoch: int, ver: int, applied_ms: int = NOW - 50) -> dict[str, str]:
    return {"epoch": str(epoch), "ver": str(ver), "applied_ms": str(applied_ms)}


class TestHostStatus:
    @pytest.mark.parametrize(
        ("age_ms", "stale_after_ms", "alive", "age_s"),
        [
            pytest.param(40, 1000, True, 0.04, id="fresh"),
            pytest.param(1000, 1000, True, 1.0, id="exactly-stale-after-is-alive"),
            pytest.param(1001, 1000, False, 1.001, id="one-ms-late"),
            pytest.param(300, 250, False, 0.3, id="own-short-stale-after"),
            pytest.param(4000, 5000, True, 4.0, id="own-long-stale-after"),
            pytest.param(DEFAULT_ALIVE_MS, None, True, 1.0, id="default-alive-ms"),
            pytest.param(DEFAULT_ALIVE_MS + 1, None, False, 1.001, id="default-alive-ms-late"),
            pytest.param(-500, 1000, True, 0.0, id="report-from-the-future-clamped"),
        ],
    )
    def test_alive_and_age(
        self, age_ms: int, stale_after_ms: int | None, alive: bool, age_s: float
    ) -> None:
        """A host is alive while its last report is no older than its own stale-after."""
        s = host_status("or-01", report(age_ms, stale_after_ms=stale_after_ms), {}, NOW)
        assert s.alive is alive
        assert s.age_s == pytest.approx(age_s)

    def test_alive_host_fields(self) -> None:
        """An alive host's report fields are read through, numbers parsed."""
        s = host_status("or-01", report(40, regression="epoch went back"), confirm(7, 2), NOW)
        assert (s.host, s.gate, s.view, s.epoch) == ("or-01", "open", "ARMED", 7)
        assert (s.allowed, s.blocked, s.orders_per_s) == (100, 3, 12.5)
        assert (s.confirmed_epoch, s.confirmed_ver, s.confirmed_ms) == (7, 2, NOW - 50)
        assert s.regression == "epoch went back"

    def test_dead_host_gate_is_unknown(self) -> None:
        """A silent host's last claims (gate open, ARMED) are not repeated as if current."""
        s = host_status("or-02", report(5000, regression="old news"), {}, NOW)
        assert not s.alive
        assert (s.gate, s.view, s.regression) == ("unknown", "", "")
        assert s.epoch == 7  # the highest epoch it reported still matters for the floor

    @pytest.mark.parametrize("rep", [{}, {"ts_ms": "0"}, {"ts_ms": "garbage", "gate": "open"}])
    def test_never_reported(self, rep: dict[str, str]) -> None:
        """A host without a report timestamp has never reported: not alive, no age."""
        s = host_status("or-03", rep, {}, NOW)
        assert not s.alive
        assert s.age_s is None
        assert s.gate == "unknown"
        assert s.to_json()["age_s"] is None

    def test_garbage_numbers_read_as_zero(self) -> None:
        """Unparsable counters in a report read as zero instead of raising."""
        rep = report(10, allowed="x", orders_per_s="fast", max_epoch="")
        s = host_status("or-01", rep, {"epoch": "?"}, NOW)
        assert (s.allowed, s.orders_per_s, s.epoch, s.confirmed_epoch) == (0, 0.0, 0, 0)

    def test_to_json_rounds(self) -> None:
        """The JSON form rounds the age to ms and the rate to 2 decimals."""
        rep = report(1234, stale_after_ms=2000, orders_per_s="12.3456")
        j = host_status("or-01", rep, confirm(7, 1), NOW).to_json()
        assert j["age_s"] == 1.234
        assert j["orders_per_s"] == 12.35
        assert j["alive"] is True
        assert j["confirmed_epoch"] == 7


class TestQuorum:
    @pytest.mark.parametrize(
        ("confirms", "confirmed"),
        [
            pytest.param({h: confirm(7, 2) for h in ROSTER}, ROSTER, id="all"),
            pytest.param({}, (), id="none"),
            pytest.param(
                {"or-01": confirm(7, 2), "or-03": confirm(7, 2)}, ("or-01", "or-03"), id="some"
            ),
            pytest.param(
                {"or-01": confirm(7, 1), "or-02": confirm(7, 2)}, ("or-02",), id="old-ver"
            ),
            pytest.param(
                {"or-01": confirm(6, 2), "or-02": confirm(8, 2), "or-04": confirm(7, 2)},
                ("or-04",),
                id="other-epochs",
            ),
            pytest.param({"or-02": {"epoch": "7"}}, (), id="no-ver"),
        ],
    )
    def test_confirmed_needs_epoch_and_ver(
        self, confirms: dict[str, dict[str, str]], confirmed: tuple[str, ...]
    ) -> None:
        """A roster host is confirmed only when both its epoch and ver match the node's."""
        reports = {h: report(30) for h in ROSTER}  # gate open at 7: agrees with an arm
        q = quorum(ROSTER, 7, 2, reports, confirms, NOW, "ARMED")
        assert q.confirmed == confirmed
        assert q.missing == tuple(h for h in ROSTER if h not in confirmed)
        assert q.complete is (confirmed == ROSTER)

    def test_hosts_off_roster_never_count(self) -> None:
        """Confirmations from hosts outside the roster are ignored, so they cannot fake quorum."""
        confirms = {"intruder": confirm(7, 2), "or-99": confirm(7, 2), "or-01": confirm(7, 2)}
        reports = {h: report(30, gate="closed") for h in ("or-01", "intruder", "or-99")}
        q = quorum(("or-01", "or-02"), 7, 2, reports, confirms, NOW)
        assert q.confirmed == ("or-01",)
        assert q.missing == ("or-02",)
        assert not q.complete
        assert set(q.hosts) == {"or-01", "or-02"}

    def test_missing_in_roster_order(self) -> None:
        """`missing` keeps the roster's order, not the order confirmations arrived in."""
        roster = ("md-09", "or-01", "or-05", "zz-1")
        reports = {"or-01": report(30, gate="closed", max_epoch=3)}
        q = quorum(roster, 3, 1, reports, {"or-01": confirm(3, 1)}, NOW)
        assert q.missing == ("md-09", "or-05", "zz-1")

    def test_epoch_zero_confirms_nobody(self) -> None:
        """A node with no epoch yet has no quorum, even against zeroed confirmations."""
        q = quorum(ROSTER, 0, 0, {}, {h: confirm(0, 0) for h in ROSTER}, NOW)
        assert q.confirmed == ()
        assert not q.complete

    def test_empty_roster_is_never_complete(self) -> None:
        """An empty roster proves nothing: quorum over it is not complete."""
        assert not quorum((), 7, 2, {}, {}, NOW).complete

    def test_last_confirm_ms(self) -> None:
        """`last_confirm_ms` is the latest confirmation among the confirmed hosts only."""
        confirms = {
            "or-01": confirm(7, 2, NOW - 300),
            "or-02": confirm(7, 2, NOW - 120),
            "or-03": confirm(6, 2, NOW - 1),  # later, but an old epoch: not counted
        }
        reports = {h: report(30, gate="closed") for h in ROSTER}
        q = quorum(ROSTER, 7, 2, reports, confirms, NOW)
        assert q.last_confirm_ms == NOW - 120

    def test_last_confirm_ms_none_confirmed(self) -> None:
        """With nobody confirmed the latest confirmation time is 0."""
        assert quorum(ROSTER, 7, 2, {}, {"or-01": confirm(6, 1)}, NOW).last_confirm_ms == 0


class TestCrossCheck:
    """A confirmation counts only when the host's own report agrees with it."""

    @pytest.mark.parametrize(
        ("state", "rep", "why"),
        [
            pytest.param("KILLED", {"gate": "closed"}, "", id="kill-closed-agrees"),
            pytest.param("KILLED", {"gate": "closed", "max_epoch": 9}, "", id="kill-later-epoch"),
            pytest.param("KILLED", {"gate": "open"}, "gate open", id="kill-but-open"),
            pytest.param("KILLED", {"gate": "closed", "max_epoch": 6}, "epoch 6", id="kill-old"),
            pytest.param("KILLED", None, "gate unknown", id="kill-no-report"),
            pytest.param("ARMED", {"gate": "open"}, "", id="arm-open-agrees"),
            pytest.param("ARMED", {"gate": "closed"}, "", id="arm-closed-by-a-scope-agrees"),
            pytest.param("ARMED", {"gate": "open", "max_epoch": 6}, "epoch 6", id="arm-unseen"),
        ],
    )
    def test_table(self, state: str, rep: dict[str, object] | None, why: str) -> None:
        """Confirmed when the report agrees; otherwise contradicted, with the reason."""
        reports = {} if rep is None else {"or-01": report(30, **rep)}
        q = quorum(("or-01",), 7, 2, reports, {"or-01": confirm(7, 2)}, NOW, state)
        if why:
            assert q.confirmed == () and q.missing == ("or-01",)
            assert why in q.contradicted["or-01"]
        else:
            assert q.confirmed == ("or-01",) and q.contradicted == {}

    def test_frozen_host_with_forged_confirmation(self) -> None:
        """A silent host whose last report says gate open is not confirmed by a written hash."""
        reports = {"or-01": report(9_000, gate="open", max_epoch=6)}
        q = quorum(("or-01",), 7, 2, reports, {"or-01": confirm(7, 2)}, NOW, "KILLED")
        assert not q.complete and "or-01" in q.contradicted


class TestArmReadiness:
    def test_not_ready_names_never_reported_and_silent(self) -> None:
        """Arm is refused for hosts that never reported or went silent, with the reason."""
        reports = {"or-01": report(20), "or-02": report(3500), "or-04": report(999)}
        q = quorum(ROSTER, 7, 2, reports, {}, NOW)
        problems = not_ready_for_arm(q.hosts)
        assert set(problems) == {"or-02", "or-03"}
        assert problems["or-03"] == "has never reported"
        assert "not reporting" in problems["or-02"]
        assert "3.5s" in problems["or-02"]

    def test_all_alive_is_ready(self) -> None:
        """With every roster host reporting there is nothing blocking an arm."""
        q = quorum(ROSTER, 7, 2, {h: report(10) for h in ROSTER}, {}, NOW)
        assert not_ready_for_arm(q.hosts) == {}

    def test_host_reporting_no_boot_id_is_not_ready(self) -> None:
        """An arm signs every roster host's boot id: a host that reports none refuses it."""
        reports = {h: report(10) for h in ROSTER}
        reports["or-02"].pop("boot_id")
        q = quorum(ROSTER, 7, 2, reports, {}, NOW)
        assert list(not_ready_for_arm(q.hosts)) == ["or-02"]
        assert "no boot id" in not_ready_for_arm(q.hosts)["or-02"]

    @pytest.mark.parametrize(
        ("epochs", "floor"),
        [((), 0), ((3,), 3), ((3, 11, 7), 11), ((0, 0), 0)],
    )
    def test_epoch_floor(self, epochs: tuple[int, ...], floor: int) -> None:
        """The epoch floor is the highest epoch any host reports, alive or not."""
        statuses: dict[str, HostStatus] = {}
        for i, e in enumerate(epochs):
            age = 100 if i % 2 == 0 else 9_000  # silent hosts count too
            statuses[f"or-{i}"] = host_status(f"or-{i}", report(age, max_epoch=e), {}, NOW)
        assert epoch_floor(statuses) == floor


names = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,8}", fullmatch=True)


class TestQuorumProperties:
    @given(
        st.lists(names, unique=True, max_size=12),
        st.dictionaries(
            names,
            st.tuples(st.integers(0, 3), st.integers(0, 3)),
            max_size=16,
        ),
        st.integers(0, 3),
        st.integers(0, 3),
    )
    def test_confirmed_and_missing_partition_roster(
        self,
        roster: list[str],
        confirmed_at: dict[str, tuple[int, int]],
        epoch: int,
        ver: int,
    ) -> None:
        """confirmed and missing are disjoint, cover the roster, and keep its order."""
        confirms = {h: confirm(e, v) for h, (e, v) in confirmed_at.items()}
        reports = {h: report(30, gate="closed", max_epoch=3) for h in roster}
        q = quorum(roster, epoch, ver, reports, confirms, NOW)
        assert set(q.confirmed) | set(q.missing) == set(roster)
        assert not set(q.confirmed) & set(q.missing)
        assert list(q.confirmed) == [h for h in roster if h in q.confirmed]
        assert list(q.missing) == [h for h in roster if h in q.missing]
        expected = {h for h in roster if epoch > 0 and confirmed_at.get(h) == (epoch, ver)}
        assert set(q.confirmed) == expected
