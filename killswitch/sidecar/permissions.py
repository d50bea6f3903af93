"""What a sidecar does when Redis's ACL refuses its round trip (NOPERM): it fails closed, as
on any failed round trip, and says why: the command Redis refused and the rule to add.

An ACL file from before a release that needs one more command (`+function|list`, or what
redis-py's Cluster client sends) refuses every round trip of the upgraded sidecars. They
block, as they must; this watch makes the cause plain instead of a generic SYNC_FAILED: an
`ACL_DENIED` log event (at once, then every `LOG_EVERY` refused rounds), `/healthz`, the
host's report (`status` shows it though the host is not alive: `hosts[H].acl`) and
`killswitch_acl_denials_total{permission}`. The next successful round trip clears it.
"""

from __future__ import annotations

from killswitch.sidecar.episode import LOG_EVERY, BlockEpisode, Host
from killswitch.store.noperm import Denial, redis_user

__all__ = ["FIELD", "LOG_EVERY", "AclWatch"]

FIELD = "acl"  # the host report's field that names the refused permission ("" none)


class AclWatch(BlockEpisode):
    """The sidecar's view of its Redis permissions: `problem` is "" while they suffice."""

    def __init__(self, host: Host) -> None:
        super().__init__(host, FIELD)
        self.user = redis_user(host.s.redis_url)
        self.denials: dict[str, int] = {}  # refused round trips by permission (for metrics)

    async def denied(self, d: Denial) -> bool:
        """Close the gate, count, log and report why; the caller's next round tries again."""
        self.denials[d.permission] = self.denials.get(d.permission, 0) + 1
        line, log = d.line(self.user), self.host.log
        return await self.block(line, lambda rounds: log.error(
            "ACL_DENIED", permission=d.permission, rule=d.rule, user=self.user, reason=line,
            rounds=rounds))  # fmt: skip

    async def granted(self) -> None:
        """A round trip succeeded: whatever was refused is allowed now."""
        await self.clear()
