"""The `rollout` verb: a signed, staged rollout, each step by two operators like an arm.

`begin` names the new release and the canary hosts allowed to run it, `promote` lets every
host run it, `abort` ends it (the canary hosts must go back). The first operator's call
signs the step and records it pending (exit 5); a second, distinct operator of the operators
file signs the very same step and completes it (exit 0); a key outside the file is refused
(4). The signatures are the arm's (`ssh-keygen -Y sign -n killswitch`) over a message of the
rollout's own kind (`core.proof.rollout.RolloutRequest`), so neither can stand in for the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from killswitch.core.node.roster import DEFAULT_ALIVE_MS, reported_releases
from killswitch.core.proof import rollout as ro
from killswitch.core.proof.armproof import Proof, ProofError
from killswitch.core.proof.sshsig import Operators, SignatureError, verify
from killswitch.core.settings.options import to_ms
from killswitch.ops.arming import DEFAULT_EXPIRES_S, Signer
from killswitch.ops.control import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_USAGE,
    Outcome,
    audit_refusal,
    iso_time,
    quorum_of,
)
from killswitch.ops.rolloutview import rollout_json, unverified
from killswitch.ops.signing import SignError, ssh_sign
from killswitch.store.rollout import RolloutRead, RolloutStore
from killswitch.store.store import Store

SHOW, SIGN = "show", "sign"  # no --key: show; --key alone: co-sign the pending step


async def show(store: Store) -> Outcome:
    """The node's rollout, its approved release and the releases its hosts report."""
    snap = await store.snapshot()
    read = await RolloutStore(store.redis, store.node).read()
    q = quorum_of(snap)
    report = _report(store.node, read, snap.aggregator, reported_releases(q.hosts))
    return Outcome(EXIT_OK, report)


async def rollout(
    store: Store,
    *,
    step: str,
    key: str,
    operators: Operators,
    release: str | None = None,
    hosts: Sequence[str] | None = None,
    reason: str | None = None,
    expires_s: float = DEFAULT_EXPIRES_S,
    sign: Signer = ssh_sign,
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> Outcome:
    """Sign `step` (BEGIN, PROMOTE, ABORT, or SIGN: whatever is pending) of the node's
    rollout: record it pending, or complete a pending one (see module)."""
    node = store.node
    rs = RolloutStore(store.redis, node)
    snap = await store.snapshot()
    read = await rs.read()
    by_host = reported_releases(quorum_of(snap, alive_ms).hosts)
    rec = read.record
    current, refusal, detail = ro.verify_record(operators, node, rec)
    if rec.get("phase") in ro.ACTIVE and current is None:
        # Exempts nothing; an abort (always safe to sign) is what clears it.
        current = unverified(rec)
        if step in (ro.BEGIN, ro.PROMOTE) or current is None:
            return await _refused(
                store, step, reason, f"the stored rollout does not verify ({refusal}: {detail})",
                "refused: the stored rollout record does not verify against the operators file "
                f"({refusal}: {detail}); it exempts nothing. Abort it with two operators "
                "(`rollout --abort`) before a new rollout",
            )  # fmt: skip
    pending, first_sig, first, void = _usable_pending(read, operators, node, snap.now_ms)
    if step == SIGN:
        if pending is None:
            why = void or "no rollout step is pending"
            return Outcome(EXIT_USAGE, {"node": node}, f"nothing to sign: {why}")
        step = pending.step
    want: ro.RolloutRequest | str = _wanted(
        node, step, rec, current, snap.roster, by_host, release, hosts, reason, pending,
        snap.now_ms + to_ms(expires_s),
    )  # fmt: skip
    if isinstance(want, str):
        return await _refused(store, step, reason, want, f"refused: {want}")
    if pending is not None and want != pending:
        void = f"the pending {pending.step} by {first} signs other terms; this call replaces it"
        pending = None
    req = pending or want
    message = req.encode()
    try:
        signature = await sign(key, message)
    except SignError as e:
        return Outcome(EXIT_USAGE, {"node": node, "refused": "cannot sign"}, f"rollout: {e}")
    try:
        me = verify(operators, message, signature)
    except SignatureError as e:
        return await _refused(
            store, step, reason, "signature refused",
            f"refused: your signature does not verify against the operators file ({e}); "
            "ask for your public key to be added to it",
        )  # fmt: skip
    if pending is None or first is None:
        why = await rs.request(
            step=req.step, seq=req.seq, message=message, signature=signature, principal=me,
            expires_ms=req.expires_ms, reason=req.reason,
        )  # fmt: skip
        if why:  # audited by the script
            return _void(node, why, f"refused: the rollout changed while signing ({why})")
        report = _report(node, await rs.read(), snap.aggregator, by_host)
        note = f"({void})\n" if void else ""
        return Outcome(EXIT_PENDING, report, note + _pending_message(node, req, me))
    if me == first:
        report = _report(node, read, snap.aggregator, by_host)
        return Outcome(
            EXIT_PENDING,
            report,
            f"still pending: {me} already signed this step; it needs a second, distinct "
            "operator.\n" + _pending_message(node, req, me),
        )
    approvers = sorted({first, me})
    why = await rs.step(
        step=req.step, seq=req.seq, proof=Proof(message, (first_sig, signature)).to_text(),
        approvers=approvers, expires_ms=req.expires_ms, from_release=req.from_release,
        to_release=req.to_release, hosts=req.hosts, reason=req.reason,
    )  # fmt: skip
    if why:  # audited by the script
        words = {"moved": "the rollout changed since", "expired": "it expired"}
        return _void(node, why, f"refused: the step is void ({words.get(why, why)}); run it again")
    report = _report(node, await rs.read(), snap.aggregator, by_host)
    report["approvers"] = approvers
    return Outcome(EXIT_OK, report, _done_message(req, approvers))


def _wanted(
    node: str,
    step: str,
    rec: dict[str, str],
    current: ro.Rollout | None,
    roster: Sequence[str],
    by_host: dict[str, str],
    release: str | None,
    hosts: Sequence[str] | None,
    reason: str | None,
    pending: ro.RolloutRequest | None,
    expires_ms: int,
) -> ro.RolloutRequest | str:
    """The step this call signs, or why it cannot be signed. Options not given take the
    pending step's terms (the second operator need not repeat them)."""
    same = pending if pending is not None and pending.step == step else None
    why = reason if reason is not None else (same.reason if same else "")
    if step == ro.BEGIN:
        if current is not None:
            return f"rollout {current.seq} is {current.phase}: promote or abort it first"
        release = release or (same.to_release if same else "")
        canary = tuple(sorted(set(hosts))) if hosts else (same.hosts if same else ())
        if not ro.DIGEST_RE.fullmatch(release or ""):
            return "--release must be a release digest (64 hex digits, from `status --json`)"
        off = sorted(set(canary) - set(roster))
        if not canary or off:
            return f"--hosts must name roster hosts (not on the roster: {','.join(off)})"
        start = ro.start_release(roster, by_host, rec.get("approved", ""), canary)
        if not start:
            return "the node has no approved release and its hosts do not run one release"
        seq = int(rec["seq"]) + 1 if rec.get("seq", "").isdigit() else 1
        req = ro.RolloutRequest(node, step, seq, start, release, canary, why, expires_ms)
    else:
        if current is None:
            return f"no rollout is in progress to {step}"
        if step == ro.PROMOTE and current.phase != ro.CANARY:
            return f"rollout {current.seq} is already {current.phase}"
        req = ro.RolloutRequest(
            node, step, current.seq, current.from_release, current.to_release, current.hosts,
            why, expires_ms,
        )  # fmt: skip
    if same is not None and (same.terms(), same.reason) == (req.terms(), req.reason):
        return same  # the very bytes the first operator signed
    return ro.request_problem(req) or req


def _usable_pending(
    read: RolloutRead, operators: Operators, node: str, now_ms: int
) -> tuple[ro.RolloutRequest | None, str, str | None, str]:
    """The pending step if it can still be completed: (request, first signature, who, why
    an existing one is void)."""
    p = read.pending
    if not p:
        return None, "", None, ""
    who = p.get("principal", "?")
    try:
        req = ro.RolloutRequest.decode(p.get("msg", "").encode("ascii", "replace"))
        first = verify(operators, req.encode(), p.get("sig", ""))
    except (ProofError, SignatureError) as e:
        return None, "", None, f"the pending step by {who} is void: {e}"
    if req.node != node:
        return None, "", None, f"the pending step by {first} is for another node"
    if now_ms > req.expires_ms:
        return None, "", None, f"the pending step by {first} expired"
    return req, p.get("sig", ""), first, ""


def _report(
    node: str, read: RolloutRead, aggregator: dict[str, str], by_host: dict[str, str]
) -> dict[str, Any]:
    from killswitch.core.node.release import releases

    report: dict[str, Any] = {"node": node, "rollout": rollout_json(read, aggregator)}
    report["releases"] = releases(by_host)
    return report


def _pending_message(node: str, req: ro.RolloutRequest, signed: str) -> str:
    return (
        f"PENDING: rollout {req.step} of node {node} signed by {signed}; it waits for a "
        f"second, distinct operator until {iso_time(req.expires_ms)}.\n"
        f"  rollout {req.seq}: {req.from_release[:12]} -> {req.to_release[:12]} on canary hosts "
        f"{','.join(req.hosts)}, reason {req.reason!r}\n"
        "The second operator runs, at their own keyboard, with their own key:\n"
        f"  killswitch rollout --node {node} --key PATH-TO-THEIR-KEY"
    )


def _done_message(req: ro.RolloutRequest, approvers: Sequence[str]) -> str:
    who = " and ".join(approvers)
    if req.step == ro.BEGIN:
        return (
            f"rollout {req.seq} begun, signed by {who}: {','.join(req.hosts)} may run "
            f"{req.to_release[:12]}; every other host must keep {req.from_release[:12]}"
        )
    if req.step == ro.PROMOTE:
        return (
            f"rollout {req.seq} promoted, signed by {who}: every host may run "
            f"{req.to_release[:12]}; it completes once all do"
        )
    return (
        f"rollout {req.seq} aborted, signed by {who}: every host must run "
        f"{req.from_release[:12]} again (a host still on {req.to_release[:12]} is a split)"
    )


async def _refused(store: Store, step: str, reason: str | None, what: str, message: str) -> Outcome:
    """A refusal decided here (not in the script) is audited too."""
    await audit_refusal(store, f"rollout_{step}", "", reason or "", what)
    return _void(store.node, what, message)


def _void(node: str, what: str, message: str) -> Outcome:
    return Outcome(EXIT_REFUSED, {"node": node, "refused": what}, message)
