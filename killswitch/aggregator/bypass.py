"""A host whose network fence caught a connection attempt while the node was ARMED is killed
on its own (a scoped kill, cause `bypass`, audited), as `kill --host` would.

The sidecar cannot write the scopes hash (its Redis credential writes only its own keys), so
it closes its own gate at once and reports `bypass` ("<armed epoch> <uids>"); the acting
aggregator records the kill. Standbys never act.
"""

from __future__ import annotations

from typing import Any

from killswitch.core.node.bounds import uint_or
from killswitch.core.node.scope import parse_scopes
from killswitch.core.node.state import NodeRead, NodeState
from killswitch.store.reads import NodeSnapshot
from killswitch.store.store import Store

BYPASS = "bypass"  # the cause word (audit, trips_total, logs)


class BypassKills:
    """`tick()` once per aggregator tick with its snapshot."""

    def __init__(self, store: Store, log: Any, instance: str, on_kill: Any = None) -> None:
        self.store = store
        self.log = log
        self.instance = instance
        self.on_kill = on_kill  # called with no argument after each kill (a metric)
        self.done: set[tuple[str, int]] = set()  # (host, armed epoch) already killed
        self.kills = 0

    async def tick(self, snap: NodeSnapshot | None, state: NodeRead, leader: bool) -> None:
        if snap is None or not leader or state.state is not NodeState.ARMED:
            return
        killed = parse_scopes(snap.scopes).hosts
        for host in snap.roster:
            epoch_s, _, uids = snap.reports.get(host, {}).get("bypass", "").partition(" ")
            epoch = uint_or(epoch_s)
            if not epoch or epoch != state.epoch or host in killed or (host, epoch) in self.done:
                continue
            reason = f"bypass: uid {uids[:64] or 'unknown'} connected to a fenced endpoint"
            _, ver, _, _ = await self.store.scope(
                op="kill", kind="host", value=host, actor=f"aggregator:{self.instance}",
                reason=reason, cause=BYPASS,
            )  # fmt: skip
            self.done.add((host, epoch))
            self.kills += 1
            if self.on_kill is not None:
                self.on_kill()
            self.log.error("BYPASS_KILL", host=host, uid=uids, epoch=epoch, cause=BYPASS,
                           scope_ver=ver)  # fmt: skip
