"""How the anomaly rules' decisions are shown: the published view, metrics and log events.

Pure formatting of `anomaly.Evaluation`s into flat view fields (the aggregator's view hash,
read back by `status`), Prometheus metric families and `(level, event, fields)` triples.
It must never decide a trip (that is `anomaly`), log, or touch Redis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from killswitch.view.table import Col, table_lines

if TYPE_CHECKING:  # annotations only: `status` shows the view without loading the rules
    from killswitch.core.rules.anomaly import Evaluation, MonitorConfig
    from killswitch.core.rules.rule import Rule

JSON_FIELDS = ("rules", "haunted")  # view fields that hold JSON; `decode_view` parses them
# view fields that hold a JSON object (rule -> last evaluation ms; rule -> fault)
JSON_MAPS = ("rules_last_evaluated", "rule_faults")
# How `status` shows a rule's value and limit is its `unit`, published with it in `rules`
# (`core.rules.rule.UNITS`). A view published before the unit was shows these as before:
# `rules.SHARE_CAUSES`, spelled out so `status` need not import the rules (a test keeps them
# equal), and the runaway rule's growth.
SHARE_RULES = ("host_share", "host_share_fast")
_EARLIER_UNITS = {**dict.fromkeys(SHARE_RULES, "share"), "runaway": "growth"}


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds")


def window_label(config: MonitorConfig) -> str:
    """The `window` label of the node metrics, e.g. "10s" (stable: dashboards select on it)."""
    return f"{config.window_ms / 1000:g}s"


def view_fields(
    config: MonitorConfig, ev: Evaluation | None, rules: tuple[Rule, ...] | None = None
) -> dict[str, str]:
    """The rule part of the aggregator's view hash: flat strings, JSON for the lists. `rules`
    is the registry the evaluation came from (default `registry.RULES`): each rule adds its
    own fields and the unit `status` shows its value in."""
    if rules is None:
        from killswitch.core.rules.registry import RULES  # the aggregator's side only

        rules = RULES
    on = [r for r in rules if r.enabled(config)]
    fast = any(r.fast for r in on)
    fields = {"window_s": f"{config.window_ms / 1000:g}"}
    for rule in rules:
        fields.update(rule.view(config))
    fields |= {
        "fast_window_s": f"{config.fast_window_ms / 1000:g}" if fast else "",
        "enforcing": ",".join(r.cause for r in on if not config.is_shadow(r.cause)),
        "shadow": ",".join(r.cause for r in on if config.is_shadow(r.cause)),
        "expected": "",
        "warm": "0",
        "rules": "[]",
        "haunted": "[]",
    }
    unit = {r.cause: r.unit for r in rules}
    if ev is None:
        return fields
    fields["expected"] = "" if ev.expected is None else f"{ev.expected:.1f}"
    fields["warm"] = "1" if ev.warm else "0"
    fields["rules"] = json.dumps(
        [
            {
                "rule": r.cause,
                "shadow": r.shadow,
                "active": r.active,
                "value": round(r.value, 4),
                "limit": None if r.limit is None else round(r.limit, 4),
                "level": r.level,
                "breach_windows": r.breach_windows,
                "window_s": r.window_ms / 1000,
                "unit": unit.get(r.cause, "orders"),
            }
            for r in ev.rules
        ],
        separators=(",", ":"),
    )
    fields["haunted"] = json.dumps(
        [
            {
                "host": h.host,
                "orders": h.orders,
                "share": round(h.share, 4),
                "peer_ratio": round(h.peer_ratio, 2),
            }
            for h in ev.haunted
        ],
        separators=(",", ":"),
    )
    return fields


# The aggregator view's typed fields: `status --json` shows each as a JSON number or boolean
# (an empty field, "not set", as null); a field that does not parse is null too, never a crash.
# Fields not listed (text, comma-separated host lists) stay strings.
INT_FIELDS = frozenset(
    {
        "tick_ms", "eval_ms", "node_orders", "fast_orders", "trips", "junk_inputs",
        "last_trip_at_ms", "max_orders", "rollout_seq", "rollout_refused_seq",
    }
)  # fmt: skip
FLOAT_FIELDS = frozenset(
    {"learned_s", "window_s", "fast_window_s", "max_rate", "expected", "lease_ttl_s"}
)
BOOL_FIELDS = frozenset({"warm", "redis_durable"})


def _typed(key: str, raw: str) -> Any:
    if raw == "":
        return None
    try:
        if key in INT_FIELDS:
            return int(raw)
        if key in FLOAT_FIELDS:
            value = float(raw)
            return value if math.isfinite(value) else None
    except ValueError:
        return None
    return {"1": True, "0": False}.get(raw)  # BOOL_FIELDS


def decode_view(view: Mapping[str, str]) -> dict[str, Any]:
    """The view hash as `status --json` shows it: JSON fields parsed, numbers and booleans
    typed (`INT_FIELDS`, `FLOAT_FIELDS`, `BOOL_FIELDS`), the rest as stored."""
    out: dict[str, Any] = {
        k: _typed(k, v) if k in INT_FIELDS | FLOAT_FIELDS | BOOL_FIELDS else v
        for k, v in view.items()
    }
    for key in JSON_FIELDS:
        if key in out:
            try:
                value = json.loads(out[key])
            except ValueError:
                value = []
            # junk written into the view hash reads as no rules, never as a crash later
            out[key] = [x for x in value if isinstance(x, dict)] if isinstance(value, list) else []
    for key in JSON_MAPS:
        if key in out:
            try:
                value = json.loads(out[key])
            except ValueError:
                value = {}
            kind = str if key == "rule_faults" else int
            out[key] = (
                {
                    str(k): v
                    for k, v in value.items()
                    if isinstance(v, kind) and not isinstance(v, bool)
                }
                if isinstance(value, dict)
                else {}
            )
    return out


def health_lines(view: Mapping[str, Any], now_ms: int | None = None) -> list[str]:
    """The rules that cannot be evaluated (loud), and how long ago each rule was last
    evaluated: before `now_ms` (the reader's Redis server time, so an aggregator that stopped
    publishing shows), else before the aggregator's last tick."""
    raw = {k: view.get(k) or {} for k in JSON_MAPS}
    decoded = decode_view({k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()})
    faults, last = decoded["rule_faults"], decoded["rules_last_evaluated"]
    out = [
        f"!!! RULE FAULT: {rule} cannot be evaluated ({error}); see the aggregator's RULE_FAULT "
        "event !!!"
        for rule, error in sorted(faults.items())
    ]
    tick = view.get("tick_ms", "")
    now = now_ms if now_ms is not None else int(tick) if str(tick).isdigit() else None
    ages = []
    for rule, ms in sorted(last.items()):
        if not isinstance(ms, int) or ms <= 0:
            ages.append(f"{rule} NEVER")
        elif now is None:
            ages.append(f"{rule} at {iso(ms)}")
        else:
            ages.append(f"{rule} {max(now - ms, 0) / 1000:.1f}s")
    if ages:
        since = "ago" if now_ms is not None else "before the aggregator's last tick"
        out.append(f"rules last evaluated ({since}): " + ", ".join(ages))
    return out


class EventLog:
    """Turns evaluations into log events, once per crossing.

    `LIMIT_WARNING` when a rule rises to 50, 75 or 90 % of its limit (`LIMIT_WARNING_CLEARED`
    when it falls back), `HAUNTED_HOST` when a host becomes haunted (again only after it was
    not haunted for a whole window, so a host hovering at the ratio is reported once), and
    `SHADOW_TRIP` for every trip a shadowed rule would have made, and `BASELINE_ACCEPTED`
    when a re-arm after a baseline trip taught the baseline the level that tripped.
    """

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._haunted_seen: dict[str, int] = {}  # host -> last evaluation it was haunted at

    def events(self, ev: Evaluation) -> list[tuple[str, str, dict[str, Any]]]:
        out: list[tuple[str, str, dict[str, Any]]] = []
        for w in ev.warnings:
            # `percent`, not `level`: structlog's `level` key is the log level.
            fields: dict[str, Any] = {
                "rule": w.cause, "percent": w.new, "previous_percent": w.old,
                "value": round(w.value, 4), "limit": round(w.limit, 4),
            }  # fmt: skip
            if w.new > w.old:
                out.append(("warning", "LIMIT_WARNING", fields))
            else:
                out.append(("info", "LIMIT_WARNING_CLEARED", fields))
        for h in ev.haunted:
            last = self._haunted_seen.get(h.host)
            if last is None or ev.now_ms - last > self.window_ms:
                out.append(
                    (
                        "warning",
                        "HAUNTED_HOST",
                        {
                            "host": h.host,
                            "share": round(h.share, 4),
                            "peer_ratio": round(h.peer_ratio, 2),
                            "orders": h.orders,
                        },
                    )
                )
            self._haunted_seen[h.host] = ev.now_ms
        for t in ev.shadow_trips:
            out.append(
                (
                    "warning",
                    "SHADOW_TRIP",
                    {
                        "cause": t.cause,
                        "at_ms": t.at_ms,
                        "host": t.host,
                        "reason": f"would have tripped at {iso(t.at_ms)}: {t.detail}",
                    },
                )
            )
        if (a := ev.accepted) is not None:
            out.append(
                (
                    "warning",
                    "BASELINE_ACCEPTED",
                    {
                        "value": round(a.value, 4),
                        "trip_at_ms": a.at_ms,
                        "reason": f"re-armed after the baseline trip at {iso(a.at_ms)}: "
                        f"{a.value:.0f} orders per window is now normal for this node at this "
                        f"time of day (more than multiplier x it still trips)",
                    },
                )
            )
        return out


def _g(v: Any) -> Any:
    """A number as `status` text shows it (10.0 -> 10); anything else as it is."""
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def shadow_banner(view: Mapping[str, Any]) -> list[str]:
    """The loud line `status` prints when any rule only pretends to protect the node."""
    shadow = [c for c in str(view.get("shadow") or "").split(",") if c]
    if not shadow:
        return []
    return [
        f"!!! SHADOW MODE: rule(s) {', '.join(shadow)} are evaluated but NOT ENFORCING: "
        "they will NOT kill this node (they only log 'would have tripped') !!!"
    ]


RULE_COLUMNS = (
    Col("rule", overflow="keep"),
    Col("window", "right", "keep"),
    Col("mode", overflow="keep"),
    Col("value", overflow="keep"),
    Col("limit", overflow="keep"),
    Col("level", overflow="keep"),
    Col("note"),
)


def rule_lines(view: Mapping[str, Any]) -> list[str]:
    """The aggregator's rules as `status` shows them: limit, level, baseline, haunted hosts."""
    if not view:
        return ["aggregator: no view published (is an aggregator running for this node?)"]
    win = _g(view.get("window_s", "?"))
    expected = view.get("expected") or ""
    learned = _g(view.get("learned_s", 0))
    warm = "warm" if view.get("warm") in (True, "1") else f"warming up ({learned}s learned)"
    base = f"{float(expected):.0f} orders/{win}s" if expected else "not learned yet"
    out = [
        "",
        f"rules (window {win}s): node {view.get('node_orders', '?')} orders in window; "
        f"baseline {base}, {warm}",
    ]
    if view.get("fast_window_s"):
        out.append(
            f"fast window {_g(view['fast_window_s'])}s: node {view.get('fast_orders', '?')} orders "
            "in it (the fast rules trip a big flood within about a second)"
        )
    rules = view.get("rules") or []
    if isinstance(rules, str):
        rules = decode_view({"rules": rules})["rules"]
    if not any(r.get("active") and not r.get("shadow") for r in rules):
        out.append("  NO ACTIVE TRIP RULE: nothing would kill this node by itself now")
    cells = []
    for r in rules:
        limit = r.get("limit")
        unit = r.get("unit") or _EARLIER_UNITS.get(str(r.get("rule")))
        if unit == "share":
            value = f"top host {r.get('value', 0):.0%}"
            lim = "-" if limit is None else f"{limit:.0%}"
        elif unit == "growth":  # growth per step, as a fraction
            value = f"+{r.get('value', 0):.0%}/step"
            lim = "-" if limit is None else f"+{limit:.0%}"
        else:
            value = f"{r.get('value', 0):.0f}"
            lim = "-" if limit is None else f"{limit:.0f}"
        mode = "SHADOW (not enforcing)" if r.get("shadow") else "enforcing"
        active = "" if r.get("active") else "(inactive: warming up or below --min-orders)"
        win_s = f"{r['window_s']:g}s" if isinstance(r.get("window_s"), (int, float)) else ""
        level = f"level {r.get('level', 0)}%"
        cells.append(
            [str(r.get("rule", "?")), win_s, mode, f"value {value}", f"limit {lim}", level, active]
        )
    out.extend(table_lines(RULE_COLUMNS, cells, indent=2, header=False) if cells else [])
    haunted = view.get("haunted") or []
    if isinstance(haunted, str):
        haunted = decode_view({"haunted": haunted})["haunted"]
    for h in haunted:
        out.append(
            f"  HAUNTED HOST {h['host']}: {h['share']:.0%} of the node's window, "
            f"{h['peer_ratio']:.1f}x its peers' median"
        )
    return out
