"""The two-person arm: each operator runs `arm` at their own keyboard with their own key.

The first call signs a request and records it, pending (exit 5); a second, distinct operator
of the operators file signs the very same request and completes the arm (exit 0). What is
signed (`core.proof.armproof.ArmRequest`) binds the node, the state it lifts, the new epoch, the
roster, the reason, the scope and an expiry. Nothing here is trusted by the gates: each
sidecar verifies the two signatures itself before it opens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from killswitch.core.node.bounds import uint_or
from killswitch.core.node.roster import (
    DEFAULT_ALIVE_MS,
    epoch_floor,
    not_ready_for_arm,
)
from killswitch.core.node.state import UNPROVEN_REFUSALS, NodeState, next_epoch
from killswitch.core.proof.armproof import (
    SCOPE_NODE,
    ArmRequest,
    Proof,
    ProofError,
    boots_of,
    node_refusal,
    verify_proof,
)
from killswitch.core.proof.forget import key_fingerprint
from killswitch.core.proof.sshsig import Operators, SignatureError, verify
from killswitch.core.settings.options import default, to_ms
from killswitch.ops.control import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_UNCONFIRMED,
    EXIT_USAGE,
    Outcome,
    audit_refusal,
    iso_time,
    missing_message,
    node_report,
    pending_json,
    quorum_of,
    wait_for_quorum,
)
from killswitch.ops.rolloutview import approve_after_arm, release_gate, split_json
from killswitch.ops.signing import SignError, ssh_sign
from killswitch.store.store import NodeSnapshot, Store, epoch_ceiling

DEFAULT_EXPIRES_S: float = default("expires")

Signer = Callable[[str, bytes], Awaitable[str]]


async def arm(
    store: Store,
    *,
    key: str,
    operators: Operators,
    roster: Sequence[str] | None = None,
    reason: str | None = None,
    expires_s: float = DEFAULT_EXPIRES_S,
    timeout: float = default("timeout"),
    sign: Signer = ssh_sign,
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> Outcome:
    """Sign an arm of the node: record it pending, or complete a pending one (see module).

    A roster host counts as alive per `alive_ms`, the node's liveness bound.
    """
    node = store.node
    snap = await store.snapshot()
    st = snap.state
    stored, ver = uint_or(st.get("epoch")), uint_or(st.get("ver"))
    # A stored epoch implausibly above every host's is junk (written by hand): it counts as
    # 0, as in kill.lua, so the arm takes an epoch the hosts accept. The scripts agree.
    ceiling = epoch_ceiling(_reported_floor(snap))
    epoch = 0 if ceiling and stored > ceiling else stored
    # Already armed, signed, and no host has seen a later epoch (a rollback: hosts then
    # enforce the higher epoch and only a new arm above it opens them).
    if st.get("state") == NodeState.ARMED.value and epoch >= _reported_floor(snap):
        verdict = verify_proof(operators, st.get("proof", ""))
        if not node_refusal(verdict, node, epoch)[0] and (
            roster is None or verdict.request is None or set(roster) == set(verdict.request.roster)
        ):
            # Even then the caller's key must be an operator's (exit 4 in every state).
            refused = await _not_an_operator(store, key, operators, sign, snap.now_ms)
            if refused is not None:
                return refused
            report = _report(snap, node, alive_ms)
            report["changed"] = False
            who = " and ".join(verdict.principals)
            unproven = sorted(
                h for h, r in snap.reports.items()
                if r.get("proof") in UNPROVEN_REFUSALS and h in snap.roster
            )  # fmt: skip
            if unproven:  # a host that lost its memory: this arm does not name its boot
                return Outcome(
                    EXIT_UNCONFIRMED,
                    report,
                    f"node was already ARMED (signed by {who}), but {', '.join(unproven)} "
                    "blocks unproven (a new boot); two operators admit each with: killswitch "
                    f"arm --node {node} --host HOST --key PATH",
                )
            return Outcome(EXIT_OK, report, f"node was already ARMED (signed by {who})")
    pending, first_sig, first, void = usable_pending(
        snap, operators, node, (epoch, ver), _reported_floor(snap)
    )
    if pending is not None and not _same_terms(pending, roster, reason):
        void = f"the pending request by {first} signs other terms; this call replaces it"
        pending = None
    wanted = tuple(sorted(set(roster))) if roster else (pending.roster if pending else snap.roster)
    if not wanted:
        return await _refused(
            store,
            "no roster",
            "refused: the node has no roster in Redis; give --roster H1,H2,... or start its "
            "aggregator with --hosts (it proposes the roster until the first signed arm)",
        )
    if wanted != snap.roster:
        snap = await store.snapshot(wanted)
    q0 = quorum_of(snap, alive_ms)
    problems = not_ready_for_arm(q0.hosts)
    if problems:
        why = "; ".join(f"{h}: {w}" for h, w in sorted(problems.items()))
        await audit_refusal(store, "arm", "", reason or "", f"hosts not ready: {why}")
        report = _report(snap, node, alive_ms)
        report["refused"] = problems
        lines = "\n".join(f"  {h}: {why}" for h, why in sorted(problems.items()))
        return Outcome(
            EXIT_REFUSED,
            report,
            f"refused: every roster host must be alive and reporting before arming:\n{lines}",
        )
    # A signed rollout (verified here) lets its hosts differ; a record written by hand does not.
    cut, moving = await release_gate(store, operators, wanted, q0.hosts, snap.aggregator)
    if cut is not None:
        odd = ", ".join(f"{h} runs {r}" for h, r in sorted(cut.odd.items()))
        await audit_refusal(store, "arm", "", reason or "", f"version_split: {odd}")
        report = _report(snap, node, alive_ms)
        report["refused"] = {h: f"runs release {r}" for h, r in cut.odd.items()}
        report["release_split"] = split_json(cut, moving)
        lines = "\n".join(f"  {h}: runs {r}" for h, r in sorted(cut.odd.items()))
        return Outcome(
            EXIT_REFUSED,
            report,
            "refused: version_split: the roster runs a release it may not run (expected "
            f"{cut.majority}{' or a signed rollout' if moving is None else ''}):\n{lines}",
        )
    floor = max(epoch_floor(q0.hosts, epoch), _reported_floor(snap))
    # One arm opens every roster host at once: it signs the boot id each reports now (every
    # roster host is alive and reporting one, checked above), so a host restarted without its
    # memory since then is not opened by it.
    boots = tuple(sorted(boots_of(snap.reports, wanted).items()))
    if pending is not None and pending.boots != boots:
        moved = sorted(h for h in wanted if dict(boots).get(h) != pending.boot_of(h))
        void = f"the pending request by {first} is void: {', '.join(moved)} started a new boot"
        pending = None
    req = pending or ArmRequest(
        node=node,
        lifts_epoch=epoch,
        lifts_ver=ver,
        epoch=next_epoch(epoch, floor),
        roster=wanted,
        reason=reason or "",
        expires_ms=snap.now_ms + to_ms(expires_s),
        boots=boots,
    )
    message = req.encode()
    try:
        signature = await sign(key, message)
    except SignError as e:
        return Outcome(EXIT_USAGE, {"node": node, "refused": "cannot sign"}, f"arm: {e}")
    try:
        me = verify(operators, message, signature)
    except SignatureError as e:
        return await _refused(
            store,
            "signature refused",
            f"refused: your signature does not verify against the operators file ({e}); "
            "ask for your public key to be added to it",
            key=key_fingerprint(signature),
        )
    if pending is None or first is None:
        refusal = await store.arm_request(
            lifts=(epoch, ver), message=message, signature=signature, principal=me,
            expires_ms=req.expires_ms, reason=req.reason, ceiling=ceiling,
        )  # fmt: skip
        if refusal:  # audited by the script
            return _void(node, refusal, f"refused: the node changed while signing ({refusal})")
        report = _report(snap, node, alive_ms)
        report["pending_arm"] = pending_json({"msg": message.decode("ascii"), "principal": me})
        note = f"({void})\n" if void else ""
        return Outcome(EXIT_PENDING, report, note + _pending_message(node, req, (me,)))
    if me == first:
        report = _report(snap, node, alive_ms)
        report["pending_arm"] = pending_json({"msg": message.decode("ascii"), "principal": me})
        return Outcome(
            EXIT_PENDING,
            report,
            f"still pending: {me} already signed this request; it needs a second, distinct "
            "operator.\n" + _pending_message(node, req, (me,)),
        )
    proof = Proof(message, (first_sig, signature)).to_text()
    approvers = sorted({first, me})
    async with store.confirmations() as wake:
        res = await store.arm(
            actor="+".join(approvers), reason=req.reason, approvers=approvers, epoch=req.epoch,
            lifts=(req.lifts_epoch, req.lifts_ver), expires_ms=req.expires_ms, proof=proof,
            roster=req.roster, ceiling=ceiling,
        )  # fmt: skip
        if not res.changed:  # audited by the script
            words = {"moved": "the node was killed or armed since", "expired": "it expired"}
            return _void(
                node,
                res.refused,
                f"refused: the request is void ({words.get(res.refused, res.refused)}); run arm "
                "again to start a new one",
            )
        await approve_after_arm(store, req.roster, q0.hosts, "+".join(approvers))
        snap2, q = await wait_for_quorum(store, req.roster, wake, timeout, alive_ms)
    report = node_report(snap2, q)
    report["node"] = node
    report["changed"] = True
    report["approvers"] = approvers
    if q.complete:
        report["elapsed_s"] = round(max(q.last_confirm_ms - res.ts_ms, 0) / 1000.0, 4)
        return Outcome(EXIT_OK, report, f"armed at epoch {res.epoch}, signed by {first} and {me}")
    return Outcome(EXIT_UNCONFIRMED, report, missing_message(q, timeout))


KILL_SIGN_BUDGET_S = 2.0  # a kill never waits longer than this for a signature


async def kill_actor(
    node: str, key: str, operators_path: str, fallback: str, reason: str
) -> tuple[str, str, str]:
    """Who a `kill --key` is recorded as: the principal whose signature of this kill verifies
    and its key's fingerprint, else `fallback`, "" and a note saying why (closing needs no
    proof, so nothing here can stop or hold up a kill for long)."""
    import asyncio

    from killswitch.core.proof.sshsig import parse_allowed_signers

    message = json.dumps(
        {"v": "killswitch-kill-1", "node": node, "reason": reason, "operator": fallback},
        sort_keys=True, separators=(",", ":"),
    ).encode()  # fmt: skip
    try:
        if not operators_path:
            raise SignError("no --operators file to check the signature against")
        with open(operators_path, encoding="utf-8") as f:  # noqa: ASYNC230 (small, local, once)
            ops = parse_allowed_signers(f.read())
        async with asyncio.timeout(KILL_SIGN_BUDGET_S):
            sig = await ssh_sign(key, message)
        return verify(ops, message, sig), "", key_fingerprint(sig)
    except (SignError, SignatureError, OSError, ValueError, TimeoutError) as e:
        return fallback, f"warning: kill recorded unsigned, as {fallback!r}: {e}", ""


async def _not_an_operator(
    store: Store, key: str, operators: Operators, sign: Signer, now_ms: int
) -> Outcome | None:
    """None when `key` signs as an operator of the file, else the refusal (audited)."""
    message = json.dumps(
        {"v": "killswitch-whoami-1", "node": store.node, "now_ms": now_ms},
        sort_keys=True, separators=(",", ":"),
    ).encode()  # fmt: skip
    try:
        verify(operators, message, await sign(key, message))
    except SignError as e:
        return Outcome(EXIT_USAGE, {"node": store.node, "refused": "cannot sign"}, f"arm: {e}")
    except SignatureError as e:
        return await _refused(
            store,
            "signature refused",
            f"refused: your signature does not verify against the operators file ({e}); "
            "ask for your public key to be added to it",
        )
    return None


def usable_pending(
    snap: NodeSnapshot, operators: Operators, node: str, lifts: tuple[int, int], floor: int
) -> tuple[ArmRequest | None, str, str | None, str]:
    """The pending request if it can still be completed: (request, first signature, who, why
    an existing one is void)."""
    p = snap.pending
    if not p:
        return None, "", None, ""
    who = p.get("principal", "?")
    try:
        req = ArmRequest.decode(p.get("msg", "").encode("ascii", "replace"))
        first = verify(operators, req.encode(), p.get("sig", ""))
    except (ProofError, SignatureError) as e:
        return None, "", None, f"the pending request by {who} is void: {e}"
    if req.node != node or (req.lifts_epoch, req.lifts_ver) != lifts:
        return None, "", None, f"the pending request by {first} is void: the node moved since"
    if snap.now_ms > req.expires_ms:
        return None, "", None, f"the pending request by {first} expired"
    if req.epoch <= floor:
        return None, "", None, f"the pending request by {first} is void: hosts saw epoch {floor}"
    return req, p.get("sig", ""), first, ""


def _same_terms(req: ArmRequest, roster: Sequence[str] | None, reason: str | None) -> bool:
    """Options not given accept the pending request's terms; given ones must match them."""
    same_roster = not roster or tuple(sorted(set(roster))) == req.roster
    return req.scope == SCOPE_NODE and same_roster and (reason is None or reason == req.reason)


def _pending_message(node: str, req: ArmRequest, signed: Sequence[str]) -> str:
    return (
        f"PENDING: arm of node {node} signed by {', '.join(signed)}; it waits for a second, "
        f"distinct operator until {iso_time(req.expires_ms)}.\n"
        f"  it arms epoch {req.epoch} (lifting {req.lifts_epoch}), roster "
        f"{','.join(req.roster)}, reason {req.reason!r}\n"
        "The second operator runs, at their own keyboard, with their own key:\n"
        f"  killswitch arm --node {node} --key PATH-TO-THEIR-KEY"
    )


def _reported_floor(snap: NodeSnapshot) -> int:
    """The highest epoch any reporting host (on the roster or not) has seen."""
    return max((uint_or(r.get("max_epoch")) for r in snap.reports.values()), default=0)


def _report(snap: NodeSnapshot, node: str, alive_ms: int) -> dict[str, Any]:
    report = node_report(snap, quorum_of(snap, alive_ms))
    report["node"] = node
    return report


async def _refused(store: Store, what: str, message: str, key: str = "") -> Outcome:
    """A refusal decided here (not in a script) is audited too: no verified principal, so
    the actor is who the caller claims to be ($USER) and `key` the presented key's
    fingerprint."""
    extra = {"actor_kind": "claimed", **({"key": key} if key else {})}
    await audit_refusal(store, "arm", os.environ.get("USER", ""), "", what, **extra)
    return _void(store.node, what, message)


def _void(node: str, what: str, message: str) -> Outcome:
    return Outcome(EXIT_REFUSED, {"node": node, "refused": what}, message)
