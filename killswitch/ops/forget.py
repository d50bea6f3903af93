"""`forget`: remove what an off-roster host left in Redis (`--host`, one operator, audited),
or remove a node from the fleet registry (`--node`, two operators, like `arm`).

`forget --node` is the only way out of what `kill --fleet` covers (a node's own credential
can add to the registry, never remove): the first operator's call records a signed request
(exit 5), a second, distinct operator's call completes it (0); a key outside the operators
file is refused (4). Both refuse a node or host that is still alive: forgetting is for what
was left behind, never a way to hide something that trades.
"""

from __future__ import annotations

from typing import Any

from killswitch.core.node.bounds import parse_uint
from killswitch.core.node.roster import DEFAULT_ALIVE_MS, host_status
from killswitch.core.proof.armproof import ProofError
from killswitch.core.proof.forget import ForgetRequest, key_fingerprint
from killswitch.core.proof.sshsig import Operators, SignatureError, verify
from killswitch.ops.arming import Signer
from killswitch.ops.control import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_USAGE,
    Outcome,
    iso_time,
)
from killswitch.ops.signing import SignError, ssh_sign
from killswitch.store.forget import NodeForget
from killswitch.store.store import NodeSnapshot, Store

DEFAULT_EXPIRES_S = 600.0
VIEW_FRESH_MS = 10_000  # an aggregator view younger than this: the node's aggregator runs


async def forget_host(
    store: Store, *, host: str, actor: str, reason: str, alive_ms: int = DEFAULT_ALIVE_MS
) -> Outcome:
    """Remove an off-roster host's report, flow, confirmation and seen-mark (audited)."""
    snap = await store.snapshot()
    report: dict[str, Any] = {"node": store.node, "host": host, "changed": False}
    if host not in snap.roster and host in snap.unlisted and _alive(snap, host, alive_ms):
        report["refused"] = "alive"
        await store.audit_event("refused", attempt="forget", actor=actor, actor_kind="claimed",
                                host=host, reason=reason, refused="alive")  # fmt: skip
        return Outcome(EXIT_REFUSED, report, f"refused: {host} is still reporting: stop it first")
    refusal = await NodeForget(store.redis, store.node).host(host, actor, "claimed", reason)
    if refusal:
        report["refused"] = refusal
        return Outcome(
            EXIT_REFUSED, report,
            f"refused: {host} is on the roster of {store.node}: only a signed arm "
            "(--roster) changes the roster; forget removes what off-roster hosts left",
        )  # fmt: skip
    report["changed"] = True
    return Outcome(EXIT_OK, report, f"forgot host {host} of node {store.node} (audited)")


def _alive(snap: NodeSnapshot, host: str, alive_ms: int) -> bool:
    report, confirm = snap.reports.get(host, {}), snap.confirms.get(host, {})
    return host_status(host, report, confirm, snap.now_ms, alive_ms).alive


async def forget_node(
    store: Store,
    *,
    key: str,
    operators: Operators,
    reason: str | None,
    expires_s: float = DEFAULT_EXPIRES_S,
    sign: Signer = ssh_sign,
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> Outcome:
    """Sign the removal of the node from the fleet registry: pending, or completed (module)."""
    node = store.node
    f = NodeForget(store.redis, node)
    snap = await store.snapshot()
    report: dict[str, Any] = {"node": node, "changed": False}
    alive = sorted(
        h for h in (*snap.roster, *snap.unlisted) if _alive(snap, h, alive_ms)
    )  # fmt: skip
    tick = parse_uint(snap.aggregator.get("tick_ms"))
    if tick is not None and snap.now_ms - tick < VIEW_FRESH_MS:
        alive.append(f"aggregator {snap.aggregator.get('instance', '?')[:64]}")
    if alive:
        report["refused"] = "alive"
        await store.audit_event("refused", attempt="forget_node", actor="", actor_kind="claimed",
                                reason=reason or "", refused=f"alive: {', '.join(alive)}")  # fmt: skip
        return Outcome(
            EXIT_REFUSED, report,
            f"refused: node {node} is alive ({', '.join(alive)}): forget removes only what "
            "was left behind; a live node stays covered by kill --fleet",
        )  # fmt: skip
    if not await f.registered():
        return Outcome(EXIT_OK, report, f"node {node} is not in the fleet registry")
    pending, first, first_key, void = _usable(await f.pending(), operators, node, snap.now_ms)
    if pending is not None and reason is not None and reason != pending.reason:
        pending, void = None, f"the pending request by {first} signs another reason; replaced"
    req = pending or ForgetRequest(node, reason or "", snap.now_ms + round(expires_s * 1000))
    message = req.encode()
    try:
        signature = await sign(key, message)
    except SignError as e:
        return Outcome(EXIT_USAGE, {"node": node, "refused": "cannot sign"}, f"forget: {e}")
    fp = key_fingerprint(signature)
    try:
        me = verify(operators, message, signature)
    except SignatureError as e:
        report["refused"] = "signature refused"
        await store.audit_event("refused", attempt="forget_node", actor="", actor_kind="signed",
                                key=fp, reason=req.reason, refused=f"signature: {e}")  # fmt: skip
        return Outcome(
            EXIT_REFUSED, report,
            f"refused: your signature does not verify against the operators file ({e})",
        )  # fmt: skip
    report["pending_forget"] = {"expires_at": iso_time(req.expires_ms), "reason": req.reason}
    second = (
        "The second operator runs, at their own keyboard, with their own key:\n"
        f"  killswitch forget --node {node} --key PATH-TO-THEIR-KEY"
    )
    if pending is None or first is None:
        refusal = await f.request(me, message.decode("ascii"), signature, req.expires_ms,
                                  req.reason, fp)  # fmt: skip
        if refusal:
            report["refused"] = refusal
            return Outcome(EXIT_REFUSED, report, f"refused: the request {refusal}")
        report["pending_forget"]["by"] = me
        note = f"({void})\n" if void else ""
        return Outcome(
            EXIT_PENDING, report,
            f"{note}PENDING: forget node {node} signed by {me}; it waits for a second, distinct "
            f"operator until {iso_time(req.expires_ms)}.\n{second}",
        )  # fmt: skip
    report["pending_forget"]["by"] = first
    if me == first:
        return Outcome(
            EXIT_PENDING, report,
            f"still pending: {me} already signed this request; it needs a second, distinct "
            f"operator.\n{second}",
        )  # fmt: skip
    approvers = sorted({first, me})
    refusal = await f.complete("+".join(approvers), message.decode("ascii"), req.reason,
                               f"{first_key},{fp}")  # fmt: skip
    if refusal:
        report["refused"] = refusal
        return Outcome(EXIT_REFUSED, report, "refused: the request is no longer pending")
    report.pop("pending_forget")
    report["changed"] = True
    report["approvers"] = approvers
    return Outcome(
        EXIT_OK, report,
        f"node {node} removed from the fleet registry, signed by {first} and {me}",
    )  # fmt: skip


def _usable(
    p: dict[str, str], operators: Operators, node: str, now_ms: int
) -> tuple[ForgetRequest | None, str | None, str, str]:
    """The pending request if it can still be completed: (request, who, key, why void)."""
    if not p:
        return None, None, "", ""
    who = p.get("principal", "?")[:64]
    try:
        req = ForgetRequest.decode(p.get("msg", "").encode("ascii", "replace"))
        first = verify(operators, req.encode(), p.get("sig", ""))
    except (ProofError, SignatureError) as e:
        return None, None, "", f"the pending request by {who} is void: {e}"
    if req.node != node:
        return None, None, "", f"the pending request by {first} is for another node"
    if now_ms > req.expires_ms:
        return None, None, "", f"the pending request by {first} expired"
    return req, first, key_fingerprint(p.get("sig", "")), ""
