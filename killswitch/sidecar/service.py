"""The per-host sidecar: serves the gate, syncs with Redis, confirms every state it applies.

A thin asyncio shell around `Gate` (the order path) and `state.observe` (the epoch rules).
One Redis round trip per flush interval both reports counts and reads the node state; that
round trip is the lease, so Redis cost never grows with order volume and the gate closes by
itself when round trips stop succeeding. Pub/sub only wakes the sync loop early.

The round trip's read is applied to the gate by `applying.ReadApplier`; kill notices are
handled by `notices.NoticeListener`; this module wires them up and runs the sync loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from killswitch.core.enforce.gate import LIMIT, Gate
from killswitch.core.node.heartbeat import idle_every, trip_due
from killswitch.core.node.scope import Scopes, parse_scopes
from killswitch.core.node.state import NodeState, boot_view
from killswitch.core.settings.options import to_ms
from killswitch.core.version import __version__
from killswitch.runtime import eventloop, logs
from killswitch.runtime.metrics import MetricsServer, build_info
from killswitch.runtime.operators import load_operators
from killswitch.runtime.service import run_until_signalled
from killswitch.sidecar.applying import ReadApplier, Recorder
from killswitch.sidecar.armcheck import ArmCheck
from killswitch.sidecar.attest import AttestLoop
from killswitch.sidecar.blocklog import BlockSummaries
from killswitch.sidecar.fence import attach_fence
from killswitch.sidecar.fixgateway import FixGateway
from killswitch.sidecar.functions import FunctionsMissing, LibraryWatch
from killswitch.sidecar.gateserver import GateServer
from killswitch.sidecar.memory import open_memory
from killswitch.sidecar.metrics import SidecarCollector, roundtrip_seconds
from killswitch.sidecar.notices import NoticeListener
from killswitch.sidecar.notify import StateNotifier
from killswitch.sidecar.permissions import AclWatch
from killswitch.sidecar.rate import OrderRate
from killswitch.sidecar.recording import Recording
from killswitch.sidecar.settings import SidecarSettings
from killswitch.store.localstate import LocalState
from killswitch.store.noperm import denial
from killswitch.store.redisconn import classify, connect, endpoint, scrub
from killswitch.store.store import FlushReport, Store

log = structlog.get_logger("killswitch.sidecar.service")
CONFIRMABLE = (NodeState.ARMED, NodeState.KILLED)  # the states a host confirms it enforces


class Sidecar:
    """`start()`, idempotent `stop()`, blocking `run()`; collaborators are passed in."""

    def __init__(
        self,
        settings: SidecarSettings,
        redis: Redis,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        logger: Any = None,
    ) -> None:
        self.s = settings
        self.redis = redis
        self.store = Store(redis, settings.node)
        self.clock = clock
        self.log = (logger or log).bind(node=settings.node, host=settings.host)
        self.memory, (max_epoch, max_state), problem = open_memory(settings, self.log)
        self.boot_id = self.memory.memo.boot
        view = boot_view(max_epoch, max_state)
        self._fail_streak = 0
        self.blocks = BlockSummaries(self.log, clock)
        self.gate = Gate(
            settings.node, settings.host, view=view, clock=clock, log=self.log,
            log_budget=self.blocks.budget, limits=settings.limits,
        )  # fmt: skip
        # Without an operators file this gate can never open: it cannot verify any arm.
        operators = load_operators(settings.operators) if settings.operators else None
        self.arms = ArmCheck(
            operators, settings.node, settings.host, self.log, boot=self.boot_id,
            accepted=self.memory.memo.accepted, wall=wall,
        )  # fmt: skip
        self.boot = uuid.uuid4().hex[:12]
        self.acked = (0, 0)
        self.acked_more = (0, 0)  # cancels and limit refusals of the last acknowledged flush
        self.confirmed: tuple[int, int] = (0, 0)
        self.last_ok: float | None = None
        self.failures = 0
        self.round_trips = 0  # successful ones
        self.idle_skips = 0  # wake-ups with nothing to report that renewed no lease
        self._acked_report: FlushReport | None = None  # last acknowledged (orders_per_s 0)
        self._last_trip: float | None = None  # send time of the last successful round trip
        self._idle_every = idle_every(settings.flush_interval, settings.stale_after)
        self.rate = OrderRate()  # orders a second, for the host report
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        # The --limits file is part of the release: its digest joins the attested files'.
        self.attest = AttestLoop(
            settings.attest, settings.attest_interval, self.log, changed=self._wake.set,
            fixed={"(limits)": settings.limits_digest} if settings.limits_digest else {},
        )  # fmt: skip
        self._tasks: list[asyncio.Task[None]] = []
        self._server = GateServer(
            self.gate, settings.listen, logger=self.log, max_conns=settings.max_conns,
            line_timeout=settings.line_timeout, socket_mode=settings.socket_mode,
            socket_gid=settings.socket_gid, on_flat=self._wake.set,
        )  # fmt: skip
        self._sync_errors = 0  # sync iterations that failed for any reason but Redis
        self.record = Recorder(self.memory, self.gate)  # each failed write counts as a loop error
        self._loop_problem = ""  # why the last sync iteration failed ("" once one succeeds)
        self.notify = StateNotifier(self, self._server)
        self.functions = LibraryWatch(self)  # its Functions library missing: fail closed
        self.acl = AclWatch(self)  # its Redis user refused a command (NOPERM): fail closed
        self.registry = registry if registry is not None else CollectorRegistry()
        self._rtt = roundtrip_seconds(self.registry, settings.node, settings.host)
        self.registry.register(SidecarCollector(self))
        self.fix = FixGateway.for_sidecar(self.gate, settings, self.log, self.registry)
        build_info(self.registry, "sidecar")
        self.fence = attach_fence(self)  # the network fence (--fence), a no-op without
        self.applier = ReadApplier(
            settings, self.gate, memory=self.memory, record=self.record, arms=self.arms,
            attest=self.attest, fence=self.fence, notify=self.notify, log=self.log,
            wake=self._wake, boot=self.boot, local_problem=problem,
        )  # fmt: skip
        self.notices = NoticeListener(
            redis, self.store.keys.events, self.gate, record=self.record, fence=self.fence,
            notify=self.notify, log=self.log, wake=self._wake, stop=self._stop,
        )  # fmt: skip
        self._metrics = None if settings.metrics_port is None else MetricsServer(
            self.registry, settings.metrics_port, settings.metrics_listen, health=self.problem)  # fmt: skip
        self.rec = Recording(self, self._metrics)  # the flight recorder (sidecar.recording)
        # each adds its own fields to the round trip's report (`report_fields()`)
        self._reporters = (self.notify, self.applier, self.attest, self.fix, self.rec)
        self._started = False
        self._last_fail_log = -1e9
        if problem:
            self.log.error("LOCAL_STATE_UNREADABLE", reason=problem)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            await self.fence.start()
            await self._server.start()
            await self.fix.start()
            if self._metrics:
                await self._metrics.start()
        except BaseException:
            await self.fix.stop()
            await self._server.stop()  # release what was bound; the caller reports why
            self._started = False
            raise
        self._tasks = [
            asyncio.create_task(self._sync_loop(), name="sync"),
            asyncio.create_task(self.notices.listen(), name="pubsub"),
            asyncio.create_task(self.attest.run(), name="attest"),
        ]
        self.arms.announce()
        self.rec.announce()  # after the start succeeded: a failed start prints one line
        self.memory.announce(self.gate.view.max_epoch)
        self.log.info(
            "SIDECAR_STARTED",
            listen=[str(a) for a in self.s.listen],
            epoch=self.gate.view.max_epoch,
            flush_interval=self.s.flush_interval,
            stale_after=self.s.stale_after,
            event_loop=eventloop.running(),
        )

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self._stop.set()
        self.gate.close()  # and closed it stays: no round trip may reopen it from here on
        for t in self._tasks:
            t.cancel()
        self.report_skipped_blocks()  # the last counts, before the process goes
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        await self.notify.close()  # a running on-kill command is seen out first
        await self.fence.close()  # its rules stay in place
        await self.notify.report_on_kill(self.store, self._acked_report)
        await self.fix.stop()
        await self._server.stop()
        await self.rec.close()
        if self._metrics:
            await self._metrics.stop()
        self.log.info("SIDECAR_STOPPED")

    async def run(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.attest.rehash)
        await run_until_signalled(self.start, self.stop, self._stop)

    # -- sync ------------------------------------------------------------------------------

    @property
    def local(self) -> LocalState | None:
        """The local state file (the Memory writes it; replaceable, e.g. by tests)."""
        return self.memory.local

    @local.setter
    def local(self, value: LocalState | None) -> None:
        self.memory.local = value

    @property
    def loop_errors(self) -> int:
        """Sync iterations that failed for any reason but Redis, and failed local writes."""
        return self._sync_errors + self.record.failures

    @property
    def scopes(self) -> Scopes:
        """The scoped kills this host enforces (see `ReadApplier.scopes`)."""
        return self.applier.scopes

    def gate_connections(self) -> tuple[int, int]:
        """(open now, closed by the server so far) on the gate sockets."""
        srv = self._server
        return len(srv.connections), srv.refused + srv.evicted + srv.timed_out

    def summarized_lines(self) -> int:
        return logs.summarized() + self.blocks.skipped()

    def problem(self) -> str:
        """Why this sidecar cannot do its job right now ("" when it can); /healthz shows it.
        Redis being unreachable is not one: that is the lease running out, as designed."""
        a = self.applier
        return (self._loop_problem or self.functions.problem or self.acl.problem
                or self.memory.problem or a.local_problem or a.dup)  # fmt: skip

    async def _sync_loop(self) -> None:
        woken = True  # the first round trip is always made
        while not self._stop.is_set():
            started = self.clock()
            try:
                await self.sync_once(woken=woken)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug or a broken disk must never end the loop silently
                self._loop_failed(e)
            else:
                if self._loop_problem:
                    self.log.info("SYNC_LOOP_RECOVERED", reason=self._loop_problem)
                    self._loop_problem = ""
            if self.blocks.due():
                self.report_skipped_blocks()
            wait = self.s.flush_interval - (self.clock() - started)
            if wait > 0 and not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            woken = self._wake.is_set()
            self._wake.clear()

    async def sync_once(self, *, woken: bool | None = None) -> bool:
        """One round trip; returns whether it succeeded. The gate's lease starts at send time.

        From the sync loop (`woken` says whether something woke it), a host with nothing new
        to report skips the trip until its lease needs renewing (`core.node.heartbeat`); a skip
        returns True, as nothing failed. Without `woken` the trip is always made.
        """
        sent = self.clock()
        allowed, blocked = self.gate.allowed, self.gate.blocked
        cancels, limited = self.gate.cancels, self.gate.blocked_by.get(LIMIT, 0)
        view = self.gate.view
        want_confirm = view.state in CONFIRMABLE and (view.epoch, view.ver) != self.confirmed
        report = FlushReport(
            boot=self.boot,
            allowed=allowed,
            blocked=blocked,
            acked_allowed=self.acked[0],
            acked_blocked=self.acked[1],
            max_epoch=view.max_epoch,
            view=self.gate.status()[0].value,
            gate="open" if self.gate.is_open else "closed",
            orders_per_s=self.rate.update(sent, allowed + blocked),
            stale_after_ms=to_ms(self.s.stale_after),
            regression=view.regression or self.problem(),
            confirm_epoch=view.epoch if want_confirm else 0,
            confirm_ver=view.ver if want_confirm else 0,
            held_epoch=self.gate.held if self.gate.held == self.notices.held_recorded else 0,
            confirmed_epoch=self.confirmed[0],
            confirmed_ver=self.confirmed[1],
            cancels=cancels,
            limited=limited,
            acked_cancels=self.acked_more[0],
            acked_limited=self.acked_more[1],
            extra=(
                ("boot_id", self.boot_id),
                *(f for o in self._reporters for f in o.report_fields()),
            ),
            proof_digest=self.arms.digest,
            proof_refusal=view.refusal,
        )
        acked = replace(report, orders_per_s=0.0)
        if woken is not None and not trip_due(
            now=sent, last_trip=self._last_trip, moved=want_confirm or acked != self._acked_report,
            woken=woken, flush_interval=self.s.flush_interval, every=self._idle_every,
        ):  # fmt: skip
            self.idle_skips += 1
            return True
        try:
            async with asyncio.timeout(self.s.stale_after):
                reply = await self.store.flush(self.s.host, report, __version__)
        except Exception as e:  # any failure: the lease simply runs out
            self.failures += 1
            self._fail_streak += 1
            self._last_trip = self._acked_report = None
            if isinstance(e, FunctionsMissing):  # never EVAL instead: closed, said, retried
                return await self.functions.missing(e)
            if (refused := denial(e)) is not None:  # NOPERM: closed, the rule to add named
                return await self.acl.denied(refused)
            if sent - self._last_fail_log > 1.0:
                self._last_fail_log = sent
                self.log.warning(
                    "SYNC_FAILED", error=scrub(f"{type(e).__name__}: {e}"),
                    kind=classify(e).kind, redis=endpoint(self.s.redis_url),
                    failures=self.failures,
                )  # fmt: skip
            return False
        self._rtt.observe(self.clock() - sent)
        await self.functions.found()
        await self.acl.granted()
        if self._fail_streak:
            self.log.info("SYNC_RECOVERED", failed_round_trips=self._fail_streak)
            self._fail_streak = 0
        self.last_ok = self._last_trip = sent
        self._acked_report = acked
        self.round_trips += 1
        self.acked = (allowed, blocked)
        self.acked_more = (cancels, limited)
        if want_confirm:
            self._confirmed(view.epoch, view.ver, view.state.value, blocked)
        if reply.proof is not None:
            self.arms.hold(reply.proof_digest, reply.proof)
        scopes = parse_scopes(reply.scopes)
        self.arms.offer_admission(scopes.lifts.get(f"host:{self.s.host}"))
        new = self.applier.judged(view, reply.read)  # None: read before a notice applied since
        new = None if new is None else self.applier.single(new, reply)
        if new is not None and reply.closed_confirm and new.state is NodeState.KILLED:
            self._confirmed(new.epoch, new.ver, new.state.value, blocked)
        self.applier.apply_scopes(scopes)  # before the state: never open, then close
        self.applier.apply(new, sent, reply.fence)
        return True

    def _confirmed(self, epoch: int, ver: int, state: str, blocked: int) -> None:
        self.confirmed = (epoch, ver)
        self.log.info("CONFIRMED", epoch=epoch, ver=ver, state=state, blocked=blocked)

    def report_skipped_blocks(self) -> int:
        """Log the summary of blocked orders counted instead of logged (see BlockSummaries)."""
        return self.blocks.report(self.gate.status()[1])

    def _loop_failed(self, e: Exception) -> None:
        """Close the gate, count, log and remember why; the loop retries on its next turn."""
        self.gate.close()
        self._sync_errors += 1
        reason = f"sync loop failed: {type(e).__name__}: {e}"
        if reason != self._loop_problem or self.loop_errors % 100 == 1:
            self.log.error("SYNC_LOOP_ERROR", reason=reason, errors=self.loop_errors)
        self._loop_problem = reason

    def sync_age(self) -> float | None:
        return None if self.last_ok is None else self.clock() - self.last_ok


async def run_sidecar(settings: SidecarSettings) -> None:
    """Entry point of `killswitch sidecar`."""
    redis = connect(
        settings.redis_url,
        socket_timeout=settings.stale_after,
        client_name=f"ks-sidecar-{settings.node}-{settings.host}-{os.getpid()}",
    )
    try:
        await Sidecar(settings, redis).run()
    finally:
        await redis.aclose()
