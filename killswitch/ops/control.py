"""Operator actions: kill, arm, status, audit. Each returns an exit code and a JSON-able report.

These are plain async functions around `Store`; the CLI only parses and prints. A kill is
done when every roster host confirmed it, never when the message was published.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from killswitch.core.leader import instance_of
from killswitch.core.roster import (
    DEFAULT_ALIVE_MS,
    Quorum,
    epoch_floor,
    not_ready_for_arm,
    quorum,
)
from killswitch.core.ruleview import decode_view
from killswitch.core.state import NodeState
from killswitch.store.store import NodeSnapshot, Store, Wake

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNCONFIRMED = 3
EXIT_REFUSED = 4

REPLICA_WAIT_S = 1.0  # at most this long for a replica to acknowledge a kill (WAIT)
POLL_S = 0.05  # fallback poll while waiting; confirmations normally wake us via pub/sub


@dataclass
class Outcome:
    code: int
    report: dict[str, Any]
    message: str = ""


def node_report(snap: NodeSnapshot, q: Quorum) -> dict[str, Any]:
    """The CONTRACT's JSON shape for `kill`, `arm` and `status`, plus extras."""
    st = snap.state
    state = st.get("state") or NodeState.UNARMED.value
    stale = [h for h, s in q.hosts.items() if not s.alive or s.view == NodeState.STALE.value]
    report: dict[str, Any] = {
        "node": (snap.roster and st.get("node")) or "",
        "state": state,
        "epoch": int(st.get("epoch") or 0),
        "reason": st.get("reason", ""),
        "roster": list(q.roster),
        "confirmed": list(q.confirmed),
        "missing": list(q.missing),
        "hosts": {h: s.to_json() for h, s in q.hosts.items()},
        "actor": st.get("actor", ""),
        "cause": st.get("cause", ""),
        "changed_at": _iso(int(st.get("ts_ms") or 0)),
        "stale_hosts": stale,
        "server_time": _iso(snap.now_ms),
        # The aggregator instance holding the leader lease ("" none: nothing trips by itself).
        "leader": instance_of(snap.leader),
        # As the acting aggregator last checked it; None: not known (no aggregator, or CONFIG
        # and INFO both refused).
        "redis_durable": _durable(snap.aggregator.get("redis_durable", "")),
    }
    if snap.aggregator:
        report["aggregator"] = decode_view(snap.aggregator)
    return report


async def status(store: Store, *, alive_ms: int = DEFAULT_ALIVE_MS) -> Outcome:
    """The node now; a host counts as alive per `alive_ms`, the node's liveness bound."""
    snap = await store.snapshot()
    q = _quorum(snap, alive_ms)
    report = node_report(snap, q)
    report["node"] = store.node
    return Outcome(EXIT_OK, report)


async def kill(
    store: Store,
    *,
    reason: str,
    operator: str,
    timeout: float,
    cause: str = "operator",
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> Outcome:
    async with store.confirmations() as wake:
        before = await store.snapshot()
        floor = epoch_floor(_quorum(before, alive_ms).hosts)
        res = await store.kill(actor=operator, reason=reason, cause=cause, floor=floor)
        replicated = store.concurrently(_replicas_acked(store, min(timeout, REPLICA_WAIT_S)))
        snap, q = await _wait_for_quorum(store, before.roster, wake, timeout, alive_ms)
        acked = await replicated
    report = node_report(snap, q)
    report["node"] = store.node
    report["ver"] = res.ver
    report["replicas_acked"] = acked
    if q.complete:
        report["elapsed_s"] = round(max(q.last_confirm_ms - res.ts_ms, 0) / 1000.0, 4)
        return Outcome(EXIT_OK, report)
    report["elapsed_s"] = round(max(snap.now_ms - res.ts_ms, 0) / 1000.0, 4)
    if not q.roster:
        return Outcome(
            EXIT_UNCONFIRMED,
            report,
            "kill recorded, but the node has no roster: nothing can prove containment. "
            "Start the aggregator with --hosts.",
        )
    return Outcome(EXIT_UNCONFIRMED, report, _missing_message(q, timeout))


async def arm(
    store: Store,
    *,
    approvers: Sequence[str],
    reason: str,
    timeout: float,
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> Outcome:
    """Arm with a new epoch; refused unless every roster host is alive per `alive_ms`."""
    distinct = sorted({a.strip().lower() for a in approvers if a.strip()})
    if len(distinct) < 2:
        return Outcome(
            EXIT_REFUSED,
            {"node": store.node, "refused": "two distinct approvers required"},
            "refused: arming needs two distinct approvers (--approver A --approver B)",
        )
    before = await store.snapshot()
    q0 = _quorum(before, alive_ms)
    if not before.roster:
        return Outcome(
            EXIT_REFUSED,
            {"node": store.node, "refused": "no roster"},
            "refused: the node has no roster in Redis; start its aggregator with --hosts first",
        )
    problems = not_ready_for_arm(q0.hosts)
    if problems:
        report = node_report(before, q0)
        report["node"] = store.node
        report["refused"] = problems
        lines = "\n".join(f"  {h}: {why}" for h, why in sorted(problems.items()))
        return Outcome(
            EXIT_REFUSED,
            report,
            f"refused: every roster host must be alive and reporting before arming:\n{lines}",
        )
    async with store.confirmations() as wake:
        res = await store.arm(
            actor="+".join(distinct), reason=reason, approvers=distinct, floor=epoch_floor(q0.hosts)
        )
        snap, q = await _wait_for_quorum(store, before.roster, wake, timeout, alive_ms)
    report = node_report(snap, q)
    report["node"] = store.node
    report["changed"] = res.changed
    if q.complete:
        report["elapsed_s"] = round(max(q.last_confirm_ms - res.ts_ms, 0) / 1000.0, 4)
        return Outcome(EXIT_OK, report, "" if res.changed else "node was already ARMED")
    return Outcome(EXIT_UNCONFIRMED, report, _missing_message(q, timeout))


async def audit(store: Store, limit: int | None) -> Outcome:
    entries = await store.audit(limit)
    rows = []
    for entry_id, f in entries:
        ts = int(f.get("ts_ms") or entry_id.split("-", 1)[0])
        row: dict[str, Any] = {"id": entry_id, "time": _iso(ts), "action": f.get("action", "")}
        row["actor"] = f.get("actor", "")
        row["reason"] = f.get("reason", "")
        for k in ("epoch", "prev_epoch"):
            if f.get(k):
                row[k] = int(f[k])
        for k in ("cause", "approvers", "prev_state"):
            if f.get(k):
                row[k] = f[k].split(",") if k == "approvers" else f[k]
        rows.append(row)
    return Outcome(EXIT_OK, {"node": store.node, "entries": rows})


# -- helpers ---------------------------------------------------------------------------------


async def _replicas_acked(store: Store, timeout: float) -> int | None:
    """How many replicas hold the kill (`WAIT 1`), run while confirmations come in.

    Replication is asynchronous and WAIT does not make it safe: a failover may still lose
    the kill. Hosts that confirmed it stay blocked anyway (they remember its epoch); this
    number tells the operator how exposed the rest are. None: could not ask.
    """
    try:
        info: dict[str, Any] = await store.redis.info("replication")
        if int(info.get("connected_slaves", 0)) == 0:
            return 0  # WAIT would only sit out its timeout
        return int(await store.redis.wait(1, max(int(timeout * 1000), 1)))
    except Exception:
        return None


def _quorum(snap: NodeSnapshot, alive_ms: int = DEFAULT_ALIVE_MS) -> Quorum:
    st = snap.state
    return quorum(
        snap.roster, int(st.get("epoch") or 0), int(st.get("ver") or 0),
        snap.reports, snap.confirms, snap.now_ms, alive_ms,
    )  # fmt: skip


def _missing_message(q: Quorum, timeout: float) -> str:
    lines = []
    for h in q.missing:
        s = q.hosts[h]
        if s.age_s is None:
            why = "has never reported"
        elif not s.alive:
            why = f"silent for {s.age_s:.1f}s"
        else:
            why = f"reporting, but has not confirmed (its view: {s.view or '?'})"
        lines.append(f"  {h}: {why}")
    return (
        f"NOT CONTAINED: {len(q.missing)} of {len(q.roster)} roster hosts did not confirm "
        f"within {timeout:g}s:\n" + "\n".join(lines)
    )


async def _wait_for_quorum(
    store: Store,
    roster: Sequence[str],
    wake: Wake,
    timeout: float,
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> tuple[NodeSnapshot, Quorum]:
    deadline = time.monotonic() + timeout
    while True:
        wake.clear()
        snap = await store.snapshot(roster)
        q = _quorum(snap, alive_ms)
        left = deadline - time.monotonic()
        if q.complete or left <= 0 or not roster:
            return snap, q
        await wake.wait(min(POLL_S, left))


def _durable(flag: str) -> bool | None:
    return None if flag == "" else flag == "1"


def _iso(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds")
