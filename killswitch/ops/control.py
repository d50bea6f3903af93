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

from killswitch.core.enforce.fence import fence_view
from killswitch.core.enforce.frozen import freezing
from killswitch.core.node import release
from killswitch.core.node.bounds import MAX_EPOCH_JUMP, parse_uint, uint_or
from killswitch.core.node.health import disagreements
from killswitch.core.node.leader import instance_of, view_doubt
from killswitch.core.node.roster import (
    DEFAULT_ALIVE_MS,
    Quorum,
    epoch_floor,
    flat_hosts,
    host_status,
    implausible_reports,
    quorum,
    reported_releases,
)
from killswitch.core.node.scope import parse_scopes
from killswitch.core.node.state import NodeState
from killswitch.core.proof.armproof import ArmRequest, ProofError, roster_of
from killswitch.store.store import NodeSnapshot, Store, Wake
from killswitch.view.ruleview import decode_view

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
    if state not in (NodeState.ARMED.value, NodeState.KILLED.value, NodeState.UNARMED.value):
        state = "UNREADABLE"  # junk written by hand: every host blocks on it; `junk` names it
    stale = [h for h, s in q.hosts.items() if not s.alive or s.view == NodeState.STALE.value]
    report: dict[str, Any] = {
        "node": (snap.roster and st.get("node")) or "",
        "state": state,
        "epoch": uint_or(st.get("epoch")),
        "reason": st.get("reason", ""),
        "roster": list(q.roster),
        "confirmed": list(q.confirmed),
        "missing": list(q.missing),
        "flat": flat_hosts(q.roster, state, uint_or(st.get("epoch")), q.hosts),
        "fence": st.get("fence") == "1",  # the kill asked for the network kill fence
        # Scoped kills in force (kill --host / --symbol), whatever the node's state.
        "scopes": [s.to_json() for s in parse_scopes(snap.scopes).active],
        # confirmations the host's own report contradicts: not counted (host -> why)
        "contradicted": dict(q.contradicted),
        "hosts": {h: s.to_json() for h, s in q.hosts.items()},
        "actor": st.get("actor", ""),
        "cause": st.get("cause", ""),
        "changed_at": iso_time(uint_or(st.get("ts_ms"))),
        "stale_hosts": stale,
        "server_time": iso_time(snap.now_ms),
        # The aggregator instance holding the leader lease ("" none: nothing trips by itself).
        "leader": instance_of(snap.leader),
        # leader_doubt: "unknown" (no aggregator publishes under that lease) or "silent"
        **view_doubt(snap.leader, snap.aggregator, snap.now_ms),
        # As the acting aggregator last checked it; None: not known (no aggregator, or CONFIG
        # and INFO both refused).
        "redis_durable": _durable(snap.aggregator.get("redis_durable", "")),
    }
    report["fenced"], report["fence_failed"] = fence_view(
        q.roster, state, uint_or(st.get("epoch")), report["fence"], snap.reports
    )
    if snap.aggregator:
        report["aggregator"] = decode_view(snap.aggregator)
        # Blocked hosts whose subscribed trading processes did not report flat in time.
        report["not_flat"] = [h for h in snap.aggregator.get("not_flat", "").split(",") if h]
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
    junk = _junk(snap, q)
    if junk:
        report["junk"] = junk
    vector = reported_releases(q.hosts)
    report["releases"] = release.releases(vector)
    cut = release.split(q.roster, vector)
    report["release_split"] = (
        None if cut is None else {"majority": cut.majority, "odd": dict(cut.odd)}
    )
    return report


def _junk(snap: NodeSnapshot, q: Quorum) -> list[str]:
    """Values in Redis that are not what killswitch writes: named, never used."""
    out = []
    for name in ("epoch", "ver", "ts_ms", "armed_ms", "killed_ms"):
        if snap.state.get(name) not in (None, "") and parse_uint(snap.state[name]) is None:
            out.append(f"state.{name}={snap.state[name][:40]!r}")
    if snap.state.get("state") not in (None, "", "ARMED", "KILLED"):
        out.append(f"state.state={snap.state['state'][:40]!r}")
    for h, s in q.hosts.items():
        out.extend(f"{h}.{field}" for field in s.junk)
    stored = uint_or(snap.state.get("epoch"))
    out.extend(f"{h}.max_epoch implausible" for h in implausible_reports(q.hosts, stored))
    floor = epoch_floor(q.hosts)
    if floor and stored > floor + MAX_EPOCH_JUMP:
        out.append(f"state.epoch {stored} implausibly above every host's ({floor})")
    if snap.wrong_types:
        out.append(f"{snap.wrong_types} keys of the wrong type (read as empty)")
    if snap.leader and snap.leader_ttl_ms == -1:
        out.append("leader lease without TTL (the aggregator removes it)")
    return out


def pending_json(pending: dict[str, str]) -> dict[str, Any]:
    """A pending arm request as status shows it (what the first operator signed)."""
    try:
        req = ArmRequest.decode(pending.get("msg", "").encode("ascii", "replace"))
    except ProofError as e:
        return {"by": pending.get("principal", "")[:64], "error": str(e)}
    return {
        "by": pending.get("principal", "")[:64],
        "scope": req.scope,
        "lifts_epoch": req.lifts_epoch,
        "epoch": req.epoch,
        "roster": list(req.roster),
        "reason": req.reason,
        "expires_at": iso_time(req.expires_ms),
    }


async def status(store: Store, *, alive_ms: int = DEFAULT_ALIVE_MS) -> Outcome:
    """The node now; a host counts as alive per `alive_ms`, the node's liveness bound."""
    snap = await store.snapshot()
    q = quorum_of(snap, alive_ms)
    report = node_report(snap, q)
    report["node"] = store.node
    from killswitch.ops.rolloutview import annotate_status  # not on `kill`'s cold path

    await annotate_status(store, q.hosts, q.roster, snap.aggregator, report)
    return health_outcome(report, q, snap)


def health_outcome(report: dict[str, Any], q: Quorum, snap: NodeSnapshot) -> Outcome:
    """Exit 0 only when every roster host is alive and agrees with the node's state, else 3
    naming the hosts that do not (CONTRACT: `status` exit codes); `disagree` in the JSON."""
    scoped = parse_scopes(snap.scopes).active
    open_unlisted = [h for h, s in report["unlisted"].items() if s["gate"] == "open"]
    bad = disagreements(
        report["state"], q, {s.value for s in scoped if s.kind == "host"}, open_unlisted
    )
    for h, why in report.get("fence_failed", {}).items():  # a network fence not proven
        bad.setdefault(h, f"fence not proven: {why}")
    report["disagree"] = bad
    if not bad:
        return Outcome(EXIT_OK, report)
    node = report["node"]
    pairs = "; ".join(f"{node}/{h}: {why}" for h, why in bad.items())
    return Outcome(
        EXIT_UNCONFIRMED, report, f"NOT PROVEN: {len(bad)} host(s) do not agree: {pairs}"
    )


async def kill(
    store: Store,
    *,
    reason: str,
    operator: str,
    timeout: float,
    cause: str = "operator",
    alive_ms: int = DEFAULT_ALIVE_MS,
    fence: bool = False,
    actor_kind: str = "claimed",
    key: str = "",
) -> Outcome:
    """Kill the node and wait for every roster host's confirmation (and, with `fence`, for
    every roster host's proven network kill fence), at most `timeout` seconds. `actor_kind`
    says how the operator is known (`signed`: `key` is the verified key's fingerprint)."""
    async with store.confirmations() as wake:
        before = await store.snapshot()
        # Containment is proven against the stored roster and the last signed one: a roster
        # narrowed in Redis by hand cannot make a kill look complete.
        roster = tuple(sorted({*before.roster, *roster_of(before.state.get("proof", ""))}))
        floor = max(
            epoch_floor(quorum_of(before, alive_ms).hosts, uint_or(before.state.get("epoch"))),
            _unlisted_floor(before),
        )
        res = await store.kill(
            actor=operator, reason=reason, cause=cause, floor=floor, net_fence=fence,
            actor_kind=actor_kind, key=key,
        )  # fmt: skip
        replicated = store.concurrently(_replicas_acked(store, min(timeout, REPLICA_WAIT_S)))
        waited = time.monotonic()
        snap, q = await wait_for_quorum(store, roster, wake, timeout, alive_ms)
        if q.complete:
            left = timeout - (time.monotonic() - waited)
            snap, q = await _wait_after_quorum(store, roster, wake, left, alive_ms, fence, snap)
        acked = await replicated
    report = node_report(snap, q)
    report["node"] = store.node
    report["ver"] = res.ver
    report["replicas_acked"] = acked
    open_unlisted = sorted(h for h, s in report["unlisted"].items() if s["gate"] == "open")
    unfenced = report["fence_failed"] if fence else {}
    if q.complete and unfenced:
        report["elapsed_s"] = round(max(snap.now_ms - res.ts_ms, 0) / 1000.0, 4)
        return Outcome(
            EXIT_UNCONFIRMED, report, "NOT FENCED: every roster host confirmed it blocks, but "
            "these did not prove their network kill fence:\n"
            + "\n".join(f"  {h}: {why}" for h, why in sorted(unfenced.items())),
        )  # fmt: skip
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


# -- helpers ---------------------------------------------------------------------------------


async def audit_refusal(store: Store, attempt: str, actor: str, reason: str, why: str,
                        **extra: str) -> None:  # fmt: skip
    """A refused attempt goes into the audit chain too (who, what, why refused; `extra`:
    `key`, the presented key's fingerprint, and `actor_kind`)."""
    await store.audit_event("refused", attempt=attempt, actor=actor, reason=reason, refused=why,
                            **extra)  # fmt: skip


def _unlisted_floor(snap: NodeSnapshot) -> int:
    """The highest epoch an off-roster host reports (a new epoch goes above it too)."""
    return max(
        (uint_or(snap.reports.get(h, {}).get("max_epoch")) for h in snap.unlisted), default=0
    )


def _unlisted_note(report: dict[str, Any]) -> str:
    hosts = report.get("unlisted") or {}
    if not hosts:
        return ""
    return (
        f"note: {len(hosts)} host(s) report but are not on the roster (blocked as unlisted, "
        f"their orders counted): {', '.join(sorted(hosts))}"
    )


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


def quorum_of(snap: NodeSnapshot, alive_ms: int = DEFAULT_ALIVE_MS) -> Quorum:
    st = snap.state
    return quorum(
        snap.roster, uint_or(st.get("epoch")), uint_or(st.get("ver")),
        snap.reports, snap.confirms, snap.now_ms, st.get("state") or "", alive_ms,
    )  # fmt: skip


def missing_message(q: Quorum, timeout: float) -> str:
    lines = []
    for h in q.missing:
        s = q.hosts[h]
        if h in q.contradicted:
            why = f"CONTRADICTED: a confirmation is stored, but {q.contradicted[h]}"
        elif s.age_s is None:
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


async def wait_for_quorum(
    store: Store,
    roster: Sequence[str],
    wake: Wake,
    timeout: float,
    alive_ms: int = DEFAULT_ALIVE_MS,
) -> tuple[NodeSnapshot, Quorum]:
    """Wait until every roster host confirmed the node's current state, or `timeout`.

    Between full reads, a wake-up re-reads only the hosts that had not confirmed at the last
    one, while the state is the one that read saw: a kill of 1,000 hosts would otherwise read
    all 1,000 again for every batch of confirmations. Only a full read decides, and it is
    what is returned.
    """
    deadline = time.monotonic() + timeout
    pending: tuple[str, ...] = ()
    seen: tuple[str | None, ...] = ()
    while True:
        wake.clear()
        left = deadline - time.monotonic()
        if pending and left > 0:
            part = await store.progress(pending)
            if _version(part) == seen:
                pending = quorum_of(part, alive_ms).missing
                if pending:
                    await wake.wait(min(POLL_S, left))
                    continue
        snap = await store.snapshot(roster)
        q = quorum_of(snap, alive_ms)
        left = deadline - time.monotonic()
        if q.complete or left <= 0 or not roster:
            return snap, q
        pending, seen = q.missing, _version(snap)
        await wake.wait(min(POLL_S, left))


async def _wait_after_quorum(store: Store, roster: Sequence[str], wake: Wake, timeout: float,
                             alive_ms: int, fence: bool, snap: NodeSnapshot,
                             ) -> tuple[NodeSnapshot, Quorum]:  # fmt: skip
    """After the quorum (`snap`), until `timeout`: every roster host's kill fence proven (with
    `fence`) and its frozen flight-recorder file named (a trip after it confirmed). Polled;
    a read is kept only with the quorum complete: this wait never unproves the kill."""
    deadline = time.monotonic() + max(timeout, 0.0)
    while True:
        st = snap.state
        state, epoch = st.get("state") or "", uint_or(st.get("epoch"))
        failed = fence and fence_view(roster, state, epoch, True, snap.reports)[1]
        owed = freezing(roster, epoch, snap.reports, snap.confirms)
        if not (failed or owed) or time.monotonic() >= deadline:
            return snap, quorum_of(snap, alive_ms)
        await wake.wait(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
        wake.clear()  # before the read: a file named while it runs wakes the next wait
        read = await store.snapshot(roster)
        snap = read if quorum_of(read, alive_ms).complete else snap


def _version(snap: NodeSnapshot) -> tuple[str | None, ...]:
    return snap.state.get("state"), snap.state.get("epoch"), snap.state.get("ver")


def _durable(flag: str) -> bool | None:
    return None if flag == "" else flag == "1"


def iso_time(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds")
