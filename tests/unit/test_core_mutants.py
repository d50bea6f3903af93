"""Tests written to kill the mutants `./dev mutants` found alive in the core (docs/TESTING.md).

Each pins a behaviour the earlier tests left free: exact JSON keys operators' scripts read,
defaults for fields a host report may lack, the log fields of a refused order, and the
view a host reports after reads that are not plain ARMED/KILLED.
"""

from __future__ import annotations

from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.node.roster import HostStatus, host_status, quorum
from killswitch.core.node.state import HostView, NodeRead, NodeState, boot_view, observe

NOW = 1_000_000


class TestHostStatusJson:
    def test_to_json_keys_and_values_exactly(self) -> None:
        """`status --json` hosts[H] carries exactly these keys and values (scripts read them)."""
        s = HostStatus(
            host="or-01", alive=True, age_s=0.12345, gate="open", epoch=7, view="ARMED",
            orders_per_s=12.345, allowed=10, blocked=2, confirmed_epoch=7, confirmed_ver=3,
            confirmed_ms=99, regression="r",
        )  # fmt: skip
        assert s.to_json() == {
            "alive": True, "age_s": 0.123, "gate": "open", "epoch": 7, "orders_per_s": 12.35,
            "view": "ARMED", "allowed": 10, "blocked": 2, "confirmed_epoch": 7,
            "regression": "r", "cancels": 0, "limited": 0, "subscribers": 0, "flat_epoch": 0,
            "on_kill": {"epoch": 0, "status": ""}, "limits_digest": "", "proof": "",
            "release": "", "files": {}, "attest": "", "scope_kept": [], "boot": "", "wire": 0,
            "metrics": "", "recorder": None,
        }  # fmt: skip

    def test_alive_report_missing_fields_has_defaults(self) -> None:
        """An alive host whose report lacks gate, view, regression and rate reads as unknown/empty/0."""
        s = host_status("or-01", {"ts_ms": str(NOW), "stale_after_ms": "1000"}, {}, NOW)
        assert s.alive
        assert (s.gate, s.view, s.regression, s.orders_per_s) == ("unknown", "", "", 0.0)

    def test_quorum_names_each_host(self) -> None:
        """Each host status in a quorum carries its own host name."""
        q = quorum(["or-01", "or-02"], 1, 1, {}, {}, NOW)
        assert {h: s.host for h, s in q.hosts.items()} == {"or-01": "or-01", "or-02": "or-02"}

    def test_epoch_one_confirms(self) -> None:
        """The first epoch a node ever takes (1) is confirmed like any other (kill confirmed by
        a host whose own report agrees: gate closed at epoch 1)."""
        confirms = {"or-01": {"epoch": "1", "ver": "1", "applied_ms": str(NOW)}}
        report = {"ts_ms": str(NOW), "stale_after_ms": "1000", "gate": "closed", "max_epoch": "1"}
        q = quorum(["or-01"], 1, 1, {"or-01": report}, confirms, NOW)
        assert q.confirmed == ("or-01",)
        assert q.complete


class TestStateReads:
    def test_unreadable_state_keeps_epoch_and_ver(self) -> None:
        """A garbage state is no proof, but the read still carries the stored epoch and ver."""
        read = NodeRead.from_hash({"state": "BOGUS", "epoch": "3", "ver": "4"})
        assert read == NodeRead(None, 3, 4, "unreadable state 'BOGUS'")

    def test_missing_state_on_a_fresh_host_is_exactly_unarmed(self) -> None:
        """A host that never saw an epoch reads a missing state as UNARMED at epoch 0, ver 0."""
        assert observe(boot_view(), NodeRead(None)) == HostView(state=NodeState.UNARMED)

    def test_unarmed_read_clears_an_earlier_regression(self) -> None:
        """After an invalid read, a plain missing state makes the fresh host UNARMED, no regression."""
        bad = observe(boot_view(), NodeRead(NodeState.ARMED, 0, 1))
        assert bad.regression == "invalid epoch 0"
        assert observe(bad, NodeRead(None)) == HostView(state=NodeState.UNARMED)

    def test_missing_state_after_an_epoch_names_the_loss(self) -> None:
        """A missing state on a host that saw epoch 5 is STALE with the exact reason."""
        view = observe(boot_view(), NodeRead(NodeState.ARMED, 5, 1))
        got = observe(view, NodeRead(None))
        assert got.state is NodeState.STALE
        assert got.regression == "node state missing from Redis; this host has seen epoch 5"

    def test_invalid_epoch_after_unarmed_is_stale(self) -> None:
        """An ARMED read at epoch 0 after an UNARMED one is refused as STALE, not left UNARMED."""
        unarmed = observe(boot_view(), NodeRead(None))
        got = observe(unarmed, NodeRead(NodeState.ARMED, 0, 1))
        assert got.state is NodeState.STALE
        assert got.regression == "invalid epoch 0"


class TestGateDetails:
    def test_fresh_gate_holds_nothing(self) -> None:
        """A new gate reports no held notice as 0 (the sidecar compares it with 0)."""
        assert Gate("n", "h", log=CapturingLogger()).held == 0

    def test_gate_built_on_a_killed_view_blocks_as_killed(self) -> None:
        """A gate given a KILLED view at construction blocks with reason killed, not stale."""
        view = HostView(max_epoch=4, max_state=NodeState.KILLED, state=NodeState.KILLED, epoch=4)
        g = Gate("n", "h", view=view, clock=lambda: 0.0, log=CapturingLogger())
        assert g.check() == (False, 4, "killed")
        assert g.status() == (NodeState.KILLED, 4)

    def test_default_logger_logs_a_refusal(self) -> None:
        """With no logger passed in, a refused order still logs and is counted (no crash)."""
        g = Gate("n", "h", clock=lambda: 0.0)
        assert g.allow() is False
        assert g.blocked == 1

    def test_allow_logs_the_refused_order(self) -> None:
        """`allow()` logs a refused order's id, symbol, side and qty; its defaults are '-', '', '', 0."""
        log = CapturingLogger()
        g = Gate("n", "h", clock=lambda: 0.0, log=log)
        g.allow("o-9", "AAPL", "BUY", 5)
        g.allow()
        g.check()
        fields = [(c.kwargs["order_id"], c.kwargs["symbol"], c.kwargs["side"], c.kwargs["qty"])
                  for c in log.calls]  # fmt: skip
        assert fields == [("o-9", "AAPL", "BUY", 5), ("-", "", "", 0), ("-", "", "", 0)]
