"""Scoped kills as operator functions: kill one host or one symbol, and lift them again.

A scoped kill leaves the node's state and epoch alone; it is proven by the hosts it
concerns (a host scope by that host, a symbol scope by every roster host) reporting that
they enforce the scope version the change created. Lifting is signed like arming the node:
two operators each sign it with their own key (the first call records it pending, exit 5; a
second, distinct operator completes it). The signed request
names the scope, the node state and the scopes version it lifts, so it cannot be replayed
after a later scoped kill; it is proven the same way.

`arm --host H` is also the admission of H's current boot: the signed request names the boot
id H reports, so a host that blocks `unproven` (it lost its memory, or its proof expired
before it saw it) opens at the node's current ARMED epoch, scoped kill of it or not.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from killswitch.core.node.bounds import uint_or
from killswitch.core.node.roster import not_ready_for_arm
from killswitch.core.node.scope import ahead, parse_scopes, proven, valid_symbol
from killswitch.core.node.state import UNPROVEN_REFUSALS, NodeState
from killswitch.core.proof.armproof import ArmRequest, Proof, boots_of
from killswitch.core.settings.options import default, to_ms
from killswitch.ops.control import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_UNCONFIRMED,
    EXIT_USAGE,
    POLL_S,
    Outcome,
    audit_refusal,
    iso_time,
    node_report,
    quorum_of,
)
from killswitch.store.store import NodeSnapshot, Store, epoch_ceiling

if TYPE_CHECKING:  # the signing side loads `cryptography`: a scoped kill never needs it
    from killswitch.core.proof.sshsig import Operators
    from killswitch.ops.arming import Signer

DEFAULT_EXPIRES_S: float = default("expires")  # as a node arm's (ops.arming)


def check_scope(kind: str, value: str, roster: tuple[str, ...]) -> str:
    """Why this scope cannot be used ("" when it can)."""
    if kind == "host" and value not in roster:
        return f"host {value!r} is not on the node's roster ({', '.join(roster) or 'empty'})"
    if kind == "symbol" and not valid_symbol(value):
        return f"bad symbol {value!r}: 1-64 printable ASCII characters"
    return ""


async def kill_scope(
    store: Store, *, kind: str, value: str, reason: str, operator: str, timeout: float
) -> Outcome:
    before = await store.snapshot()
    why = check_scope(kind, value, before.roster)
    if why:
        return Outcome(EXIT_USAGE, {"node": store.node, "refused": why}, f"refused: {why}")
    _, ver, ts_ms, _ = await store.scope(
        op="kill", kind=kind, value=value, actor=operator, reason=reason
    )
    return await _prove(store, kind, value, ver, ts_ms, timeout, "killed")


async def arm_scope(
    store: Store,
    *,
    kind: str,
    value: str,
    key: str,
    operators: Operators,
    reason: str | None,
    expires_s: float = DEFAULT_EXPIRES_S,
    timeout: float = default("timeout"),
    sign: Signer | None = None,
) -> Outcome:
    """Sign the lift of a scoped kill: record it pending, or complete a pending one."""
    from killswitch.core.proof.sshsig import SignatureError, verify
    from killswitch.ops.arming import usable_pending
    from killswitch.ops.signing import SignError, ssh_sign

    sign = sign or ssh_sign
    node, field = store.node, f"{kind}:{value}"
    before = await store.snapshot()
    why = check_scope(kind, value, before.roster)
    if why:
        return Outcome(EXIT_USAGE, {"node": node, "refused": why}, f"refused: {why}")
    scopes = parse_scopes(before.scopes)
    admit = (
        kind == "host"
        and before.state.get("state") == NodeState.ARMED.value
        and before.reports.get(value, {}).get("proof") in UNPROVEN_REFUSALS
    )
    boots = tuple(sorted(boots_of(before.reports, [value]).items())) if kind == "host" else ()
    if admit and not boots:
        return Outcome(
            EXIT_REFUSED,
            {"node": node, "refused": "no boot id"},
            f"refused: {value} reports no boot id to admit (is its sidecar running?)",
        )
    active = any(s.kind == kind and s.value == value for s in scopes.active)
    if not active and not admit:
        out = await _prove(store, kind, value, scopes.ver, before.now_ms, timeout, "lifted")
        out.report["changed"] = False
        if out.code == EXIT_OK:
            out.message = f"{kind} {value} had no active scoped kill"
        return out
    need = [value] if kind == "host" else list(before.roster)
    problems = {h: p for h, p in not_ready_for_arm(quorum_of(before).hosts).items() if h in need}
    if problems:
        lines = "\n".join(f"  {h}: {p}" for h, p in sorted(problems.items()))
        await audit_refusal(store, f"arm_{kind}", "", reason or "", "hosts not ready")
        return Outcome(
            EXIT_REFUSED,
            {"node": node, "refused": problems},
            f"refused: the hosts that must prove the lift are not all reporting:\n{lines}",
        )
    stored, ver = uint_or(before.state.get("epoch")), uint_or(before.state.get("ver"))
    floor = max((uint_or(r.get("max_epoch")) for r in before.reports.values()), default=0)
    ceiling = epoch_ceiling(floor)
    epoch = 0 if ceiling and stored > ceiling else stored
    pending, first_sig, first, _ = usable_pending(before, operators, node, (epoch, ver), -1)
    if pending is not None and (
        pending.scope != field
        or pending.scope_ver != scopes.ver
        or pending.boots != boots
        or (reason is not None and reason != pending.reason)
    ):
        pending = None
    req = pending or ArmRequest(
        node=node, lifts_epoch=epoch, lifts_ver=ver, epoch=epoch, roster=before.roster,
        reason=reason or "", expires_ms=before.now_ms + to_ms(expires_s), scope=field,
        scope_ver=scopes.ver, boots=boots,
    )  # fmt: skip
    message = req.encode()
    try:
        signature = await sign(key, message)
    except SignError as e:
        return Outcome(EXIT_USAGE, {"node": node, "refused": "cannot sign"}, f"arm: {e}")
    try:
        me = verify(operators, message, signature)
    except SignatureError as e:
        await audit_refusal(store, f"arm_{kind}", "", req.reason, "signature refused")
        return Outcome(
            EXIT_REFUSED,
            {"node": node, "refused": "signature refused"},
            f"refused: your signature does not verify against the operators file ({e})",
        )
    if pending is None or first is None or me == first:
        if pending is None or first is None:
            refusal = await store.arm_request(
                lifts=(epoch, ver), message=message, signature=signature, principal=me,
                expires_ms=req.expires_ms, reason=req.reason, ceiling=ceiling,
            )  # fmt: skip
            if refusal:  # audited by the script
                return Outcome(
                    EXIT_REFUSED,
                    {"node": node, "refused": refusal},
                    f"refused: the node changed while signing ({refusal})",
                )
        report = node_report(before, quorum_of(before))
        report["node"] = node
        report["pending_arm"] = {"by": me, "scope": field, "expires_at": iso_time(req.expires_ms)}
        return Outcome(
            EXIT_PENDING,
            report,
            f"PENDING: lift of {kind} {value} on node {node} signed by {me}; a second, distinct "
            f"operator completes it until {iso_time(req.expires_ms)} with:\n"
            f"  killswitch arm --node {node} --{kind} {value} --key PATH-TO-THEIR-KEY",
        )
    approvers = sorted({first, me})
    changed, sver, ts_ms, refused = await store.scope(
        op="arm", kind=kind, value=value, actor="+".join(approvers), reason=req.reason,
        approvers=approvers, lifts=(req.lifts_epoch, req.lifts_ver, req.scope_ver),
        expires_ms=req.expires_ms, proof=Proof(message, (first_sig, signature)).to_text(),
        ceiling=ceiling, admit=admit,
    )  # fmt: skip
    if refused:  # audited by the script
        return Outcome(
            EXIT_REFUSED,
            {"node": node, "refused": refused},
            f"refused: the lift request is void ({refused}); run arm again to start a new one",
        )
    out = await _prove(store, kind, value, sver, ts_ms, timeout, "lifted")
    out.report["changed"] = changed
    out.report["approvers"] = approvers
    return out


async def _prove(
    store: Store, kind: str, value: str, ver: int, ts_ms: int, timeout: float, what: str
) -> Outcome:
    deadline = time.monotonic() + timeout
    async with store.confirmations() as wake:  # hosts publish nothing for scopes: a poll
        while True:
            snap = await store.snapshot()
            stored_ver = parse_scopes(snap.scopes).ver
            done, missing = proven(kind, value, ver, snap.roster, _applied(snap), stored_ver)
            if what == "lifted":  # a host that kept the scope (no verified lift) proves no lift
                kept = _kept(snap, f"{kind}:{value}")
                if kind == "host" and snap.reports.get(value, {}).get("proof") in UNPROVEN_REFUSALS:
                    kept.append(value)  # and an admitted host proves it by no longer refusing
                done, missing = (
                    [h for h in done if h not in kept],
                    missing + [h for h in done if h in kept],
                )
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                break
            await wake.wait(min(POLL_S, left))
    report = node_report(snap, quorum_of(snap))
    report["node"] = store.node
    report.update(
        scope={"kind": kind, "value": value, "ver": ver},
        confirmed=done,
        missing=missing,
        elapsed_s=round(max(snap.now_ms - ts_ms, 0) / 1000.0, 4),
    )
    if not missing:
        return Outcome(EXIT_OK, report)
    applied = _applied(snap)
    lost = [h for h in missing if ahead(applied.get(h, 0), stored_ver)]
    why = (
        f" ({', '.join(lost)} applied a scopes version above the stored {stored_ver}: Redis "
        "lost its scopes, and such a host ignores scoped changes until the version passes "
        "its own; kill the node instead)"
        if lost
        else ""
    )
    kept = _kept(snap, f"{kind}:{value}") if what == "lifted" else []
    if kept:
        why += (
            f" ({', '.join(kept)} still enforces it: it verified no signed lift newer than "
            "the kill it saw; kill the scope again, then arm it)"
        )
    return Outcome(
        EXIT_UNCONFIRMED,
        report,
        f"NOT PROVEN: {kind} {value} {what}, but {', '.join(missing)} did not report "
        f"enforcing it within {timeout:g}s{why}",
    )


def _applied(snap: NodeSnapshot) -> dict[str, int]:
    out: dict[str, int] = {}
    for h, rep in snap.reports.items():
        raw: Any = rep.get("scope_ver", "0")
        try:
            out[h] = int(raw)
        except ValueError:
            out[h] = 0
    return out


def _kept(snap: NodeSnapshot, field: str) -> list[str]:
    """The hosts that report enforcing `field` although it was lifted without their proof."""
    return sorted(
        h for h, rep in snap.reports.items() if field in rep.get("scope_kept", "").split()
    )
