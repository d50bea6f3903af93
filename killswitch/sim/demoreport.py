"""The demo's closing table: what a per-host limit, a Prometheus-style alert and killswitch
did on the traffic the demo recorded, beside Knight's own figures.

Pure formatting of what `demo` collected: it must never start or stop anything. It says
plainly whether the run was time-compressed and what its figures mean in real time.
"""

from __future__ import annotations

import textwrap
from typing import Any, Protocol

from killswitch.core.enforce.recfmt import decode
from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.backtest import FlowEvent
from killswitch.sim import deploy, whatif
from killswitch.sim.loadgen import RouterStats


class Timeline(Protocol):
    """What the table needs of the demo's `Scenario`."""

    @property
    def pre(self) -> float: ...
    @property
    def open_peak(self) -> float: ...
    @property
    def legacy_rate(self) -> float: ...
    @property
    def legacy_at(self) -> float: ...
    @property
    def rollback_at(self) -> float: ...
    @property
    def end(self) -> float: ...


class Mode(Protocol):
    """What the table needs of the demo's `Mode` (kept apart: the demo imports this module)."""

    @property
    def name(self) -> str: ...
    @property
    def rules(self) -> MonitorConfig: ...
    @property
    def per_host_cap(self) -> int: ...
    @property
    def alert(self) -> dict[str, float]: ...
    @property
    def scenario(self) -> Timeline: ...
    @property
    def seed_s(self) -> float: ...
    @property
    def compression(self) -> float: ...
    @property
    def rest_s(self) -> float: ...


HOSTS = tuple(f"or-{i:02d}" for i in range(1, 9))
HAUNTED = "or-08"
KNIGHT = {
    "orders": "over 4,000,000",
    "minutes": 45,
    "parent_orders": 212,
    "shares": 397_000_000,
    "loss_usd": "over $440 million",
}


def results(
    mode: Mode,
    t0_ms: int,
    stats: dict[str, RouterStats],
    final: dict[str, Any],
    audit: list[dict[str, Any]],
    flows: dict[str, list[tuple[str, dict[str, str]]]],
    confirms: dict[str, dict[str, str]],
    armed_epoch: int,
    on_haunted: str = "kill",
) -> dict[str, Any]:
    s, rules = mode.scenario, mode.rules
    onset = t0_ms + round(s.legacy_at * 1000)
    rollback = t0_ms + round(s.rollback_at * 1000)
    attempted, allowed = [], []
    for host, entries in flows.items():
        for entry_id, f in entries:
            ts = int(entry_id.split("-", 1)[0])
            a, b = int(f.get("a", 0)), int(f.get("b", 0))
            attempted.append(FlowEvent(ts, host, a + b))
            allowed.append(FlowEvent(ts, host, a))
    per_host = whatif.per_host_limit(attempted, mode.per_host_cap, rules.window_ms, onset)
    alert = whatif.prometheus_alert(attempted, onset_ms=onset, **mode.alert)  # type: ignore[arg-type]
    trip = next((e for e in audit if e["action"] == "trip"), None)
    agg = final.get("aggregator", {})
    trip_ms = int(agg["last_trip_at_ms"]) if agg.get("last_trip_at_ms") else None
    epoch = int(trip["epoch"]) if trip else None
    applied = [
        int(c["applied_ms"]) for c in confirms.values() if epoch and int(c.get("epoch", 0)) == epoch
    ]
    killed_ms = int(final.get("killed_ms") or 0) or (trip_ms or 0)
    all_confirmed = max(applied) if len(applied) == len(HOSTS) else None
    end_ms, rest_ms = t0_ms + round(s.end * 1000), round(mode.rest_s * 1000)
    ks = {
        "monitor": "killswitch",
        # Routers cancel their resting orders on STATE KILLED and answer FLAT: what is left
        # is what routers that never reported flat still had working at the kill.
        "resting_left": sum(
            _unflat_resting(h, st, allowed, killed_ms, rest_ms) for h, st in stats.items()
        )
        if trip
        else whatif.resting_at(allowed, end_ms, rest_ms),
        "resting_cancelled": sum(st.cancels_sent for st in stats.values()),
        "flat_hosts": len(final.get("flat", [])),
        "isolated": sorted(
            {str(e["scope"]).removeprefix("host:") for e in audit if e["action"] == "kill_host"}
        ),
        "isolated_after_s": next(
            (_after(e["id"], onset) for e in audit if e["action"] == "kill_host"), None
        ),
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
            # A monitor that only blocks or alerts leaves working what was sent in the last
            # rest_s before it acted (before the end if it never did).
            "resting_left": whatif.resting_at(attempted, v.acted_ms or end_ms, rest_ms),
        }
        for v in (per_host, alert)
    ]
    return {
        "scenario": {
            "hosts": list(HOSTS),
            "haunted": HAUNTED,
            "mode": mode.name,
            "window_s": rules.window_ms / 1000,
            "fast_window_s": None if rules.fast_in_use is None else rules.fast_window_ms / 1000,
            "compression": mode.compression,
            "pre_open_per_host_per_s": s.pre,
            "open_peak_per_host_per_s": s.open_peak,
            "legacy_per_host_per_s": s.legacy_rate,
            "onset_s": s.legacy_at,
            "rollback_s": s.rollback_at,
            "duration_s": s.end,
            "onset_ms": onset,
            "rollback_ms": rollback,
            "per_host_cap": mode.per_host_cap,
            "alert": mode.alert,
            "rest_s": mode.rest_s,
            "on_haunted": on_haunted,
            "baseline_seed": f"replay of {mode.seed_s:g} s of normal pre-open flow "
            "(killswitch.core.rules.backtest.replay), stored in the node's baseline hash before the "
            "aggregator started",
        },
        "monitors": [*monitors, ks],
        "orders_attempted_after_onset": whatif.orders_after(attempted, onset),
        "routers": {
            h: {
                "sent": st.sent,
                "allowed": st.allowed,
                "blocked": st.blocked,
                "resting_at_kill": st.resting_at_kill,
                "cancels_sent": st.cancels_sent,
                "flat_epoch": st.flat_epoch,
            }
            for h, st in stats.items()
        },
        "final_state": final.get("state"),
        "armed_epoch": armed_epoch,
        "series": series(t0_ms, end_ms, attempted, allowed, trip_ms, rules.window_ms),
        "knight": KNIGHT,
    }


def first_orders(ring: bytes, onset_ms: int, n: int = 5) -> list[dict[str, Any]]:
    """The first `n` orders a host's flight recorder holds from the onset on, with the
    decision and why (its ring file's bytes; times are the host's clock, here Redis's)."""
    rows = []
    for e in decode(ring).entries:
        if e.decision in ("allow", "block") and e.t_ns >= onset_ms * 1_000_000:
            rows.append({**e.to_json(), "after_onset_s": round(e.t_ns / 1e9 - onset_ms / 1e3, 4)})
            if len(rows) == n:
                break
    return rows


def _why(r: dict[str, Any]) -> str:
    if r["decision"] == "allow":
        return f"ALLOWED: node armed at epoch {r['epoch']}"
    return f"BLOCKED ({r['reason']}) at epoch {r['epoch']}"


SERIES_BUCKET_S = 0.5


def series(
    t0_ms: int,
    end_ms: int,
    attempted: list[FlowEvent],
    allowed: list[FlowEvent],
    trip_ms: int | None,
    window_ms: int,
) -> dict[str, Any]:
    """The recorded flow as `demo --plot` draws it: per host, orders attempted and allowed
    per second in `SERIES_BUCKET_S` buckets from the start of the replay, and the instant of
    the trip (seconds from the start; None: no trip)."""
    n = max(round((end_ms - t0_ms) / (SERIES_BUCKET_S * 1000)) + 1, 1)

    def per_host(events: list[FlowEvent]) -> dict[str, list[float]]:
        out = {h: [0.0] * n for h in HOSTS}
        for e in events:
            i = int((e.ts_ms - t0_ms) // (SERIES_BUCKET_S * 1000))
            if 0 <= i < n and e.host in out:
                out[e.host][i] += e.count / SERIES_BUCKET_S
        return out

    return {
        "bucket_s": SERIES_BUCKET_S,
        "window_s": window_ms / 1000,
        "attempted_per_s": per_host(attempted),
        "allowed_per_s": per_host(allowed),
        "trip_s": None if trip_ms is None else round((trip_ms - t0_ms) / 1000, 3),
    }


def _after(entry_id: str, onset_ms: int) -> float:
    """Seconds from the onset to an audit entry (its stream id is Redis server time)."""
    return round((int(entry_id.split("-", 1)[0]) - onset_ms) / 1000, 3)


def _unflat_resting(
    host: str, st: RouterStats, allowed: list[FlowEvent], killed_ms: int, rest_ms: int
) -> int:
    """Resting orders a router left at the kill: none once it reported FLAT; what it held
    when told (or, never told, what the gate allowed it in the last rest_ms) otherwise."""
    if st.flat_epoch:
        return 0
    if st.resting_at_kill is not None:
        return st.resting_at_kill
    return whatif.resting_at([e for e in allowed if e.host == host], killed_ms, rest_ms)


WIDTH = 120  # the demo's text never runs past this many columns


def _wrap(text: str, indent: int = 0, width: int = WIDTH) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=" " * indent,
                         subsequent_indent=" " * indent) or [""]  # fmt: skip


def render_table(doc: dict[str, Any]) -> str:
    sc = doc["scenario"]
    names = {
        "per_host_limit": f"per-host limit ({sc['per_host_cap']}/host/window)",
        "prometheus_alert": "Prometheus alert (node rate)",
        "killswitch": "killswitch (node-wide)"
        if sc.get("on_haunted", "kill") == "kill"
        else "killswitch (--on-haunted isolate)",
    }
    lines = ["", *_wrap(" ".join(_heading(sc))),
             *_wrap(f"The baseline was seeded from a {sc['baseline_seed']}."), ""]  # fmt: skip
    for text in deploy.table_lines(doc.get("attestation")):
        lines += _wrap(text) if text else [""]
    head = f"{'monitor':<34} {'acted after':>11} {'orders after':>14} {'resting left':>12}  "
    lines.append(head + "what happened")
    indent = len(head)
    detail_w = WIDTH - indent

    def row(first: str, detail: str) -> None:
        parts = textwrap.wrap(detail, detail_w) or [""]
        lines.append(first + parts[0])
        lines.extend(" " * indent + p for p in parts[1:])

    for m in doc["monitors"]:
        after = "never" if m["acted_after_s"] is None else f"+{m['acted_after_s']:.2f} s"
        row(
            f"{names[m['monitor']]:<34} {after:>11} {m['orders_after_onset']:>14,} "
            f"{m['resting_left']:>12,}  ",
            m["detail"],
        )
    ks = doc["monitors"][-1]
    if ks["isolated"]:
        rest = "" if ks["tripped"] else "; the other hosts traded on"
        at = ks.get("isolated_after_s")
        when = "" if at is None else f" at +{at:.2f} s"
        row(" " * indent, f"isolated {', '.join(ks['isolated'])}{when} (a scoped kill){rest}")
    if ks["tripped"]:
        row(
            " " * indent,
            f"cause {ks['cause']}; {ks['confirmed']}/8 hosts confirmed, "
            f"the last {ks['kill_to_all_confirmed_ms']} ms after the kill",
        )
    if ks["resting_cancelled"] or ks["tripped"]:
        # `flat` is the proof of a node kill; an isolated host's router cancels all the same.
        proof = f"; {ks['flat_hosts']}/{len(sc['hosts'])} reported FLAT" if ks["tripped"] else ""
        row(
            " " * indent,
            f"routers cancelled {ks['resting_cancelled']:,} resting orders through the gate{proof}",
        )
    fix = doc.get("fix")
    if fix:
        row(" " * indent, _fix_line(fix))
    k = doc["knight"]
    row(
        f"{'Knight Capital, 1 August 2012':<34} {str(k['minutes']) + ' min':>11} "
        f"{k['orders']:>14} {'':>12}  ",
        f"{k['parent_orders']} parent orders, {k['shares']:,} shares, {k['loss_usd']} lost",
    )
    lines.append("")
    lines += _wrap(
        f"Orders the routers tried to send after the onset: "
        f"{doc['orders_attempted_after_onset']:,}; the per-host limit and the alert are "
        "evaluated on those, killswitch on what it let through. Resting left: orders still "
        f"working at the venue when the monitor acted, each resting {sc.get('rest_s', 0):g} s; "
        "killswitch's routers cancel theirs on the kill."
    )
    first = doc.get("haunted_first_orders") or []
    if first:
        lines += [
            "",
            f"{sc['haunted']}'s first {len(first)} orders after the onset (its flight recorder):",
        ]
        lines += [
            f"  +{r['after_onset_s']:.4f} s  {_via(r)} {r['order_id']} {r['symbol']} {r['side']} "
            f"{r['qty']} (release {r['release'] or 'none'}): {_why(r)}"
            for r in first
        ]
    if sc["compression"] > 1:
        k = sc["compression"]
        lines.append("")
        lines += _wrap(
            f"TIME-COMPRESSED {k:g}x: {sc['window_s']:g} s windows stand for production's "
            f"{sc['window_s'] * k:g} s, and every duration above stands for {k:g}x as long in "
            f"production with the window rules alone (+1.5 s here is about {1.5 * k:g} s). At "
            "production windows the fast rules (1 s window) trip a big flood within about a "
            "second; `killswitch demo --realtime` (about two minutes) shows real-time figures."
        )
    return "\n".join(lines)


def _fix_line(fix: dict[str, Any]) -> str:
    """The FIX gateway's part: the legacy path that never asked the gate."""
    late = fix["reached_venue_after_kill"]
    after = "no kill confirmed" if late is None else f"{late:,} reached the venue after the kill"
    return (
        f"{fix['host']}'s legacy code on its FIX session (it never asks the gate): "
        f"{fix['sent']:,} orders sent, {fix['reached_venue']:,} reached the venue, "
        f"{fix['blocked']:,} blocked by the sidecar's FIX gateway; {after}"
    )


def _via(r: dict[str, Any]) -> str:
    return "FIX order" if r.get("source") == "fix" else "ORDER"


def _heading(sc: dict[str, Any]) -> list[str]:
    what = (
        f"TIME-COMPRESSED {sc['compression']:g}x ({sc['window_s']:g} s windows"
        if sc["compression"] > 1
        else f"in REAL TIME at production settings ({sc['window_s']:g} s windows, "
        f"{sc['fast_window_s']:g} s fast window"
    )
    return [
        f"Knight Capital replay, {what}, {len(sc['hosts'])} hosts). "
        f"Onset: {sc['haunted']} on the legacy path at +{sc['onset_s']:g} s; "
        f"rollback (all eight on it) at +{sc['rollback_s']:g} s."
    ]
