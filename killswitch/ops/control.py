"""Operator actions: kill, arm, status, audit. Each returns an exit code and a JSON-able report.

These are plain async functions around `Store`; the CLI only parses and prints. A kill is
done when every roster host confirmed it, never when the message was published.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from killswitch.core.armproof import ArmRequest, ProofError, roster_of
from killswitch.core.leader import instance_of
from killswitch.core.roster import Quorum, epoch_floor, host_status, quorum
from killswitch.core.ruleview import decode_view
from killswitch.core.state import NodeState
from killswitch.store.store import NodeSnapshot, Store

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNCONFIRMED = 3
EXIT_REFUSED = 4
EXIT_PENDING = 5

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
        "changed_at": iso_time(int(st.get("ts_ms") or 0)),
        "stale_hosts": stale,
        "server_time": iso_time(snap.now_ms),
        # The aggregator instance holding the leader lease ("" none: nothing trips by itself).
        "leader": instance_of(snap.leader),
        # As the acting aggregator last checked it; None: not known (no aggregator, or CONFIG
        # and INFO both refused).
        "redis_durable": _durable(snap.aggregator.get("redis_durable", "")),
    }
    if snap.aggregator:
        report["aggregator"] = decode_view(snap.aggregator)
    # The roster of the last signed arm (unverified here: gates and the aggregator verify).
    signed = roster_of(st.get("proof", ""))
    report["signed_roster"] = list(signed)
    report["roster_signed"] = bool(signed) and set(signed) <= set(q.roster)
    proposed = snap.aggregator.get("roster_mismatch", "")
    if proposed:
        report["roster_mismatch"] = proposed.split(",")
    report["unlisted"] = {
        h: host_status(h, snap.reports.get(h, {}), snap.confirms.get(h, {}), snap.now_ms).to_json()
        for h in snap.unlisted
    }
    if snap.pending:
        report["pending_arm"] = pending_json(snap.pending)
    return report


def pending_json(pending: dict[str, str]) -> dict[str, Any]:
    """A pending arm request as status shows it (what the first operator signed)."""
    try:
        req = ArmRequest.decode(pending.get("msg", "").encode("ascii", "replace"))
    except ProofError as e:
        return {"by": pending.get("principal", ""), "error": str(e)}
    return {
        "by": pending.get("principal", ""),
        "lifts_epoch": req.lifts_epoch,
        "epoch": req.epoch,
        "roster": list(req.roster),
        "reason": req.reason,
        "expires_at": iso_time(req.expires_ms),
    }


async def status(store: Store) -> Outcome:
    snap = await store.snapshot()
    q = quorum_of(snap)
    report = node_report(snap, q)
    report["node"] = store.node
    return Outcome(EXIT_OK, report)


async def kill(
    store: Store, *, reason: str, operator: str, timeout: float, cause: str = "operator"
) -> Outcome:
    async with confirm_listener(store) as wake:
        before = await store.snapshot()
        # Containment is proven against the stored roster and the last signed one: a roster
        # narrowed in Redis by hand cannot make a kill look complete.
        roster = tuple(sorted({*before.roster, *roster_of(before.state.get("proof", ""))}))
        floor = max(epoch_floor(quorum_of(before).hosts), _unlisted_floor(before))
        res = await store.kill(actor=operator, reason=reason, cause=cause, floor=floor)
        replicated = asyncio.create_task(_replicas_acked(store, min(timeout, REPLICA_WAIT_S)))
        snap, q = await wait_for_quorum(store, roster, wake, timeout)
        acked = await replicated
    report = node_report(snap, q)
    report["node"] = store.node
    report["ver"] = res.ver
    report["replicas_acked"] = acked
    open_unlisted = sorted(h for h, s in report["unlisted"].items() if s["gate"] == "open")
    if q.complete and not open_unlisted:
        report["elapsed_s"] = round(max(q.last_confirm_ms - res.ts_ms, 0) / 1000.0, 4)
        return Outcome(EXIT_OK, report, _unlisted_note(report))
    report["elapsed_s"] = round(max(snap.now_ms - res.ts_ms, 0) / 1000.0, 4)
    if q.complete:
        return Outcome(
            EXIT_UNCONFIRMED,
            report,
            "NOT CONTAINED: every roster host confirmed, but hosts NOT on the roster report an "
            f"open gate: {', '.join(open_unlisted)}",
        )
    if not q.roster:
        return Outcome(
            EXIT_UNCONFIRMED,
            report,
            "kill recorded, but the node has no roster: nothing can prove containment. "
            "Start the aggregator with --hosts.",
        )
    return Outcome(EXIT_UNCONFIRMED, report, missing_message(q, timeout))


async def audit(store: Store, limit: int | None) -> Outcome:
    entries = await store.audit(limit)
    rows = []
    for entry_id, f in entries:
        ts = int(f.get("ts_ms") or entry_id.split("-", 1)[0])
        row: dict[str, Any] = {"id": entry_id, "time": iso_time(ts), "action": f.get("action", "")}
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


def _unlisted_floor(snap: NodeSnapshot) -> int:
    """The highest epoch an off-roster host reports (a new epoch goes above it too)."""
    return max((_int(snap.reports.get(h, {}).get("max_epoch")) for h in snap.unlisted), default=0)


def _unlisted_note(report: dict[str, Any]) -> str:
    hosts = report.get("unlisted") or {}
    if not hosts:
        return ""
    return (
        f"note: {len(hosts)} host(s) report but are not on the roster (blocked as unlisted, "
        f"their orders counted): {', '.join(sorted(hosts))}"
    )


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


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


def quorum_of(snap: NodeSnapshot) -> Quorum:
    st = snap.state
    return quorum(
        snap.roster, int(st.get("epoch") or 0), int(st.get("ver") or 0),
        snap.reports, snap.confirms, snap.now_ms,
    )  # fmt: skip


def missing_message(q: Quorum, timeout: float) -> str:
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


@contextlib.asynccontextmanager
async def confirm_listener(store: Store):  # type: ignore[no-untyped-def]
    """An event set whenever a host publishes a confirmation (subscribed before acting)."""
    wake = asyncio.Event()
    pubsub = store.redis.pubsub()
    task: asyncio.Task[None] | None = None
    try:
        await pubsub.subscribe(store.keys.confirms)

        async def pump() -> None:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    wake.set()

        task = asyncio.create_task(pump())
    except Exception:
        pass  # without pub/sub we still poll; it only costs latency
    try:
        yield wake
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await pubsub.aclose()  # type: ignore[no-untyped-call]


async def wait_for_quorum(
    store: Store, roster: Sequence[str], wake: asyncio.Event, timeout: float
) -> tuple[NodeSnapshot, Quorum]:
    deadline = time.monotonic() + timeout
    while True:
        wake.clear()
        snap = await store.snapshot(roster)
        q = quorum_of(snap)
        left = deadline - time.monotonic()
        if q.complete or left <= 0 or not roster:
            return snap, q
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), min(POLL_S, left))


def _durable(flag: str) -> bool | None:
    return None if flag == "" else flag == "1"


def iso_time(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds")
