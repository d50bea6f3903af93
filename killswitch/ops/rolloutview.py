"""What operator commands read of a node's rollout: the `rollout` object of `status --json`,
the release check `arm` makes, and the release an arm approves.

`status` verifies no signature (it loads no operators file and must stay fast): it shows the
record as stored, and whether the acting aggregator, which does verify, honours it. `arm`
verifies the record itself against its operators file before it lets a rollout exempt any
host from the version vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from killswitch.core.node.bounds import uint_or
from killswitch.core.node.release import Split
from killswitch.core.node.roster import HostStatus, reported_releases
from killswitch.core.proof import rollout as ro
from killswitch.core.proof.armproof import ProofError
from killswitch.store.rollout import RolloutRead, RolloutStore
from killswitch.store.store import Store

if TYPE_CHECKING:
    from killswitch.core.proof.sshsig import Operators


def rollout_json(read: RolloutRead, aggregator: Mapping[str, str]) -> dict[str, Any] | None:
    """The record as `status --json` gives it (None: the node never had a rollout)."""
    rec = read.record
    if not rec and not read.pending:
        return None
    phase = rec.get("phase", "") or "none"
    signed_by = {
        s: [p for p in rec.get(f"{s}_by", "").split(",") if p]
        for s in ro.STEPS
        if rec.get(f"{s}_by")
    }
    out: dict[str, Any] = {
        "phase": phase,
        "seq": int(rec["seq"]) if rec.get("seq", "").isdigit() else 0,
        "from": rec.get("from", ""),
        "to": rec.get("to", ""),
        "hosts": [h for h in rec.get("hosts", "").split(",") if h],
        "signed_by": signed_by,
        "reason": rec.get("reason", ""),
        "approved": rec.get("approved", ""),
        "verified": honoured(rec, aggregator),
        "refusal": aggregator.get("rollout_refusal", "") if phase in ro.ACTIVE else "",
        "pending": pending_json(read.pending) if read.pending else None,
    }
    return out


def honoured(rec: Mapping[str, str], aggregator: Mapping[str, str]) -> bool | None:
    """Whether the acting aggregator verified this active record (None: not active, or no
    aggregator has looked at it yet)."""
    if rec.get("phase") not in ro.ACTIVE or "rollout_seq" not in aggregator:
        return None
    if uint_or(aggregator.get("tick_ms")) <= uint_or(rec.get("ts_ms")):
        return None  # its last tick read the record before this change
    return (aggregator.get("rollout_seq"), aggregator.get("rollout_phase")) == (
        rec.get("seq"),
        rec.get("phase"),
    )


def pending_json(pending: Mapping[str, str]) -> dict[str, Any]:
    """A pending step as status shows it (what the first operator signed)."""
    by = pending.get("principal", "")[:64]
    try:
        req = ro.RolloutRequest.decode(pending.get("msg", "").encode("ascii", "replace"))
    except ProofError as e:
        return {"by": by, "error": str(e)}
    return {
        "by": by,
        "step": req.step,
        "seq": req.seq,
        "from": req.from_release,
        "to": req.to_release,
        "hosts": list(req.hosts),
        "reason": req.reason,
        "expires_at": datetime.fromtimestamp(req.expires_ms / 1000.0, UTC).isoformat(
            timespec="milliseconds"
        ),
    }


def unverified(rec: Mapping[str, str]) -> ro.Rollout | None:
    """The record's plain fields as a rollout: only for display, once an aggregator vouched."""
    if rec.get("phase") not in ro.ACTIVE or not rec.get("seq", "").isdigit():
        return None
    hosts = tuple(h for h in rec.get("hosts", "").split(",") if h)
    return ro.Rollout(
        int(rec["seq"]), rec["phase"], rec.get("from", ""), rec.get("to", ""), hosts, {}
    )


async def annotate_status(
    store: Store,
    statuses: Mapping[str, HostStatus],
    roster: Sequence[str],
    agg: Mapping[str, str],
    report: dict[str, Any],
) -> None:
    """Add `rollout` to a status report and judge `release_split` the way the aggregator
    does: with the approved release, and with the rollout when the aggregator honours it."""
    read = await RolloutStore(store.redis, store.node).read()
    report["rollout"] = rollout_json(read, agg)
    rec = read.record
    rollout = unverified(rec) if honoured(rec, agg) else None
    cut = ro.check(roster, reported_releases(statuses), rec.get("approved", ""), rollout)
    report["release_split"] = split_json(cut, rollout)


def split_json(cut: Split | None, rollout: ro.Rollout | None) -> dict[str, Any] | None:
    if cut is None:
        return None
    return {"majority": cut.majority, "odd": dict(cut.odd), "reason": ro.describe(cut, rollout)}


async def release_gate(
    store: Store,
    operators: Operators,
    roster: Sequence[str],
    statuses: Mapping[str, HostStatus],
    aggregator: Mapping[str, str],
) -> tuple[Split | None, ro.Rollout | None]:
    """`arm`'s version-vector check: the split, judged with a rollout only if its signatures
    verify against `operators` (a record written by hand exempts nothing), and only if the
    acting aggregator does not refuse that very record (it remembers rollouts it saw end, so
    an aborted one written back is refused; its word can only make `arm` stricter)."""
    rec = await RolloutStore(store.redis, store.node).record()
    rollout, _, _ = ro.verify_record(operators, store.node, rec)
    if (
        rollout is not None
        and aggregator.get("rollout_refusal")
        and aggregator.get("rollout_refused_seq") == str(rollout.seq)
    ):
        rollout = None
    cut = ro.check(roster, reported_releases(statuses), rec.get("approved", ""), rollout)
    return cut, rollout


async def approve_after_arm(
    store: Store, roster: Sequence[str], statuses: Mapping[str, HostStatus], actor: str
) -> None:
    """Record the release the roster ran when a signed arm executed (when none is yet)."""
    release = ro.approvable(roster, reported_releases(statuses))
    if release:
        await RolloutStore(store.redis, store.node).approve(release, actor)
