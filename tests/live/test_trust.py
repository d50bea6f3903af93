"""The aggregator's belief about arms and the roster, and the host view of an unproven arm.

Pure: real ssh-keygen signatures over requests, no Redis, no processes.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from killswitch.aggregator.trust import Trust
from killswitch.core.node.state import BlockReason, HostView, NodeState, unproven
from killswitch.core.proof.armproof import ArmRequest, Proof
from killswitch.core.proof.sshsig import Operators, parse_allowed_signers
from killswitch.sim.operators import make_key, signer_line


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def error(self, event: str, **kw: object) -> None:
        self.events.append((event, kw))


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> tuple[Operators, dict[str, Path]]:
    d = tmp_path_factory.mktemp("trust")
    keys = {n: make_key(d / n, n) for n in ("alice", "bob")}
    return parse_allowed_signers("".join(signer_line(n, k) for n, k in keys.items())), keys


def proof(keys: dict[str, Path], roster: tuple[str, ...], epoch: int = 5) -> str:
    msg = ArmRequest(
        "smars",
        epoch - 1,
        3,
        epoch,
        roster,
        "r",
        2**40,
        boots=tuple((h, "b0" * 8) for h in sorted(roster)),
    ).encode()
    sigs = tuple(
        subprocess.run(
            ["ssh-keygen", "-q", "-Y", "sign", "-n", "killswitch", "-f", str(k)],
            input=msg, capture_output=True, check=True,
        ).stdout.decode()
        for k in keys.values()
    )  # fmt: skip
    return Proof(msg, sigs).to_text()


class TestTrust:
    """The signed roster wins over --hosts; an unproven ARMED state does not count as armed."""

    def test_hosts_propose_until_a_signed_arm_then_the_signed_roster_wins(
        self, ops: tuple[Operators, dict[str, Path]]
    ) -> None:
        """Before any proof the roster is --hosts; after one it is the signed roster, and a
        narrower --hosts is a logged mismatch that changes nothing."""
        operators, keys = ops
        log = Log()
        t = Trust("smars", ("a1",), operators, log, lambda: 100.0)
        assert t.roster == ("a1",) and not t.mismatch
        assert t.learn(proof(keys, ("a1", "a2")))
        assert t.roster == ("a1", "a2") and t.mismatch
        t.say_mismatch()
        t.say_mismatch()  # said again only after MISMATCH_LOG_S
        assert [e for e, _ in log.events] == ["ROSTER_MISMATCH"]
        assert not t.learn(proof(keys, ("a1", "a2"), epoch=7))  # a later arm, same roster
        assert not t.learn("garbage") and t.roster == ("a1", "a2")  # junk never narrows it

    @pytest.mark.parametrize(
        ("armed", "epoch", "text", "want"),
        [(True, 5, "good", ""), (True, 6, "good", "wrong_epoch"), (True, 5, "", "unsigned"),
         (False, 6, "", "")],
    )  # fmt: skip
    def test_judge(
        self, ops: tuple[Operators, dict[str, Path]], armed: bool, epoch: int, text: str, want: str
    ) -> None:
        """Only an ARMED state whose proof binds this node and epoch counts as armed."""
        operators, keys = ops
        t = Trust("smars", ("a1",), operators, Log(), lambda: 0.0)
        t.learn(proof(keys, ("a1",)) if text == "good" else text)
        assert t.judge(armed, epoch) == want

    def test_without_operators_nothing_is_armed(self) -> None:
        """No operators file: every ARMED state is refused (no_operators)."""
        t = Trust("smars", ("a1",), None, Log(), lambda: 0.0)
        assert t.judge(True, 1) == "no_operators"


class TestUnproven:
    """A host enforces an unproven arm as UNARMED, with `unlisted` as its own reason."""

    @pytest.mark.parametrize(
        ("refusal", "state", "reason"),
        [("", NodeState.ARMED, None), ("unsigned", NodeState.UNARMED, BlockReason.UNARMED),
         ("unlisted", NodeState.UNARMED, BlockReason.UNLISTED)],
    )  # fmt: skip
    def test_view(self, refusal: str, state: NodeState, reason: BlockReason | None) -> None:
        """The gate stays closed for any refusal, and says `unlisted` only for that one."""
        view = HostView(5, NodeState.ARMED, NodeState.ARMED, 5, 1)
        got = unproven(view, refusal)
        assert got.state is state and got.gate_open is (reason is None)
        if reason is not None:
            assert got.block_reason is reason
            assert got.max_epoch == 5  # remembered: only a higher signed arm opens it
