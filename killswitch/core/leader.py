"""Which aggregator of a node acts: the leader lease, as pure decisions.

Pure: no Redis, no clock. The lease itself lives in Redis (`lua/lease.lua`, expiry on Redis
server time) and the trip script re-checks it atomically (fencing), so this module only
decides what one instance believes: it is leader until `ttl * SAFETY` after the renewal it
*sent* succeeded (monotonic seconds), never longer, and never after a reply naming someone else.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
