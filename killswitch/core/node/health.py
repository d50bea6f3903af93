"""Whether a node's roster proves its state: the decision behind `status`'s exit code.

Pure: it takes the quorum already read and returns the hosts that do not agree, each with
one short reason. It never opens or closes anything; scripts and health checks read it.
"""

from __future__ import annotations

from collections.abc import Collection

from killswitch.core.node.roster import Quorum

ARMED, KILLED, UNARMED = "ARMED", "KILLED", "UNARMED"


def disagreements(
    state: str,
    q: Quorum,
    host_scoped: Collection[str] = (),
    unlisted_open: Collection[str] = (),
) -> dict[str, str]:
    """Roster hosts (and open off-roster hosts) that do not prove the node's `state`.

    ARMED: alive with an open gate (a gate opens only on a proof the host verified), unless
    a scoped kill closes that host on purpose. KILLED: alive, blocking and confirmed.
    UNARMED: alive and blocking. Any other state (junk in Redis) proves nothing: every
    roster host is named. An off-roster host with an open gate while the node is not ARMED
    is named too (`kill` refuses to call such a node contained).
    """
    out: dict[str, str] = {}
    for h in q.roster:
        s = q.hosts[h]
        if s.age_s is None:
            out[h] = "missing: has never reported"
        elif not s.alive:
            out[h] = f"stale: silent for {s.age_s:.1f}s"
        elif state not in (ARMED, KILLED, UNARMED):
            out[h] = "node state unreadable"
        elif state == ARMED and h in host_scoped:
            if s.gate == "open":
                out[h] = "open though a scoped kill closes it"
        elif state == ARMED and s.gate != "open":
            out[h] = f"blocking while ARMED ({s.proof or s.view or 'no proof'})"
        elif state != ARMED and s.gate == "open":
            out[h] = f"open while {state}"
        elif state == KILLED and h not in q.confirmed:
            why = q.contradicted.get(h)
            out[h] = f"contradicted: {why}" if why else "unconfirmed"
    if state != ARMED:
        for h in sorted(unlisted_open):
            out.setdefault(h, f"open while {state}, not on the roster")
    return out
