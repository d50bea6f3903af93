"""Every Redis key and channel name killswitch uses is built here, and only here.

All keys of node N carry the hash tag `{N}` so one Lua script can touch them all on Redis
Cluster. A host's own keys sit under `ks:{N}:h:<host>:` so a Redis ACL can confine each
sidecar to its own keys plus read access to the node state (`store/acl.py` builds the users;
once per boot a sidecar also SADDs its name to the node's `hosts` set, so off-roster hosts
are found).

Callers pass names already checked by `killswitch.core.node.names`; this module never validates.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "ks"
NODES_KEY = f"{PREFIX}:nodes"  # set of node names an aggregator has stored (fleet views)
# String: the aggregator instance holding the fleet leader lease (runs the fleet volume rule).
FLEET_LEADER_KEY = f"{PREFIX}:fleet:leader"


@dataclass(frozen=True, slots=True)
class NodeKeys:
    """Key names of one node."""

    node: str

    @property
    def base(self) -> str:
        return f"{PREFIX}:{{{self.node}}}"

    @property
    def state(self) -> str:
        """Hash: state, epoch, ver, reason, actor, cause, ts_ms, armed_ms, approvers, proof.

        `proof` is the last signed arm (message and signatures); a kill leaves it in place.
        """
        return f"{self.base}:state"

    @property
    def roster(self) -> str:
        """Set of host names the node is expected to have."""
        return f"{self.base}:roster"

    @property
    def audit(self) -> str:
        """Append-only stream of arm, kill, trip and roster changes."""
        return f"{self.base}:audit"

    @property
    def pending_arm(self) -> str:
        """Hash: a signed arm request waiting for a second operator (expires with its TTL)."""
        return f"{self.base}:arm:pending"

    @property
    def rollout(self) -> str:
        """Hash: the node's rollout (seq, phase, from, to, hosts, the signed steps) and its
        approved release; a finished rollout stays as history until the next begins."""
        return f"{self.base}:rollout"

    @property
    def pending_forget(self) -> str:
        """Hash: a signed `forget --node` waiting for a second operator (expires with its TTL)."""
        return f"{self.base}:forget:pending"

    @property
    def pending_rollout(self) -> str:
        """Hash: a signed rollout step waiting for a second operator (expires with its TTL)."""
        return f"{self.base}:rollout:pending"

    @property
    def hosts(self) -> str:
        """Set of every host that has reported, on the roster or not (finds `unlisted` hosts)."""
        return f"{self.base}:hosts"

    @property
    def audit_head(self) -> str:
        """Hash: seq, hash and id of the audit chain's last entry, so a cut tail shows."""
        return f"{self.base}:audit:head"

    @property
    def events(self) -> str:
        """Pub/sub channel: kills and arms (an accelerator only, never relied on)."""
        return f"{self.base}:events"

    @property
    def confirms(self) -> str:
        """Pub/sub channel: host confirmations (wakes a waiting `kill`)."""
        return f"{self.base}:confirms"

    @property
    def scopes(self) -> str:
        """Hash: active scoped kills (`host:<H>`, `symbol:<S>`) and their version `_ver`."""
        return f"{self.base}:scopes"

    @property
    def baseline(self) -> str:
        """Hash: the aggregator's learned baseline, so it survives a restart."""
        return f"{self.base}:agg:baseline"

    @property
    def leader(self) -> str:
        """String: the aggregator instance holding the leader lease."""
        return f"{self.base}:agg:leader"

    @property
    def aggregator(self) -> str:
        """Hash: the acting aggregator's published view (limits, rule levels, shadow)."""
        return f"{self.base}:agg:view"

    def host(self, host: str) -> HostKeys:
        return HostKeys(self.node, host)


@dataclass(frozen=True, slots=True)
class HostKeys:
    """Key names one sidecar writes; all under one per-host prefix."""

    node: str
    host: str

    @property
    def prefix(self) -> str:
        return f"{PREFIX}:{{{self.node}}}:h:{self.host}:"

    @property
    def report(self) -> str:
        """Hash: the host's last report (counts, view, epoch, server time of the report)."""
        return f"{self.prefix}report"

    @property
    def flow(self) -> str:
        """Stream of order-count deltas, one entry per flush with orders; IDs are server time."""
        return f"{self.prefix}flow"

    @property
    def confirm(self) -> str:
        """Hash: the host's positive confirmation of the last node state it applied."""
        return f"{self.prefix}confirm"
