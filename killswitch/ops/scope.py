"""Scoped kills as operator functions: kill one host or one symbol, and lift them again.

A scoped kill leaves the node's state and epoch alone; it is proven by the hosts it
concerns (a host scope by that host, a symbol scope by every roster host) reporting that
they enforce the scope version the change created. Lifting takes the same two approvers as
arming the node, and is proven the same way.
"""

from __future__ import annotations

import time
from typing import Any

from killswitch.core.roster import not_ready_for_arm
from killswitch.core.scope import proven, valid_symbol
from killswitch.ops.control import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNCONFIRMED,
    EXIT_USAGE,
    POLL_S,
    Outcome,
    _quorum,
    node_report,
)
from killswitch.store.store import NodeSnapshot, Store


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
    _, ver, ts_ms = await store.scope(
        op="kill", kind=kind, value=value, actor=operator, reason=reason
    )
    return await _prove(store, kind, value, ver, ts_ms, timeout, "killed")


async def arm_scope(
    store: Store, *, kind: str, value: str, approvers: list[str], reason: str, timeout: float
) -> Outcome:
    distinct = sorted({a.strip().lower() for a in approvers if a.strip()})
    if len(distinct) < 2:
        return Outcome(
            EXIT_REFUSED,
            {"node": store.node, "refused": "two distinct approvers required"},
            "refused: lifting a scoped kill needs two distinct approvers, like arming",
        )
    before = await store.snapshot()
    why = check_scope(kind, value, before.roster)
    if why:
        return Outcome(EXIT_USAGE, {"node": store.node, "refused": why}, f"refused: {why}")
    q0 = _quorum(before)
    need = [value] if kind == "host" else list(before.roster)
    problems = {h: p for h, p in not_ready_for_arm(q0.hosts).items() if h in need}
    if problems:
        lines = "\n".join(f"  {h}: {p}" for h, p in sorted(problems.items()))
        return Outcome(
            EXIT_REFUSED,
            {"node": store.node, "refused": problems},
            f"refused: the hosts that must prove the lift are not all reporting:\n{lines}",
        )
    changed, ver, ts_ms = await store.scope(
        op="arm", kind=kind, value=value, actor="+".join(distinct), reason=reason,
        approvers=distinct,
    )  # fmt: skip
    out = await _prove(store, kind, value, ver, ts_ms, timeout, "lifted")
    out.report["changed"] = changed
    if not changed and out.code == EXIT_OK:
        out.message = f"{kind} {value} had no active scoped kill"
    return out


async def _prove(
    store: Store, kind: str, value: str, ver: int, ts_ms: int, timeout: float, what: str
) -> Outcome:
    deadline = time.monotonic() + timeout
    async with store.confirmations() as wake:  # hosts publish nothing for scopes: a poll
        while True:
            snap = await store.snapshot()
            done, missing = proven(kind, value, ver, snap.roster, _applied(snap))
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                break
            await wake.wait(min(POLL_S, left))
    report = node_report(snap, _quorum(snap))
    report["node"] = store.node
    report.update(
        scope={"kind": kind, "value": value, "ver": ver},
        confirmed=done,
        missing=missing,
        elapsed_s=round(max(snap.now_ms - ts_ms, 0) / 1000.0, 4),
    )
    if not missing:
        return Outcome(EXIT_OK, report)
    return Outcome(
        EXIT_UNCONFIRMED,
        report,
        f"NOT PROVEN: {kind} {value} {what}, but {', '.join(missing)} did not report "
        f"enforcing it within {timeout:g}s",
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
