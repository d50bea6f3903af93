"""`killswitch demo`: the Knight Capital replay, live, on the real components.

It starts its own redis-server, eight real sidecar processes and the real aggregator process,
and drives them with simulated order routers speaking the gate protocol: a normal pre-open,
a 3x market-open burst that must not trip, one host on the legacy path, then the "rollback"
that puts all eight on it (time compressed: 1 s windows). Then it compares, on the recorded
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
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import redis as redis_sync
from redis.asyncio import Redis
from rich.live import Live
from rich.table import Table

from killswitch.core import whatif
from killswitch.core.anomaly import MonitorConfig
from killswitch.core.backtest import FlowEvent, replay
from killswitch.ops import control
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.fleet import Fleet, wait_until
from killswitch.sim.loadgen import RouterStats, drive
from killswitch.sim.operators import two_person_arm
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store

NODE = "smars"
HOSTS = tuple(f"or-{i:02d}" for i in range(1, 9))
HAUNTED = "or-08"
KNIGHT = {
    "orders": "over 4,000,000",
    "minutes": 45,
    "parent_orders": 212,
    "shares": 397_000_000,
    "loss_usd": "over $440 million",
}


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

    def rate(self, host: str, t: float) -> float:
        legacy = t >= self.rollback_at or (host == HAUNTED and t >= self.legacy_at)
        if legacy:
            return self.legacy_rate
        s = t - self.open_at
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


def aggregator_flags(c: MonitorConfig) -> list[str]:
    return [
        "--window", f"{c.window_ms / 1000:g}", "--tick", "0.1",
        "--baseline-multiplier", f"{c.baseline_multiplier:g}",
        "--breach-windows", str(c.breach_windows), "--min-orders", str(c.min_orders),
        "--warmup", f"{c.warmup_ms / 1000:g}", "--half-life", f"{c.half_life_ms / 1000:g}",
        "--max-host-share", f"{c.max_host_share:g}",
    ]  # fmt: skip


def seed_baseline(c: MonitorConfig, s: Scenario, end_ms: int) -> dict[str, str]:
    """A baseline learned from a replay of 60 s of normal pre-open flow ending now."""
    per_tick = round(s.pre / 10)
    events = [FlowEvent(t, h, per_tick) for t in range(end_ms - 60_000, end_ms, 100) for h in HOSTS]
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
            rates = " ".join(
                f"{h[-2:]}:{s.get('orders_per_s', 0):.0f}" for h, s in rep.get("hosts", {}).items()
            )
            print(
                f"[{t:5.1f}s] {phase:<34} {rep.get('state', '?'):<7} node {agg.get('node_orders', '?')}"
                f"/window baseline {agg.get('expected') or '-'}  confirmed "
                f"{len(rep.get('confirmed', []))}/8  rates {rates}",
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
    for col in ("host", "orders/s", "gate", "epoch", "confirmed"):
        table.add_column(col)
    haunted = {h["host"] for h in agg.get("haunted", [])}
    for h, s in rep.get("hosts", {}).items():
        name = f"[bold red]{h} HAUNTED[/]" if h in haunted else h
        table.add_row(
            name, f"{s.get('orders_per_s', 0):.0f}", str(s.get("gate")), str(s.get("epoch")),
            "yes" if h in rep.get("confirmed", []) else "-",
        )  # fmt: skip
    return table


def _phase(s: Scenario, t: float) -> str:
    if t >= s.rollback_at:
        return "ROLLBACK: all eight on the legacy path"
    if t >= s.legacy_at:
        return f"{HAUNTED} on the legacy path (09:30)"
    if t >= s.open_at:
        return "market open: 3x burst (normal)"
    return "pre-open (normal)"


async def _run(fleet: Fleet, s: Scenario, progress: _Progress) -> dict[str, Any]:
    redis = Redis.from_url(fleet.redis_url, decode_responses=True)
    store = Store(redis, NODE)
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
            stats = await drive({h: fleet.address(h) for h in HOSTS}, s.rate, s.end)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        final = (await control.status(store)).report
        audit = (await control.audit(store, None)).report["entries"]
        flows = await store.flow_entries(list(HOSTS))
        confirms: dict[str, dict[str, str]] = {}
        for h in HOSTS:
            confirms[h] = dict(await redis.hgetall(store.keys.host(h).confirm))  # type: ignore[arg-type]
        final["killed_ms"] = await redis.hget(store.keys.state, "killed_ms")
        return _results(s, t0_ms, stats, final, audit, flows, confirms, arm.report["epoch"])
    finally:
        await redis.aclose()


def _results(
    s: Scenario,
    t0_ms: int,
    stats: dict[str, RouterStats],
    final: dict[str, Any],
    audit: list[dict[str, Any]],
    flows: dict[str, list[tuple[str, dict[str, str]]]],
    confirms: dict[str, dict[str, str]],
    armed_epoch: int,
) -> dict[str, Any]:
    onset = t0_ms + round(s.legacy_at * 1000)
    rollback = t0_ms + round(s.rollback_at * 1000)
    attempted, allowed = [], []
    for host, entries in flows.items():
        for entry_id, f in entries:
            ts = int(entry_id.split("-", 1)[0])
            a, b = int(f.get("a", 0)), int(f.get("b", 0))
            attempted.append(FlowEvent(ts, host, a + b))
            allowed.append(FlowEvent(ts, host, a))
    per_host = whatif.per_host_limit(attempted, PER_HOST_CAP, RULES.window_ms, onset)
    alert = whatif.prometheus_alert(attempted, onset_ms=onset, **ALERT)  # type: ignore[arg-type]
    trip = next((e for e in audit if e["action"] == "trip"), None)
    agg = final.get("aggregator", {})
    trip_ms = int(agg["last_trip_at_ms"]) if agg.get("last_trip_at_ms") else None
    epoch = int(trip["epoch"]) if trip else None
    applied = [
        int(c["applied_ms"]) for c in confirms.values() if epoch and int(c.get("epoch", 0)) == epoch
    ]
    killed_ms = int(final.get("killed_ms") or 0) or (trip_ms or 0)
    all_confirmed = max(applied) if len(applied) == len(HOSTS) else None
    ks = {
        "monitor": "killswitch",
        "acted_after_s": None if trip_ms is None else round((trip_ms - onset) / 1000, 3),
        "orders_after_onset": whatif.orders_after(allowed, onset),
        "tripped": trip is not None,
        "cause": trip.get("cause") if trip else None,
        "detail": trip["reason"] if trip else "did not trip",
        "confirmed": len(applied),
        "all_confirmed_after_s": None
        if all_confirmed is None
        else round((all_confirmed - onset) / 1000, 3),
        "kill_to_all_confirmed_ms": None
        if all_confirmed is None or not killed_ms
        else max(all_confirmed - killed_ms, 0),
    }
    monitors = [
        {
            "monitor": v.monitor,
            "acted_after_s": v.after_onset_s(onset),
            "orders_after_onset": v.orders_after_onset,
            "tripped": v.acted_ms is not None,
            "detail": v.detail,
        }
        for v in (per_host, alert)
    ]
    return {
        "scenario": {
            "hosts": list(HOSTS),
            "haunted": HAUNTED,
            "window_s": RULES.window_ms / 1000,
            "pre_open_per_host_per_s": s.pre,
            "open_peak_per_host_per_s": s.open_peak,
            "legacy_per_host_per_s": s.legacy_rate,
            "onset_s": s.legacy_at,
            "rollback_s": s.rollback_at,
            "duration_s": s.end,
            "onset_ms": onset,
            "rollback_ms": rollback,
            "per_host_cap": PER_HOST_CAP,
            "alert": ALERT,
            "baseline_seed": "replay of 60 s of normal pre-open flow (killswitch.core.backtest.replay), "
            "stored in the node's baseline hash before the aggregator started",
        },
        "monitors": [*monitors, ks],
        "orders_attempted_after_onset": whatif.orders_after(attempted, onset),
        "routers": {
            h: {"sent": st.sent, "allowed": st.allowed, "blocked": st.blocked}
            for h, st in stats.items()
        },
        "final_state": final.get("state"),
        "armed_epoch": armed_epoch,
        "knight": KNIGHT,
    }


def render_table(doc: dict[str, Any]) -> str:
    sc = doc["scenario"]
    names = {
        "per_host_limit": f"per-host limit ({sc['per_host_cap']}/host/window)",
        "prometheus_alert": "Prometheus alert (node rate)",
        "killswitch": "killswitch (node-wide)",
    }
    lines = [
        "",
        f"Knight Capital replay, time-compressed ({sc['window_s']:g} s windows, {len(sc['hosts'])} hosts). "
        f"Onset: {sc['haunted']} on the legacy path at +{sc['onset_s']:g} s; "
        f"rollback (all eight on it) at +{sc['rollback_s']:g} s.",
        f"The baseline was seeded from a {sc['baseline_seed']}.",
        "",
        f"{'monitor':<36} {'acted after onset':>18} {'orders after onset':>19}  what happened",
    ]
    for m in doc["monitors"]:
        after = "never" if m["acted_after_s"] is None else f"+{m['acted_after_s']:.2f} s"
        lines.append(
            f"{names[m['monitor']]:<36} {after:>18} {m['orders_after_onset']:>19,}  {m['detail']}"
        )
    ks = doc["monitors"][-1]
    if ks["tripped"]:
        lines.append(
            f"{'':<36} {'':>18} {'':>19}  cause {ks['cause']}; {ks['confirmed']}/8 hosts confirmed, "
            f"the last {ks['kill_to_all_confirmed_ms']} ms after the kill"
        )
    k = doc["knight"]
    lines.append(
        f"{'Knight Capital, 1 August 2012':<36} {str(k['minutes']) + ' min':>18} {k['orders']:>19}  "
        f"{k['parent_orders']} parent orders, {k['shares']:,} shares, {k['loss_usd']} lost"
    )
    lines.append(
        f"(orders the routers tried to send after the onset: {doc['orders_attempted_after_onset']:,}; "
        f"the per-host limit and the alert are evaluated on those, killswitch on what it let through)"
    )
    return "\n".join(lines)


def run_demo(as_json: bool = False, scenario: Scenario | None = None) -> int:
    s = scenario or Scenario()
    progress_out = sys.stderr if as_json else sys.stdout

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # unwinds through every `finally` below

    previous = signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="ks-demo-"))
    server = EmbeddedRedis(data_dir=workdir / "redis")
    fleet = Fleet(server.url, NODE, HOSTS, workdir=workdir)
    progress: _Progress | None = None
    try:
        (workdir / "redis").mkdir()
        print("killswitch demo: starting redis-server, 8 sidecars and the aggregator ...",
              file=progress_out, flush=True)  # fmt: skip
        server.start()
        fleet.start()
        sync_seed(server.url, seed_baseline(RULES, s, _server_ms(server.url)))
        fleet.start_aggregator(*aggregator_flags(RULES))
        wait_until(lambda: _all_alive(server.url), 30, 0.05, "roster stored and all 8 reporting")
        progress = _Progress(progress_out, rich_view=not as_json and sys.stdout.isatty())
        doc = asyncio.run(_run(fleet, s, progress))
    finally:
        if progress is not None:
            progress.close()
        fleet.stop()
        server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
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
