"""Human-readable output of operator commands: readable at a glance, the bad news first.

Formatting only: it takes an `Outcome` and returns text, never talks to Redis.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from killswitch.cli.rolloutcli import rollout_lines
from killswitch.ops.control import (
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_UNCONFIRMED,
    EXIT_USAGE,
    Outcome,
    iso_time,
)
from killswitch.view import ruleview
from killswitch.view.table import Col, table_lines
from killswitch.view.text import escape, safe_text


def human(cmd: str, outcome: Outcome) -> str:
    rep = outcome.report
    if cmd == "audit":
        return outcome.message if "redis" in rep else _audit(rep)
    lines: list[str] = []
    if outcome.code in (EXIT_REFUSED, EXIT_USAGE, EXIT_PENDING):
        lines.extend(outcome.message.split("\n"))
        if "hosts" in rep:
            lines.append("")
            lines.extend(_hosts(rep))
        return safe_text(lines)
    head = f"node {rep.get('node')}: {rep.get('state')}  epoch {rep.get('epoch')}"
    if "scope" in rep:
        sc = rep["scope"]
        head += f"  scoped {cmd}: {sc['kind']} {sc['value']} (scope version {sc['ver']})"
    if rep.get("reason"):
        head += f"  reason: {escape(rep['reason'])}"
    lines.append(head)
    roster = rep.get("roster", [])
    confirmed = rep.get("confirmed", [])
    summary = f"confirmed {len(confirmed)}/{len(roster)} roster hosts"
    if "elapsed_s" in rep:
        summary += f" in {rep['elapsed_s'] * 1000:.1f} ms"
    lines.append(summary)
    if outcome.code == EXIT_UNCONFIRMED or (cmd == "status" and rep.get("missing")):
        lines.append("")
        lines.extend(
            (outcome.message or f"MISSING: {', '.join(rep.get('missing', []))}").split("\n")
        )
    if rep.get("unlisted"):
        lines.append(
            "NOT ON THE ROSTER (blocked as unlisted, orders counted): "
            + ", ".join(sorted(rep["unlisted"]))
        )
    if rep.get("roster_mismatch"):
        lines.append(
            "ROSTER MISMATCH: the aggregator's --hosts ("
            + ",".join(rep["roster_mismatch"])
            + ") differ from the signed roster; nothing was changed (a signed arm --roster changes it)"
        )
    if rep.get("pending_arm"):
        p = rep["pending_arm"]
        lines.append(
            f"PENDING ARM by {escape(str(p.get('by')))}: scope {p.get('scope', 'node')}, epoch {p.get('epoch')}, roster "
            f"{','.join(p.get('roster', []))}, until {p.get('expires_at')}; a second, distinct "
            "operator completes it with `killswitch arm --key THEIR-KEY`"
        )
    if rep.get("scopes"):
        active = ", ".join(f"{s['kind']} {s['value']} ({s['reason']})" for s in rep["scopes"])
        lines.append(f"SCOPED KILLS: {active}")
    if rep.get("flat"):
        lines.append(f"flat (trading processes cancelled resting orders): {', '.join(rep['flat'])}")
    if rep.get("fenced"):
        lines.append(f"fenced (network kill fence proven): {', '.join(rep['fenced'])}")
    for h, why in sorted(rep.get("fence_failed", {}).items()):
        lines.append(f"FENCE NOT PROVEN {h}: {escape(why)}")
    for h, why in rep.get("contradicted", {}).items():
        lines.append(f"CONTRADICTED {h}: its confirmation is not counted: {escape(why)}")
    for item in rep.get("junk", []):
        lines.append(f"JUNK IN REDIS (ignored): {escape(item)}")
    lines.extend(split_lines(rep))
    lines.extend(rollout_lines(rep))
    if rep.get("stale_hosts"):
        lines.append(f"STALE (blocked, cannot prove state): {', '.join(rep['stale_hosts'])}")
    if rep.get("redis_durable") is False:
        lines.append(
            "REDIS NOT DURABLE (appendonly off): a Redis restart forgets kills and the roster; "
            "hosts then stay blocked until two operators arm again"
        )
    if cmd == "status":
        lead = rep.get("leader") or "NONE: no aggregator holds the lease, nothing trips by itself"
        doubt = {
            "unknown": "UNKNOWN HOLDER: no aggregator publishes under this lease",
            "silent": f"VIEW OLD: last tick {rep.get('leader_view_age_s')}s ago",
        }.get(rep.get("leader_doubt", ""))
        if doubt:
            lead = f"{escape(lead)} ({doubt}; its rules may not be acting: a standby kills a "
            lead += "breach it leaves unacted, cause leader_silent)"
        lines.append(f"aggregator leader: {lead}")
    if rep.get("changed_at"):
        lines.append(f"last change {rep['changed_at']} by {escape(rep.get('actor') or '?')}")
    if cmd == "status":
        lines.extend(ruleview.shadow_banner(rep.get("aggregator", {})))
        lines.extend(ruleview.health_lines(rep.get("aggregator", {}), _server_ms(rep)))
    lines.append("")
    lines.extend(_hosts(rep))
    if cmd == "status":
        try:
            lines.extend(ruleview.rule_lines(rep.get("aggregator", {})))
        except (TypeError, ValueError, KeyError, AttributeError):
            lines.append("aggregator view: unreadable (junk in Redis); see status --json")
    if outcome.code == EXIT_OK and outcome.message:
        lines.extend(outcome.message.split("\n"))
    # every line once more: a value read from Redis can never rewrite the terminal
    return safe_text(lines)


def _server_ms(rep: dict[str, Any]) -> int | None:
    """The status's Redis server time (ms), None when it does not parse."""
    try:
        return int(datetime.fromisoformat(str(rep.get("server_time"))).timestamp() * 1000)
    except ValueError:
        return None


def split_lines(rep: dict[str, Any]) -> list[str]:
    """The version vector at a glance: one line when the roster runs more than one release."""
    cut = rep.get("release_split")
    if not cut:
        return []
    odd = ", ".join(f"{h} runs {r[:12] or 'none'}" for h, r in sorted(cut["odd"].items()))
    if cut.get("reason"):
        return [
            f"RELEASE SPLIT (version_split: arm refused, an armed node is killed): {cut['reason']}"
        ]
    return [
        f"RELEASE SPLIT (version_split: arm refused, an armed node is killed): {odd}; "
        f"the rest run {cut['majority'][:12] or 'none'}"
    ]


HOST_COLUMNS = (
    Col("host", overflow="keep"),  # names may be 63 characters: never cut
    Col("alive", overflow="keep"),
    Col("age", "right", "keep"),
    Col("gate", overflow="keep"),
    Col("view", overflow="keep"),
    Col("epoch", "right", "keep"),
    Col("ord/s", "right", "keep"),
    Col("confirmed", overflow="keep"),
    Col("release", overflow="keep"),
    Col(""),  # what is wrong with the host, folded to the terminal's width
)


def _hosts(rep: dict[str, Any]) -> list[str]:
    odd = (rep.get("release_split") or {}).get("odd", {})
    confirmed = set(rep.get("confirmed", []))
    rows = []
    for h, s in rep.get("hosts", {}).items():
        notes = []
        if h in odd:
            notes.append("! SPLIT: runs another release")
        if s.get("attest"):
            notes.append(f"! {escape(s['attest'])}")
        if s.get("regression"):
            notes.append(f"! {escape(s['regression'])}")
        if s.get("functions"):
            notes.append(f"! {escape(s['functions'])}")
        if s.get("acl"):
            notes.append(f"! {escape(s['acl'])}")
        if s.get("proof"):
            notes.append(f"! arm not accepted: {escape(s['proof'])}")
        if s.get("scope_kept"):
            kept = escape(" ".join(s["scope_kept"]))
            notes.append(f"! still enforces {kept}: no signed lift it could verify")
        rows.append(
            [
                h,
                "yes" if s.get("alive") else "NO",
                "-" if s.get("age_s") is None else f"{s['age_s']:.2f}s",
                str(s.get("gate", "?")),
                str(s.get("view") or "?"),
                str(s.get("epoch", 0)),
                f"{s.get('orders_per_s', 0):.1f}",
                "yes" if h in confirmed else "NO",
                escape((s.get("release") or "-")[:12]),
                "  ".join(notes),
            ]
        )
    return table_lines(HOST_COLUMNS, rows, indent=2)


def _field(k: str, v: str) -> str:
    """An audit field as text: `*_ms` instants as UTC times (the raw number stays in --json)."""
    if k.endswith("_ms") and v.isascii() and v.isdigit() and 10**11 < int(v) < 10**14:
        return f"{k.removesuffix('_ms')}={iso_time(int(v))}"
    return f"{k}={v}"


# The audit is records, one per line, sized here rather than drawn by rich.Table: a chain may
# hold 100,000 entries, and rich spends about half a millisecond a row (docs/PERFORMANCE.md).
def _audit(rep: dict[str, Any]) -> str:
    rows = rep.get("entries", [])
    if not rows:
        return f"node {rep.get('node')}: no audit entries"
    out = []
    aw = max(len(str(r.get("action", ""))) for r in rows)
    ow = min(max(len(str(r.get("actor", ""))) for r in rows), 40)
    for r in rows:
        extra = ""
        if "epoch" in r:
            extra += f" epoch={r['epoch']}"
        if r.get("cause"):
            extra += f" cause={r['cause']}"
        if r.get("approvers"):
            extra += f" approvers={','.join(r['approvers'])}"
        if r.get("refused"):
            extra += f" attempt={r.get('attempt', '?')} REFUSED={r['refused']}"
        for k, v in r.get("fields", {}).items():
            extra += " " + _field(k, str(v))
        seq = f"#{r['seq']} " if "seq" in r else ""
        out.append(
            escape(
                f"{r['time']}  {seq}{r['action']:<{aw}} {r['actor']:<{ow}}{extra}  {r['reason']}"
            )
        )
    return "\n".join(out)
