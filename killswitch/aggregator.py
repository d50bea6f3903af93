"""The aggregator: sums orders across every host of a node, trips the node-wide kill, and
watches every roster host confirm it.

A thin asyncio shell: each tick is one pipelined Redis read (new flow entries of every
roster host, their reports and confirmations, the node state, server time); the sliding
window and the trip rules are pure (`window`, `monitor`). Windows run on Redis server
time, never on this machine's wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from redis.asyncio import Redis

from killswitch.metrics import MetricsServer, build_info
from killswitch.monitor import Monitor, MonitorConfig
from killswitch.redisconn import connect
from killswitch.roster import Quorum, epoch_floor, quorum
from killswitch.state import NodeRead, NodeState
from killswitch.store import Store
from killswitch.window import SlidingWindow

log = structlog.get_logger("killswitch.aggregator")


@dataclass(frozen=True)
class AggregatorSettings:
    node: str
    redis_url: str
    hosts: tuple[str, ...]
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    metrics_port: int | None = None
    tick: float = 0.1
    confirm_timeout: float = 5.0
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}")


@dataclass
class _KillWatch:
    """Confirmation tracking of one kill (epoch, ver) until the roster confirmed it."""

    epoch: int
    ver: int
    killed_ms: int
    done: bool = False
    last_alarm_ms: int = 0


class Aggregator:
    """`start()`, idempotent `stop()`, blocking `run()`; collaborators are passed in."""

    def __init__(
        self,
        settings: AggregatorSettings,
        redis: Redis,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: Any = None,
    ) -> None:
        self.s = settings
        self.redis = redis
        self.store = Store(redis, settings.node)
        self.clock = clock
        self.log = (logger or log).bind(node=settings.node)
        self.window = SlidingWindow(int(settings.monitor.window_s * 1000))
        self.monitor = Monitor(settings.monitor)
        self.after: dict[str, str] = {}
        self.armed_ms = -1
        self.state = NodeRead(None)
        self.quorum: Quorum | None = None
        self.watch: _KillWatch | None = None
        self.trips = 0
        self._last_roster_check = -1e9
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.registry = registry if registry is not None else CollectorRegistry()
        n = settings.node
        self._trips_total = Counter(
            "killswitch_trips",
            "Node kills by cause: a rule of the aggregator, or an operator.",
            ["node", "cause"],
            registry=self.registry,
        )
        for cause in ("max_orders", "operator"):
            self._trips_total.labels(n, cause)
        self._confirm_hist = Histogram(
            "killswitch_kill_confirm_seconds",
            "Seconds from a kill being recorded to the last roster host confirming it.",
            ["node"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        ).labels(n)
        self.registry.register(_AggregatorCollector(self))
        build_info(self.registry, "aggregator")
        self._metrics = (
            MetricsServer(self.registry, settings.metrics_port)
            if settings.metrics_port is not None
            else None
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self._metrics:
            await self._metrics.start()
        await self._ensure_roster(force=True)
        self._task = asyncio.create_task(self._loop(), name="aggregator")
        self.log.info(
            "aggregator_started", roster=list(self.s.hosts), instance=self.s.instance,
            max_orders=self.s.monitor.max_orders, window_s=self.s.monitor.window_s,
        )  # fmt: skip

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._metrics:
            await self._metrics.stop()
        self.log.info("aggregator_stopped")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.stop()

    async def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            started = self.clock()
            try:
                await self.tick_once()
                if failing:
                    self.log.info("redis_reachable_again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    self.log.error("tick_failed", error=f"{type(e).__name__}: {e}")
                failing = True
            wait = self.s.tick - (self.clock() - started)
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), wait)

    async def _ensure_roster(self, force: bool = False) -> None:
        # Re-asserted every few seconds: a Redis that lost its data gets the roster back.
        now = self.clock()
        if force or now - self._last_roster_check > 5.0:
            self._last_roster_check = now
            if await self.store.set_roster(self.s.hosts, f"aggregator:{self.s.instance}"):
                self.log.info("roster_stored", roster=list(self.s.hosts))

    # -- one tick --------------------------------------------------------------------------

    async def tick_once(self) -> None:
        await self._ensure_roster()
        flows, snap = await self.store.read_flows(self.after, self.s.hosts)
        now = snap.now_ms
        self.state = NodeRead.from_hash(snap.state)
        armed_ms = int(snap.state.get("armed_ms") or 0)
        if armed_ms != self.armed_ms:
            # Orders sent before the current arm never count against it.
            self.armed_ms = armed_ms
            self.window.clear()
            self.monitor.reset(now)
        for host, entries in flows.items():
            for entry_id, fields in entries:
                self.after[host] = entry_id
                ts = int(entry_id.split("-", 1)[0])
                if ts >= armed_ms:
                    self.window.add(ts, host, int(fields.get("a", 0)))
        self.window.advance(now)
        self.quorum = quorum(
            self.s.hosts, self.state.epoch, self.state.ver, snap.reports, snap.confirms, now
        )
        evaluation = self.monitor.observe(now, self.window.total, self.window.by_host)
        for warning in evaluation.warnings:
            self.log.warning("LIMIT_WARNING", **warning)
        if evaluation.trip is not None and self.state.state is NodeState.ARMED:
            await self._trip(evaluation.trip.cause, evaluation.trip.detail)
        self._watch_confirmations(snap.state, now)
        await self.store.publish_aggregator_view(self.view(now))

    def view(self, now_ms: int) -> dict[str, str]:
        """What `status` shows of the aggregator (and what tests wait on): its last tick."""
        cfg = self.s.monitor
        return {
            "instance": self.s.instance,
            "tick_ms": str(now_ms),
            "window_s": f"{cfg.window_s:g}",
            "node_orders": str(self.window.total),
            "max_orders": "" if cfg.max_orders is None else str(cfg.max_orders),
            "trips": str(self.trips),
        }

    async def _trip(self, cause: str, detail: str) -> None:
        assert self.quorum is not None
        res = await self.store.kill(
            actor=f"aggregator:{self.s.instance}",
            reason=detail,
            cause=cause,
            floor=epoch_floor(self.quorum.hosts),
            action="trip",
            only_if_armed=True,
        )
        if res.changed:
            self.trips += 1
            self._trips_total.labels(self.s.node, cause).inc()
            self.log.error("TRIP", cause=cause, reason=detail, epoch=res.epoch)
            self.state = NodeRead(NodeState.KILLED, res.epoch, res.ver, detail)

    def _watch_confirmations(self, state: dict[str, str], now: int) -> None:
        if self.state.state is not NodeState.KILLED or self.quorum is None:
            return
        w = self.watch
        if w is None or (w.epoch, w.ver) != (self.state.epoch, self.state.ver):
            killed_ms = int(state.get("killed_ms") or now)
            w = self.watch = _KillWatch(self.state.epoch, self.state.ver, killed_ms)
            if state.get("cause") == "operator":
                self._trips_total.labels(self.s.node, "operator").inc()
        if w.done:
            return
        q = self.quorum
        if q.complete:
            w.done = True
            elapsed = max(q.last_confirm_ms - w.killed_ms, 0) / 1000.0
            self._confirm_hist.observe(elapsed)
            self.log.info(
                "KILL_CONFIRMED", epoch=w.epoch, hosts=len(q.confirmed), elapsed_s=elapsed
            )
        elif now - w.killed_ms > self.s.confirm_timeout * 1000 and now - w.last_alarm_ms > 5000:
            w.last_alarm_ms = now
            self.log.error(
                "KILL_UNCONFIRMED", epoch=w.epoch, missing=list(q.missing),
                confirmed=len(q.confirmed), roster=len(q.roster),
            )  # fmt: skip


class _AggregatorCollector:
    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        a, n = self.agg, self.agg.s.node
        win = f"{a.s.monitor.window_s:g}s"

        def node_gauge(name: str, doc: str, value: float, **extra: str) -> GaugeMetricFamily:
            labels = ["node", *extra]
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric([n, *extra.values()], value)
            return g

        yield node_gauge(
            "killswitch_node_orders",
            "Orders sent across all hosts of the node within the sliding window.",
            a.window.total, window=win,
        )  # fmt: skip
        if a.s.monitor.max_orders is not None:
            yield node_gauge(
                "killswitch_node_limit_orders",
                "The node's static cap: more orders than this within the window kills the node.",
                a.s.monitor.max_orders, window=win,
            )  # fmt: skip
        yield node_gauge("killswitch_node_killed", "1 while the node is KILLED.",
                         float(a.state.state is NodeState.KILLED))  # fmt: skip
        yield node_gauge("killswitch_node_epoch", "The node's current epoch.", a.state.epoch)
        yield node_gauge("killswitch_roster_hosts", "Hosts on the node's roster.", len(a.s.hosts))
        q = a.quorum
        yield node_gauge(
            "killswitch_confirmed_hosts",
            "Roster hosts that confirmed the node's current epoch.",
            len(q.confirmed) if q else 0,
        )
        per_host = GaugeMetricFamily(
            "killswitch_node_host_orders",
            "Each roster host's orders within the node's sliding window (aggregator view).",
            labels=["node", "host", "window"],
        )
        alive = GaugeMetricFamily(
            "killswitch_host_alive",
            "1 while the roster host reports to Redis within its stale-after.",
            labels=["node", "host"],
        )
        for h in a.s.hosts:
            per_host.add_metric([n, h, win], a.window.by_host.get(h, 0))
            alive.add_metric([n, h], float(bool(q and q.hosts[h].alive)))
        yield per_host
        yield alive
        yield from a.monitor.metrics(n, win)


async def run_aggregator(settings: AggregatorSettings) -> None:
    """Entry point of `killswitch aggregator`."""
    redis = connect(
        settings.redis_url, socket_timeout=2.0, client_name=f"ks-aggregator-{settings.node}"
    )
    try:
        await Aggregator(settings, redis).run()
    finally:
        await redis.aclose()
