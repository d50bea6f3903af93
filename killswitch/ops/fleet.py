"""Fleet-wide operator actions: kill every node and prove every roster host of every node;
the state of every node at a glance.

A fleet is every node kept in one Redis deployment (single server, Sentinel or Cluster).
Nodes are found in the fleet registry (`store.keys.NODES_KEY`, written when a node's roster
is stored). Each node is still killed and proven exactly as `kill` does it, all nodes at
once; the fleet kill is done when every node's is. Arming stays per node (and signed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from killswitch.core.node.names import InvalidName, check_name
from killswitch.ops import control
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_UNCONFIRMED, Outcome
from killswitch.store.store import Store, fleet_nodes
from killswitch.view.table import Col, table_lines


async def _each(
    redis: Redis, action: Callable[[Store], Awaitable[Outcome]]
) -> tuple[dict[str, Outcome], list[str]]:
    """Run `action` on every valid registered node at once; also the names refused."""
    names = await fleet_nodes(redis)
    nodes, bad = [], []
    for n in names:
        try:
            nodes.append(check_name("node", n))
        except InvalidName:
            bad.append(n)  # junk in the registry must not stop a fleet kill
    results = await asyncio.gather(
        *(action(Store(redis, n)) for n in nodes), return_exceptions=True
    )
    out: dict[str, Outcome] = {}
    for n, r in zip(nodes, results, strict=True):
        if isinstance(r, BaseException):
            if not isinstance(r, Exception):
                raise r
            out[n] = Outcome(EXIT_FAILED, {"node": n, "error": f"{type(r).__name__}: {r}"})
        else:
            out[n] = r
    return out, bad


def _pairs(outcomes: dict[str, Outcome], key: str) -> list[str]:
    return [f"{n}/{h}" for n, o in sorted(outcomes.items()) for h in o.report.get(key, [])]


def fleet_report(outcomes: dict[str, Outcome], bad: list[str]) -> dict[str, Any]:
    """One JSON object: per node its report, and node/host pairs confirmed and missing."""
    failed = sorted(n for n, o in outcomes.items() if o.code == EXIT_FAILED)
    return {
        "fleet": True,
        "nodes": {n: o.report for n, o in sorted(outcomes.items())},
        "confirmed": _pairs(outcomes, "confirmed"),
        "missing": _pairs(outcomes, "missing"),
        "failed_nodes": failed,
        "invalid_node_names": sorted(bad),
    }


async def kill_fleet(redis: Redis, *, reason: str, operator: str, timeout: float) -> Outcome:
    """Kill every node of the fleet; exit 0 only when every roster host of every node
    confirmed, else 3 naming the node/host pairs that did not (1 when a node could not be
    killed at all, or the fleet has no node)."""

    def one(store: Store) -> Awaitable[Outcome]:
        return control.kill(store, reason=reason, operator=operator, timeout=timeout)

    outcomes, bad = await _each(redis, one)
    report = fleet_report(outcomes, bad)
    if not outcomes:
        return Outcome(
            EXIT_FAILED, report, "no node is registered in this Redis: nothing was killed"
        )
    if report["failed_nodes"]:
        names = ", ".join(report["failed_nodes"])
        return Outcome(EXIT_FAILED, report, f"NOT KILLED: could not kill node(s) {names}")
    if all(o.code == EXIT_OK for o in outcomes.values()):
        return Outcome(EXIT_OK, report)
    missing = report["missing"] or [
        f"{n}/(no roster)" for n, o in outcomes.items() if not o.report.get("roster")
    ]
    return Outcome(
        EXIT_UNCONFIRMED,
        report,
        f"NOT CONTAINED: {len(missing)} node/host pair(s) did not confirm within "
        f"{timeout:g}s: {', '.join(missing)}",
    )


async def status_fleet(redis: Redis) -> Outcome:
    """Every node's status (per node the same report as `status`): exit 0 only when every
    node's roster proves its state, 3 naming the node/host pairs that do not, 1 when a node
    could not be read."""
    outcomes, bad = await _each(redis, control.status)
    report = fleet_report(outcomes, bad)
    report["disagree"] = {
        f"{n}/{h}": why
        for n, o in sorted(outcomes.items())
        for h, why in o.report.get("disagree", {}).items()
    }
    if report["failed_nodes"]:
        names = ", ".join(report["failed_nodes"])
        return Outcome(EXIT_FAILED, report, f"could not read node(s) {names}")
    if report["disagree"]:
        pairs = "; ".join(f"{p}: {why}" for p, why in report["disagree"].items())
        return Outcome(
            EXIT_UNCONFIRMED,
            report,
            f"NOT PROVEN: {len(report['disagree'])} node/host pair(s) do not agree: {pairs}",
        )
    return Outcome(EXIT_OK, report)


FLEET_COLUMNS = (
    Col("node", overflow="keep"),
    Col("state", overflow="keep"),
    Col("epoch", overflow="keep"),
    Col("confirmed", overflow="keep"),
    Col("detail"),  # what is wrong, folded to the terminal's width
)


def fleet_lines(report: dict[str, Any]) -> list[str]:
    """One line per node: the bad news first (missing, stale), then the rest by name."""
    rows: list[tuple[int, str, list[str]]] = []
    for n, rep in report["nodes"].items():
        if "error" in rep:
            rows.append((0, n, [n, "ERROR", "", "", str(rep["error"])]))
            continue
        roster, confirmed = rep.get("roster", []), rep.get("confirmed", [])
        notes = []
        if rep.get("missing"):
            notes.append(f"MISSING: {', '.join(rep['missing'])}")
        if rep.get("stale_hosts"):
            notes.append(f"STALE: {', '.join(rep['stale_hosts'])}")
        others = sorted(
            set(rep.get("disagree", {})) - {*rep.get("missing", []), *rep.get("stale_hosts", [])}
        )
        if others:
            notes.append(f"DISAGREE: {', '.join(others)}")
        cells = [
            n,
            str(rep.get("state", "?")),
            f"epoch {rep.get('epoch', 0)}",
            f"confirmed {len(confirmed)}/{len(roster)}",
            "  ".join(notes),
        ]
        rows.append((0 if notes else 1, n, cells))
    rows.sort(key=lambda row: row[:2])
    lines = table_lines(FLEET_COLUMNS, [cells for *_, cells in rows], header=False) if rows else []
    if report.get("invalid_node_names"):
        lines.append(f"ignored invalid node names in the registry: {report['invalid_node_names']}")
    if not lines:
        lines.append("no node is registered in this Redis")
    return lines
