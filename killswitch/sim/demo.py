"""`killswitch demo`: the Knight Capital replay, live, on the real components.

It starts its own redis-server, eight real sidecar processes and the real aggregator process,
and drives them with simulated order routers speaking the gate protocol: a normal pre-open,
a 3x market-open burst that must not trip, one host on the legacy path, then the "rollback"
that puts all eight on it (time compressed: 1 s windows). The haunted host's legacy code
never asks the gate: its flood goes out on a FIX session to a venue acceptor, through that
host's sidecar `--fix` gateway, which blocks it once the node is killed. Then it compares, on the recorded
per-host counts, a per-host limit, a Prometheus-style alert and what killswitch actually
did. It must never leave a process behind (everything is stopped in `finally`, on Ctrl-C too)
and never touch a Redis it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import redis as redis_sync
from redis.asyncio import Redis
from rich.live import Live
from rich.table import Table

from killswitch.core.enforce.recfmt import decode
from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.backtest import FlowEvent, replay
from killswitch.ops import audit as ops_audit
from killswitch.ops import control
from killswitch.sim import deploy
from killswitch.sim.demoreport import HAUNTED, HOSTS, first_orders, render_table, results
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.fixsession import FixRouter, FixVenue, outcome
from killswitch.sim.fleet import Fleet, wait_until
from killswitch.sim.loadgen import drive
from killswitch.sim.operators import two_person_arm
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store

NODE = "smars"


@dataclass(frozen=True)
class Scenario:
    """Orders per second per host, t seconds after the routers start."""

    pre: float = 10.0  # pre-open and steady, per host
    open_at: float = 3.0  # the open: ramp to 3x in 1 s, hold 1.5 s, back down over 2 s
    open_peak: float = 30.0
    legacy_at: float = 10.0  # or-08 starts running the legacy code
    legacy_rate: float = 85.0  # 8.5x its peers, under its own per-host cap of 100/window
    rollback_at: float = 17.0  # the "fix": all eight on the legacy path
    end: float = 29.0
    stretch: float = 1.0  # every duration of the open burst, times this

    def scaled(self, k: float) -> Scenario:
        """The same day with every time and duration k x as long (the rates unchanged)."""
        return replace(
            self, open_at=self.open_at * k, legacy_at=self.legacy_at * k,
            rollback_at=self.rollback_at * k, end=self.end * k, stretch=self.stretch * k,
        )  # fmt: skip

    def rate(self, host: str, t: float) -> float:
        legacy = t >= self.rollback_at or (host == HAUNTED and t >= self.legacy_at)
        if legacy:
            return self.legacy_rate
        s = (t - self.open_at) / self.stretch
        if s < 0:
            return self.pre
        burst = self.open_peak - self.pre
        if s < 1.0:
            return self.pre + burst * s
        if s < 2.5:
            return self.open_peak
        if s < 4.5:
            return self.open_peak - burst * (s - 2.5) / 2.0
        return self.pre

    def fix_rate(self, host: str, t: float) -> float:
        """The part of `rate` that the haunted host's legacy code sends over its FIX session
        (Power Peg), never asking the gate; its normal flow still goes through the gate."""
        legacy = host == HAUNTED and t >= self.legacy_at
        return self.legacy_rate - self.pre if legacy else 0.0

    def gate_rate(self, host: str, t: float) -> float:
        """The part of `rate` the host's order router sends through the gate protocol."""
        return self.rate(host, t) - self.fix_rate(host, t)


RULES = MonitorConfig(
    window_ms=1000,
    baseline_multiplier=5.0,
    breach_windows=2,
    min_orders=50,
    warmup_ms=5000,
    half_life_ms=4500,  # 45 s scaled with the window: a 10 s window compressed to 1 s
    max_host_share=0.4,  # 3.2x the fair share of 12.5% on eight hosts
)
PER_HOST_CAP = 100  # orders per host per 1 s window: 3.3x the busiest normal window (the open)
ALERT = {"threshold_per_s": 360.0, "scrape_ms": 1500, "range_ms": 3000, "for_ms": 6000}
# The alert is a common volume alert compressed 10x like the window: scraped every 15 s,
# rate over 30 s, `for: 1m`, firing at 1.5x the node's busiest normal rate (the open).


# Production windows and rules, nothing compressed: a 10 s window with the default 45 s
# half-life and the fast rules on, the per-host cap at the same 100 orders/s per host, the
# alert as the compressed one stands for (scraped every 15 s, rate over 30 s, `for: 1m`).
REALTIME_RULES = replace(RULES, window_ms=10_000, min_orders=500, warmup_ms=300_000,
                         half_life_ms=45_000)  # fmt: skip
REALTIME_ALERT = {"threshold_per_s": 360.0, "scrape_ms": 15_000, "range_ms": 30_000,
                  "for_ms": 60_000}  # fmt: skip


@dataclass(frozen=True)
class Mode:
    """How the demo runs: its rules, what it compares them with, and its clock."""

    name: str
    rules: MonitorConfig
    per_host_cap: int  # orders per host per window, for the per-host limit it compares with
    alert: dict[str, float]
    scenario: Scenario
    seed_s: float  # seconds of normal pre-open flow the seeded baseline learned
    compression: float  # production time per demo time: 10 for 1 s windows standing for 10 s
    rest_s: float = 2.0  # how long an allowed order rests at the venue: 20 s in production


COMPRESSED = Mode("compressed", RULES, PER_HOST_CAP, ALERT, Scenario(), 60.0, 10.0, 2.0)
# 4x the compressed scenario's timeline (about two minutes): long enough for 10 s windows
# to see the open come and go before the onset.
REALTIME = Mode(
    "realtime", REALTIME_RULES, PER_HOST_CAP * 10, REALTIME_ALERT, Scenario().scaled(4.0),
    360.0, 1.0, 20.0,
)  # fmt: skip


def aggregator_flags(c: MonitorConfig) -> list[str]:
    return [
        "--window", f"{c.window_ms / 1000:g}", "--tick", "0.1",
        "--baseline-multiplier", f"{c.baseline_multiplier:g}",
        "--breach-windows", str(c.breach_windows), "--min-orders", str(c.min_orders),
        "--warmup", f"{c.warmup_ms / 1000:g}", "--half-life", f"{c.half_life_ms / 1000:g}",
        "--max-host-share", f"{c.max_host_share:g}",
    ]  # fmt: skip


def seed_baseline(
    c: MonitorConfig, s: Scenario, end_ms: int, seconds: float = 60.0
) -> dict[str, str]:
    """A baseline learned from a replay of `seconds` of normal pre-open flow ending now."""
    per_tick = round(s.pre / 10)
    start = end_ms - round(seconds * 1000)
    events = [FlowEvent(t, h, per_tick) for t in range(start, end_ms, 100) for h in HOSTS]
    return replay(events, c).baseline


class _Progress:
    """The live view: a rich table on a terminal, a plain line every 2 s otherwise."""

    def __init__(self, out: TextIO, rich_view: bool) -> None:
        self.out = out
        self.live: Any = None
        self.last_line = 0.0
        if rich_view:
            self.live = Live(refresh_per_second=8, transient=False)
            self.live.start()

    def update(self, t: float, phase: str, rep: dict[str, Any]) -> None:
        agg = rep.get("aggregator", {})
        if self.live is not None:
            self.live.update(_table(t, phase, rep, agg))
        elif time.monotonic() - self.last_line >= 2.0:
            self.last_line = time.monotonic()
            rates = {h: float(s.get("orders_per_s", 0)) for h, s in rep.get("hosts", {}).items()}
            top = max(rates, key=rates.__getitem__, default="-")
            rest = [v for h, v in rates.items() if h != top] or [0.0]
            print(  # within 120 columns
                f"[{t:5.1f}s] {phase[:26]:<26} {rep.get('state', '?'):<7} win "
                f"{agg.get('node_orders', '?')!s:>5} base {agg.get('expected') or '-'!s:>6} "
                f"conf {len(rep.get('confirmed', []))}/8 flat {len(rep.get('flat', []))}/8  "
                f"top {top} {rates.get(top, 0):.0f}/s, rest {min(rest):.0f}-{max(rest):.0f}/s",
                file=self.out, flush=True,
            )  # fmt: skip

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def _table(t: float, phase: str, rep: dict[str, Any], agg: dict[str, Any]) -> Any:
    state = rep.get("state", "?")
    color = {"ARMED": "green", "KILLED": "bold red"}.get(state, "yellow")
    limits = {r["rule"]: r for r in agg.get("rules", [])}
    base = limits.get("baseline", {})
    title = (
        f"t={t:5.1f}s  {phase}  node [{color}]{state}[/] epoch {rep.get('epoch')}  "
        f"orders/window {agg.get('node_orders', '?')}  baseline {agg.get('expected') or '-'}  "
        f"baseline limit {base.get('limit') or '-'}  confirmed {len(rep.get('confirmed', []))}/8"
    )
    table = Table(title=title, title_justify="left")
    for col in ("host", "orders/s", "gate", "epoch", "confirmed", "flat"):
        table.add_column(col)
    haunted = {h["host"] for h in agg.get("haunted", [])}
    for h, s in rep.get("hosts", {}).items():
        name = f"[bold red]{h} HAUNTED[/]" if h in haunted else h
        table.add_row(
            name, f"{s.get('orders_per_s', 0):.0f}", str(s.get("gate")), str(s.get("epoch")),
            "yes" if h in rep.get("confirmed", []) else "-",
            "yes" if h in rep.get("flat", []) else "-",
        )  # fmt: skip
    return table


def _phase(s: Scenario, t: float) -> str:
    if t >= s.rollback_at:
        return "ROLLBACK: all 8 on legacy"
    if t >= s.legacy_at:
        return f"{HAUNTED} on legacy (09:30)"
    if t >= s.open_at:
        return "open: 3x burst (normal)"
    return "pre-open (normal)"


async def _run(
    fleet: Fleet, mode: Mode, progress: _Progress, on_haunted: str, venue_sock: socket.socket
) -> dict[str, Any]:
    s = mode.scenario
    redis = Redis.from_url(fleet.redis_url, decode_responses=True)
    store = Store(redis, NODE)
    venue = FixVenue()
    await venue.start(venue_sock)
    try:
        arm = await two_person_arm(store, fleet.ops, reason="demo open", timeout=10)
        if arm.code != 0:
            raise RuntimeError(f"arm failed: {arm.message}")
        secs, micros = await redis.time()
        t0_ms, t0 = int(secs) * 1000 + int(micros) // 1000, time.monotonic()

        async def watch() -> None:
            while True:
                rep = (await control.status(store)).report
                t = time.monotonic() - t0
                progress.update(t, _phase(s, t), rep)
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch())
        try:
            # The routers' orders rest at the venue; each router also subscribes to its gate
            # and, on STATE KILLED, cancels them through the gate and answers FLAT.
            addresses = {h: fleet.address(h) for h in HOSTS}
            # The haunted host's legacy code: a FIX session through its sidecar's gateway.
            start = time.monotonic()
            legacy = FixRouter(f"unix:{fleet.workdir / 'fix.sock'}",
                               lambda: s.fix_rate(HAUNTED, time.monotonic() - start))  # fmt: skip
            fix_task = asyncio.create_task(legacy.run())
            try:
                stats = await drive(addresses, s.gate_rate, s.end, rest_s=mode.rest_s)
            finally:
                legacy.stop()
                fix_stats = await fix_task
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        final = (await control.status(store)).report
        audit = (await ops_audit.audit(store, None)).report["entries"]
        flows = await store.flow_entries(list(HOSTS))
        confirms: dict[str, dict[str, str]] = {}
        for h in HOSTS:
            confirms[h] = dict(await redis.hgetall(store.keys.host(h).confirm))  # type: ignore[arg-type]
        final["killed_ms"] = await redis.hget(store.keys.state, "killed_ms")
        doc = results(
            mode, t0_ms, stats, final, audit, flows, confirms, arm.report["epoch"], on_haunted
        )
        ring = (fleet.workdir / "state" / f"{NODE}@{HAUNTED}.rec").read_bytes()  # its recorder
        doc["haunted_first_orders"] = first_orders(ring, doc["scenario"]["onset_ms"])
        c8 = confirms[HAUNTED]
        killed = int(c8.get("epoch", 0)) > int(arm.report["epoch"]) and c8.get("applied_ms")
        doc["fix"] = {"host": HAUNTED, **outcome(fix_stats, venue.orders, decode(ring).entries,
                                                 int(killed) if killed else None)}  # fmt: skip
        return doc
    finally:
        await venue.stop()
        await redis.aclose()


def run_demo(
    as_json: bool = False,
    scenario: Scenario | None = None,
    realtime: bool = False,
    on_haunted: str = "kill",
    plot: str | None = None,
) -> int:
    plot_path = None
    if plot is not None:
        from killswitch.sim.plot import PlotError, check_path

        try:
            plot_path = check_path(plot)
        except PlotError as e:
            print(f"killswitch demo: {e}", file=sys.stderr)
            return 2
    mode = REALTIME if realtime else COMPRESSED
    if scenario is not None:
        mode = replace(mode, scenario=scenario)
    s, rules = mode.scenario, mode.rules
    progress_out = sys.stderr if as_json else sys.stdout

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through every `finally` below

    previous = signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="ks-demo-"))
    server = EmbeddedRedis(data_dir=workdir / "redis")
    # The venue's port is bound now (served later, on the demo's loop): the haunted host's
    # sidecar relays its FIX session there.
    venue_sock = socket.create_server(("127.0.0.1", 0))
    fix_route = f"unix:{workdir / 'fix.sock'}=tcp:127.0.0.1:{venue_sock.getsockname()[1]}"
    fleet = Fleet(server.url, NODE, HOSTS, workdir=workdir, attest=deploy.ATTEST,
                  host_args={HAUNTED: ("--fix", fix_route)})  # fmt: skip
    progress: _Progress | None = None
    try:
        (workdir / "redis").mkdir()
        what = (
            f"in real time with production windows (about {s.end:.0f} s)"
            if mode.compression == 1
            else f"compressed {mode.compression:g}x: 1 s windows stand for 10 s"
        )
        print(f"killswitch demo ({what}): starting redis-server, 8 sidecars, the aggregator",
              file=progress_out, flush=True)  # fmt: skip
        server.start()
        deploy.install(fleet, HAUNTED)
        fleet.start()
        seed = seed_baseline(rules, s, _server_ms(server.url), mode.seed_s)
        sync_seed(server.url, seed)
        fleet.start_aggregator(*aggregator_flags(rules), "--on-haunted", on_haunted)
        wait_until(lambda: _all_alive(server.url), 30, 0.05, "roster stored and all 8 reporting")
        deploy.wait_releases(fleet, NODE, 2)
        refused = deploy.refused_open(fleet, NODE)
        print(f"with attestation, {deploy.refused_line(refused)}", file=progress_out)
        deploy.attestation_off(fleet, NODE, HAUNTED)
        progress = _Progress(progress_out, rich_view=not as_json and sys.stdout.isatty())
        doc = asyncio.run(_run(fleet, mode, progress, on_haunted, venue_sock))
        doc["attestation"] = refused
    finally:
        if progress is not None:
            progress.close()
        fleet.stop()
        venue_sock.close()
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
    if plot_path is not None:
        from killswitch.sim.plot import write_plot

        write_plot(doc, plot_path)
        print(f"chart written to {plot_path}", file=progress_out)
    if as_json:
        print(json.dumps(doc))
    else:
        print(render_table(doc))
    return 0


def _server_ms(url: str) -> int:
    with redis_sync.Redis.from_url(url) as r:
        secs, micros = r.time()
    return int(secs) * 1000 + int(micros) // 1000


def sync_seed(url: str, baseline: dict[str, str]) -> None:
    with redis_sync.Redis.from_url(url, decode_responses=True) as r:
        mapping: dict[Any, Any] = dict(baseline)
        r.hset(NodeKeys(NODE).baseline, mapping=mapping)


def _all_alive(url: str) -> bool:
    async def check() -> bool:
        redis = Redis.from_url(url, decode_responses=True)
        try:
            rep = (await control.status(Store(redis, NODE))).report
        finally:
            await redis.aclose()
        return rep["roster"] == list(HOSTS) and all(h["alive"] for h in rep["hosts"].values())

    return asyncio.run(check())
