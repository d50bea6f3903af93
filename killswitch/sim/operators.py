"""Throwaway operator keys for the demo, the benches and the tests, made by ssh-keygen.

Real OpenSSH keys and a real allowed-signers file, so everything that uses them signs and
verifies exactly as production does. Never for production keys: these have no passphrase.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from killswitch.core.node.bounds import uint_or
from killswitch.core.node.roster import DEFAULT_ALIVE_MS
from killswitch.core.proof.armproof import ArmRequest, Proof, boots_of
from killswitch.core.proof.sshsig import parse_allowed_signers
from killswitch.ops.arming import arm
from killswitch.ops.control import Outcome
from killswitch.ops.signing import ssh_sign
from killswitch.store.store import ChangeResult, Store

DEFAULT_NAMES = ("alice", "bob")
NO_BOOT = "0" * 16  # a boot id no host has: signed for a host that reported none


@dataclass(frozen=True)
class OperatorKeys:
    """Private keys by principal, and the allowed-signers file that lists them."""

    file: Path
    keys: dict[str, Path]

    def key(self, name: str) -> str:
        return str(self.keys[name])


def make_key(path: Path, comment: str, key_type: str = "ed25519") -> Path:
    """A new passphrase-less key pair at `path` and `path`.pub."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", comment, "-f", str(path)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return path


def signer_line(principal: str, key: Path) -> str:
    """The allowed-signers line of `principal` for the key pair at `key`."""
    kind, b64 = Path(f"{key}.pub").read_text().split()[:2]
    return f'{principal} namespaces="killswitch" {kind} {b64}\n'


def make_operators(directory: Path, names: Sequence[str] = DEFAULT_NAMES) -> OperatorKeys:
    """One key per name in `directory`, and `directory`/operators listing them all."""
    directory.mkdir(parents=True, exist_ok=True)
    keys = {n: make_key(directory / f"{n}.key", n) for n in names}
    file = directory / "operators"
    file.write_text("".join(signer_line(n, k) for n, k in keys.items()))
    return OperatorKeys(file, keys)


async def two_person_arm(
    store: Store,
    ops: OperatorKeys,
    *,
    reason: str = "",
    timeout: float = 10.0,
    names: Sequence[str] = DEFAULT_NAMES,
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> Outcome:
    """The first operator's request (pending), then the second's, which arms the node."""
    operators = parse_allowed_signers(ops.file.read_text())
    first = await arm(store, key=ops.key(names[0]), operators=operators, reason=reason,
                      timeout=timeout, alive_ms=alive_ms)  # fmt: skip
    if first.code != 5:
        return first
    return await arm(store, key=ops.key(names[1]), operators=operators, timeout=timeout,
                     alive_ms=alive_ms)  # fmt: skip


async def signed_store_arm(
    store: Store,
    ops: OperatorKeys,
    *,
    reason: str = "",
    floor: int = 0,
    roster: Sequence[str] = (),
    names: Sequence[str] = DEFAULT_NAMES,
    boots: Mapping[str, str] | None = None,
    expires_ms: int = 2**50,
) -> ChangeResult:
    """Arm through the store alone with a real two-operator proof (no hosts need to report):
    for tests of the scripts and the gates below the operator commands. It signs `boots`
    (host -> boot id), else the boot id each roster host reports; a host that reports none
    is signed with a boot id no host has (it stays `unproven`)."""
    st: Any = await store.redis.hgetall(store.keys.state)
    epoch, ver = uint_or(st.get("epoch")), uint_or(st.get("ver"))
    if boots is None:
        reports: dict[str, Any] = {
            h: await store.redis.hgetall(store.keys.host(h).report) for h in roster
        }
        boots = boots_of(reports, list(roster))
    req = ArmRequest(
        node=store.node, lifts_epoch=epoch, lifts_ver=ver, epoch=max(epoch, floor) + 1,
        roster=tuple(sorted(roster)), reason=reason, expires_ms=expires_ms,
        boots=tuple(sorted({h: boots.get(h, NO_BOOT) for h in roster}.items())),
    )  # fmt: skip
    message = req.encode()
    sigs = tuple([await ssh_sign(ops.key(n), message) for n in names])
    return await store.arm(
        actor="+".join(names), reason=reason, approvers=list(names), epoch=req.epoch,
        lifts=(epoch, ver), expires_ms=req.expires_ms, proof=Proof(message, sigs).to_text(),
        roster=req.roster,
    )  # fmt: skip
