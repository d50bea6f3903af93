"""Which aggregator of a node acts: the leader lease, as pure decisions.

Pure: no Redis, no clock. The lease itself lives in Redis (`lua/lease.lua`, expiry on Redis
server time) and the trip script re-checks it atomically (fencing), so this module only
decides what one instance believes: it is leader until `ttl * SAFETY` after the renewal it
*sent* succeeded (monotonic seconds), never longer, and never after a reply naming someone else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from killswitch.core.node.bounds import parse_uint

# A local belief ends before the Redis lease does: the renewal's reply may have been slow.
SAFETY = 0.75


@dataclass(frozen=True, slots=True)
class LeaseReply:
    """What the lease script answered."""

    held: bool  # the caller holds the lease after the call
    holder: str  # token of the holder ("" if none)
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Leadership:
    """What one aggregator instance knows about its node's leader lease."""

    token: str  # "<instance> <nonce>": unique per process even if two share an instance name
    ttl_s: float
    held_until: float = 0.0  # monotonic deadline of this instance's belief that it leads
    holder: str = ""  # token of the holder as last read ("" unknown or none)
    acquired: bool = False  # the last reply said this instance held the lease

    @property
    def instance(self) -> str:
        return instance_of(self.token)

    def is_leader(self, now: float) -> bool:
        return now < self.held_until


def make_token(instance: str, nonce: str) -> str:
    return f"{instance} {nonce}"


def instance_of(token: str) -> str:
    """The instance name inside a lease token ("" for none)."""
    return token.rpartition(" ")[0] if " " in token else token


def on_reply(lead: Leadership, sent: float, reply: LeaseReply) -> tuple[Leadership, str]:
    """Apply a lease reply to a renewal sent at monotonic `sent`; returns the new belief and
    the transition to log: "LEADER_ACQUIRED", "LEADER_LOST" or ""."""
    # Transitions follow the replies, not the local belief: a leader frozen past its lease
    # wakes up with its belief run out, and still has to say that it lost the lease.
    was = lead.acquired
    if reply.held and reply.holder == lead.token:
        renewed = lead.held_until > sent
        new = replace(lead, held_until=sent + lead.ttl_s * SAFETY, holder=lead.token, acquired=True)
        return new, "" if (was and renewed) else "LEADER_ACQUIRED"
    new = replace(lead, held_until=0.0, holder=reply.holder, acquired=False)
    return new, "LEADER_LOST" if was else ""


def on_failure(lead: Leadership) -> Leadership:
    """A renewal that failed changes nothing: the belief simply runs out at `held_until`."""
    return lead


def on_fenced(lead: Leadership) -> Leadership:
    """The trip script said this instance no longer holds the lease: stop believing it."""
    return replace(lead, held_until=0.0)


# A trip the leader has not acted on is taken by a standby (cause `leader_silent`, an unfenced
# kill) after these many lease TTLs; a holder that never published a view under its lease
# token (no aggregator we know: a ghost lease written into Redis) gets the shorter bound.
# Both are above one TTL, so a leader that dies is taken over (`TRIP_TAKEN_OVER`) first.
SILENT_TTLS = 3.0
UNKNOWN_TTLS = 1.5
LEADER_SILENT = "leader_silent"  # trips_total cause of a standby's kill


def holder_doubt(holder: str, view_token: str, view_tick_ms: int, now_ms: int, ttl_ms: int) -> str:
    """Why the lease holder cannot be counted on to act: "unknown" (no aggregator published
    a view under its token), "silent" (its view is more than one TTL old), "" when it can (or
    when nobody holds the lease). Pure: the caller passes what it read on Redis time."""
    if not holder:
        return ""
    if view_token != holder:
        return "unknown"
    if view_tick_ms < 0 or now_ms - view_tick_ms > ttl_ms:
        return "silent"
    return ""


def silent_bound_ms(doubt: str, ttl_ms: int) -> int:
    """How long a breach may stay unacted by the lease holder before a standby kills."""
    return int(ttl_ms * (UNKNOWN_TTLS if doubt == "unknown" else SILENT_TTLS))


def view_doubt(holder: str, view: Mapping[str, str], now_ms: int) -> dict[str, Any]:
    """`leader_doubt` and `leader_view_age_s` for `status`, from the acting aggregator's
    published view (its tick on Redis time, its lease token and TTL)."""
    tick = parse_uint(view.get("tick_ms"))
    try:
        ttl_ms = int(float(view.get("lease_ttl_s") or 2.0) * 1000)
    except ValueError:
        ttl_ms = 2000
    age = None if tick is None else round(max(now_ms - tick, 0) / 1000, 3)
    doubt = holder_doubt(holder, view.get("lease", ""), -1 if tick is None else tick, now_ms,
                         ttl_ms)  # fmt: skip
    return {"leader_doubt": doubt, "leader_view_age_s": age}
