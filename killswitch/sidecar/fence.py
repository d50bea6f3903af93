"""The network fence of a sidecar: installs the nftables table `killswitch`, reads it back,
raises and lifts the kill fence, and watches the refusal counter for bypasses.

What the rules are and what a listing proves is decided in `core.enforce.fence`; the tools
(libnftables JSON, `ss -K`) run in `nftables`, in the sidecar's network namespace or in
`--fence-netns NAME`. It never removes the table: a sidecar that dies leaves the fence as it
was, and the kill fence is lifted only after a verified arm opened the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from killswitch.core.enforce import fence as rules
from killswitch.core.enforce.fence import Bypass, FenceSpec, Listing
from killswitch.core.enforce.gate import Gate
from killswitch.core.node.scope import Scopes
from killswitch.core.node.state import NodeState
from killswitch.runtime.errors import StartupError
from killswitch.sidecar.nftables import FenceFailed, Tools

FENCE_POLL_S = 0.25  # how often the refusal counter is read (the bypass kill's delay)
_KILL_CMD = json.dumps(rules.kill_fence()).encode()  # built once: the kill's critical path


class _Sidecar(Protocol):
    @property
    def gate(self) -> Gate: ...
    @property
    def log(self) -> Any: ...
    @property
    def notify(self) -> Any: ...
    @property
    def scopes(self) -> Scopes: ...
    @property
    def s(self) -> Any: ...


class Fence:
    """The fence of one host: `start()` installs and proves the standing rules (keeping a kill
    fence it finds), `follow()` after every applied read raises or lifts the kill fence,
    `run()` reads the counters back. `report_fields()` is what the host tells Redis."""

    def __init__(
        self,
        spec: FenceSpec,
        sidecar: _Sidecar,
        *,
        on_kill: bool = False,
        tools: Tools | None = None,
        wake: Callable[[], None] = lambda: None,
        poll: float = FENCE_POLL_S,
    ) -> None:
        self.spec = spec
        self.sc = sidecar
        self.on_kill = on_kill
        self.tools = tools or Tools()
        self.wake = wake
        self.poll = poll
        self.listing = Listing()
        self.problem = ""  # why the fence is not as intended ("" proven)
        self.want_killed = False  # the kill fence should be up
        self.want_epoch = 0  # ... for this kill epoch (0: found up at start)
        self.fenced_epoch = 0  # the kill epoch the kill fence was proven for (0: none)
        self.found_killed = False  # the kill fence was up when this sidecar started
        self.refused = 0  # the standing rule's refusals, as last read
        self._baseline: int | None = None
        self.bypasses = 0  # refusals seen while ARMED (each kills this host)
        self.bypass: tuple[int, str] = (0, "")  # (ARMED epoch, uids) not yet enforced by Redis
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None

    @property
    def log(self) -> Any:
        return self.sc.log

    async def start(self) -> None:
        """Install the standing rules and prove them; a kill fence found stays up."""
        try:
            found = await self.tools.listing()
            await self.tools.apply(rules.standing(self.spec, found))
            self.listing = await self.tools.listing()
        except (FenceFailed, OSError) as e:
            raise StartupError(f"fence: cannot install the nftables table: {e}") from None
        self.found_killed = self.want_killed = self.listing.killed
        self._baseline = self.refused = self.listing.refused
        problems = rules.problems(self.listing, self.spec, killed=self.want_killed)
        if problems:
            raise StartupError(f"fence: installed but not proven: {'; '.join(problems)}")
        if self.found_killed:
            self.log.warning("FENCE_FOUND", killed=True, refused=self.refused)
        self._poller = asyncio.get_running_loop().create_task(self.run(), name="fence-poll")
        self.log.info(
            "FENCE", state=self.state, endpoints=[str(e) for e in self.spec.endpoints],
            allow_uids=list(self.spec.allow_uids), handles=dict(self.listing.rules),
        )  # fmt: skip

    @property
    def killed(self) -> bool:
        """The kill fence is up, as last read back."""
        return self.listing.killed

    @property
    def state(self) -> str:
        """`standing`, `killed` (the kill fence is up) or `failed` (not proven)."""
        if self.problem:
            return "failed"
        return "killed" if self.listing.killed else "standing"

    def follow(self, state: NodeState, epoch: int, requested: bool) -> None:
        """After a read was applied: a kill that asks for the fence (or any kill, with
        `--fence-on-kill`) raises it; an arm that opened the gate (verified) lifts it."""
        if state is NodeState.ARMED and self.bypass[0] and epoch > self.bypass[0]:
            self._release_bypass(epoch)
        if state is NodeState.KILLED and (requested or self.on_kill):
            if self.want_killed and self.want_epoch == epoch:
                return
            self.want_killed, self.want_epoch = True, epoch
        elif (
            state is NodeState.ARMED and self.sc.gate.is_open and self.want_killed
            and epoch > self.want_epoch  # an arm after this kill, never a read from before it
        ):  # fmt: skip
            self.want_killed, self.want_epoch = False, 0
        else:
            return
        if self.want_killed:
            # the kill's critical path: the rules go in now, from this handler, and only then
            # are connections cut and the table read back (raising needs no proof first)
            applied = self.tools.apply_now(_KILL_CMD)
            if applied.done() and applied.exception() is None:
                self.log.warning("FENCE_RAISED", epoch=self.want_epoch)  # in place now
        else:  # a lift is not urgent (and flushes two chains): the nftables thread does it
            applied = self.tools.apply_soon(rules.lift())
        self._spawn(self._converge(applied, self.want_killed, self.want_epoch))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="fence")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _converge(self, applied: asyncio.Future[str], killed: bool, epoch: int) -> None:
        logged = applied.done()  # applied at once: FENCE_RAISED was logged then, if it was
        try:
            await applied
            failed = ""
        except (FenceFailed, OSError) as e:
            failed = str(e)
        if killed and not failed and not logged:
            self.log.warning("FENCE_RAISED", epoch=epoch)
        async with self._lock:
            try:
                if failed:
                    raise FenceFailed(failed)
                if killed:
                    await self.tools.cut(self.spec.endpoints)
                self.listing = await self.tools.listing()
                problem = "; ".join(rules.problems(self.listing, self.spec, killed=killed))
            except (FenceFailed, OSError) as e:
                problem = str(e)
            self._proven(problem)
            if killed and not problem:
                self.fenced_epoch = epoch
                self.log.warning("FENCED", epoch=epoch, handles=dict(self.listing.rules))
            elif not killed and not problem:
                self.fenced_epoch = 0
                self.log.info("FENCE_LIFTED", handles=dict(self.listing.rules))
        self.wake()

    def _proven(self, problem: str) -> None:
        if problem and problem != self.problem:
            self.log.error("FENCE_NOT_PROVEN", reason=problem, killed=self.want_killed)
        elif not problem and self.problem:
            self.log.info("FENCE_PROVEN", state=self.state)
        if problem != self.problem:
            self.wake()
        self.problem = problem

    async def run(self) -> None:
        """Read the table back every `poll` seconds: counters, bypassing uids, the proof."""
        while True:
            await asyncio.sleep(self.poll)
            with contextlib.suppress(FenceFailed, OSError):  # named by the proof below
                await self.check()

    async def check(self) -> Bypass | None:
        """One read-back: prove the table, act on refusals since the last read."""
        async with self._lock:
            try:
                listing = await self.tools.listing()
            except (FenceFailed, OSError) as e:
                self._proven(str(e))
                raise
            self.listing = listing
            if not self._pending:  # a change under way is proven by its own read-back
                self._proven("; ".join(rules.problems(listing, self.spec, killed=self.want_killed)))
            seen = rules.refused_since(self._baseline, listing)
            self._baseline = self.refused = listing.refused
            if listing.bypass_uids:
                try:  # a failure here only risks naming these uids again
                    await self.tools.apply(rules.forget_bypass(listing.bypass_uids))
                except (FenceFailed, OSError) as e:
                    self.log.warning("FENCE_BYPASS_SET_NOT_EMPTIED", error=str(e))
        if seen is not None:
            self._refusals(seen)
        return seen

    def _refusals(self, seen: Bypass) -> None:
        view = self.sc.gate.view
        if view.state is NodeState.ARMED and self.sc.gate.is_open:
            self.bypasses += 1
            self.bypass = (view.epoch, seen.named())
            self.log.error(
                "FENCE_BYPASS", uid=seen.named(), attempts=seen.attempts, epoch=view.epoch,
                cause="bypass",
            )  # fmt: skip
            gate = self.sc.gate  # killed at once; the aggregator records it (audited)
            gate.set_scope(True, gate.killed_symbols, gate.scope_ver)
            self.sc.notify.changed()
            self.wake()
        else:
            self.log.warning("FENCE_REFUSED", uid=seen.named(), attempts=seen.attempts)

    def _release_bypass(self, epoch: int) -> None:
        """A verified arm above the bypass's epoch: two operators armed the node after it (the
        node was killed before the aggregator could record the host's kill), so the local
        hold goes; a scoped kill Redis holds for this host still holds it."""
        self.log.warning("FENCE_BYPASS_RELEASED", bypass_epoch=self.bypass[0], epoch=epoch)
        self.bypass = (0, "")
        gate = self.sc.gate
        isolated, _ = self.sc.scopes.for_host(self.sc.s.host)
        gate.set_scope(isolated, gate.killed_symbols, gate.scope_ver)
        self.sc.notify.changed()

    def holding(self, killed_by_redis: bool) -> bool:
        """Whether this host stays killed for a bypass Redis does not enforce yet; once a read
        enforces this host's scoped kill, the scope (lifted only by a verified arm) holds it."""
        if killed_by_redis and self.bypass[0]:
            self.bypass = (0, "")
        return bool(self.bypass[0])

    async def close(self) -> None:
        """Stop reading back; the rules stay (they outlive the sidecar by design)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for t in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.tools.close()

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        epoch, uids = self.bypass
        return (
            ("fence", self.state),
            ("fence_epoch", str(self.fenced_epoch)),
            ("fence_problem", self.problem),
            ("fence_refused", str(self.refused)),
            ("bypass", f"{epoch} {uids}" if epoch else ""),
        )


class FenceCollector(Collector):
    """The fence's metrics, read when scraped."""

    def __init__(self, fence: Fence | NoFence, node: str, host: str) -> None:
        self.fence, self.labels = fence, [node, host]

    def collect(self) -> Iterable[Any]:
        f, names = self.fence, ["node", "host"]
        refused = CounterMetricFamily(
            "killswitch_fence_refused", "Connections to fenced endpoints refused by the standing "
            "rule (uids not allowed), as read back from the nftables counter.", labels=names,
        )  # fmt: skip
        refused.add_metric(self.labels, f.refused)
        bypass = CounterMetricFamily(
            "killswitch_fence_bypasses", "Refused connection attempts seen while ARMED (each "
            "kills this host, cause bypass).", labels=names,
        )  # fmt: skip
        bypass.add_metric(self.labels, f.bypasses)
        unproven = GaugeMetricFamily(
            "killswitch_fence_unproven", "1 when this host has --fence and the read-back does not "
            "prove it as intended, else 0.", labels=names,
        )  # fmt: skip
        unproven.add_metric(self.labels, 1 if f.problem else 0)
        killed = GaugeMetricFamily(
            "killswitch_fence_killed", "1 while the kill fence is up.", labels=names
        )
        killed.add_metric(self.labels, 1 if f.killed else 0)
        return [refused, bypass, unproven, killed]


class NoFence:
    """A sidecar without `--fence`: every hook does nothing, every count is 0."""

    refused = bypasses = 0
    problem = ""
    killed = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def follow(self, state: NodeState, epoch: int, requested: bool) -> None:
        pass

    def holding(self, killed_by_redis: bool) -> bool:
        return False

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        return ()


def attach_fence(sc: Any) -> Fence | NoFence:
    """The sidecar's fence from its settings, its metrics registered (a `NoFence` without)."""
    s = sc.s
    fence: Fence | NoFence = NoFence()
    if s.fence is not None:
        fence = Fence(s.fence, sc, on_kill=s.fence_on_kill, tools=Tools(s.fence_netns),
                      wake=sc._wake.set)  # fmt: skip
    # exported without --fence too (all 0), so dashboards and alerts see every host
    sc.registry.register(FenceCollector(fence, s.node, s.host))
    return fence
