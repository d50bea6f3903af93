"""The trip-rule flags shared by `killswitch aggregator` and `killswitch backtest`, and the
bodies of the `backtest` and `export` commands.

One definition of every rule flag, so the backtest a user tunes with and the aggregator they
deploy read the same settings the same way (flag, environment, config file, default) and
refuse the same bad values, naming the field. It parses and formats; the decisions are in
`anomaly` and `backtest`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from killswitch.cli import guardflags
from killswitch.core.anomaly import CAUSES, MonitorConfig
from killswitch.core.rules import RATE_HEADROOM
from killswitch.runtime.config import ConfigError, Resolver
from killswitch.runtime.validate import bounded, bounded_int, seconds_ms

# MonitorConfig field -> the flag that sets it (validation errors name the flag).
FLAG_OF = {
    "max_orders": "max-orders",
    "window_ms": "window",
    "baseline_multiplier": "baseline-multiplier",
    "breach_windows": "breach-windows",
    "min_orders": "min-orders",
    "warmup_ms": "warmup",
    "max_host_share": "max-host-share",
    "haunted_ratio": "haunted-ratio",
    "shadow": "shadow",
    "half_life_ms": "half-life",
    "profile_bucket_ms": "profile-bucket",
    "profile_half_life_ms": "profile-half-life",
    "fast_window_ms": "fast-window",
    "fast_multiplier": "fast-multiplier",
    "fast_breach_ms": "fast-breach",
    "fast_min_orders": "fast-min-orders",
    "fast_host_share": "fast-host-share",
    "max_rate": "max-rate",
    **guardflags.FLAG_OF,
}


def add_rule_flags(parser: argparse.ArgumentParser) -> None:
    """The trip rules' flags (see docs/ANOMALY.md for what each rule does)."""
    d = MonitorConfig()
    g = parser.add_argument_group(
        "trip rules",
        "The node is killed when any enforcing rule trips. Counts are orders across the node "
        "within one --window; see docs/ANOMALY.md.",
    )
    g.add_argument(
        "--max-orders", type=int, metavar="N",
        help="static cap: kill when more than N orders were sent across the node within --window (default off)",
    )  # fmt: skip
    g.add_argument(
        "--window", type=float, metavar="S", help="sliding window in seconds (default 10)"
    )
    g.add_argument(
        "--baseline-multiplier", metavar="X",
        help=f"kill when the window holds more than X times the learned baseline (default {d.baseline_multiplier:g}; 'off' disables the rule)",
    )  # fmt: skip
    g.add_argument(
        "--breach-windows", type=int, metavar="N",
        help=f"consecutive windows a baseline or host-share breach must last (default {d.breach_windows})",
    )  # fmt: skip
    g.add_argument(
        "--min-orders", type=int, metavar="N",
        help=f"the baseline and host-share rules never trip a window below N orders (default {d.min_orders})",
    )  # fmt: skip
    g.add_argument(
        "--warmup", type=float, metavar="S",
        help=f"seconds of learning before the baseline rule may trip (default {d.warmup_ms / 1000:g})",
    )  # fmt: skip
    g.add_argument(
        "--max-host-share", type=float, metavar="F",
        help="kill when one host sends more than this fraction of the window, e.g. 0.5 (default off)",
    )  # fmt: skip
    g.add_argument(
        "--haunted-ratio", type=float, metavar="X",
        help=f"report a host as haunted at X times its peers' median (default {d.haunted_ratio:g})",
    )  # fmt: skip
    g.add_argument(
        "--shadow", metavar="RULES",
        help=f"rules that only report ('would have tripped at ...'), never kill: a comma list of {','.join(CAUSES)}, or 'all'",
    )  # fmt: skip
    g.add_argument(
        "--max-rate", metavar="N",
        help=f"rate cap: kill when more than N orders per second were sent across the node within --fast-window (default off); 'auto' derives it from --max-orders ({RATE_HEADROOM:g}x its average rate)",
    )  # fmt: skip
    g.add_argument(
        "--fast-window", type=float, metavar="S",
        help=f"the fast window of the fast rules (baseline_fast, host_share_fast, max_rate), in seconds; they are off unless it is shorter than --window (default {d.fast_window_ms / 1000:g})",
    )  # fmt: skip
    g.add_argument(
        "--fast-multiplier", metavar="X",
        help=f"baseline_fast: kill when the fast window holds more than X times the baseline's rate (default {d.fast_multiplier:g}; 'off' disables the rule)",
    )  # fmt: skip
    g.add_argument(
        "--fast-breach", type=float, metavar="S",
        help=f"seconds a fast breach must hold, to filter one tick's noise (default {d.fast_breach_ms / 1000:g}; 0 trips at the first breaching tick)",
    )  # fmt: skip
    g.add_argument(
        "--fast-min-orders", type=int, metavar="N",
        help=f"the fast baseline and host-share rules never trip a fast window below N orders (default {d.fast_min_orders})",
    )  # fmt: skip
    g.add_argument(
        "--fast-host-share", metavar="on|off",
        help="host_share_fast: the --max-host-share limit on the fast window too (default on, with --max-host-share)",
    )  # fmt: skip
    guardflags.add_flags(g, d)
    g.add_argument(
        "--half-life", type=float, metavar="S",
        help=f"half-life of the baseline's moving average in seconds (default {d.half_life_ms / 1000:g})",
    )  # fmt: skip
    g.add_argument(
        "--profile-bucket", type=float, metavar="S",
        help=f"width of a time-of-day profile bucket in seconds (default {d.profile_bucket_ms / 1000:g})",
    )  # fmt: skip
    g.add_argument(
        "--profile-half-life", type=float, metavar="S",
        help=f"half-life of a profile bucket, in time spent in it (default {d.profile_half_life_ms / 1000:g})",
    )  # fmt: skip


def _multiplier(v: Any) -> float | None:
    if isinstance(v, str) and v.strip().lower() in ("off", "none"):
        return None
    return bounded("baseline-multiplier")(v)


def _rate(v: Any) -> tuple[float | None, bool]:
    """`--max-rate`: (max_rate, max_rate_auto)."""
    if isinstance(v, str) and v.strip().lower() == "auto":
        return None, True
    if isinstance(v, str) and v.strip().lower() in ("off", "none"):
        return None, False
    return bounded("max-rate")(v), False


def _switch(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word in ("on", "true", "yes", "1"):
        return True
    if word in ("off", "false", "no", "0"):
        return False
    raise ValueError("must be 'on' or 'off'")


def _count(v: Any) -> int:
    if isinstance(v, float) and not v.is_integer():
        raise ValueError("must be a whole number")
    i = int(v)
    if i < 0:
        raise ValueError("must not be negative")
    return i


def _fraction(v: Any) -> float:
    f = float(v)
    if not 0.0 < f < 1.0:  # also refuses nan
        raise ValueError("must be a fraction between 0 and 1, e.g. 0.5")
    return f


def _shadow(v: Any) -> frozenset[str] | bool:
    names = [p.strip() for p in (v if isinstance(v, list) else str(v).split(",")) if p.strip()]
    if names == ["all"]:
        return True
    unknown = sorted(set(names) - set(CAUSES))
    if unknown:
        raise ValueError(f"unknown rules {unknown}; known: {', '.join(CAUSES)} or 'all'")
    return frozenset(names)


def rule_config(r: Resolver) -> MonitorConfig:
    """Resolve the rule flags into a validated `MonitorConfig`; ConfigError names the field."""
    d = MonitorConfig()
    values: dict[str, Any] = {
        "max_orders": r.get("max-orders", None, bounded_int("max-orders")),
        "window_ms": r.get("window", d.window_ms, seconds_ms("window")),
        "baseline_multiplier": r.get("baseline-multiplier", d.baseline_multiplier, _multiplier),
        "breach_windows": r.get("breach-windows", d.breach_windows, bounded_int("breach-windows")),
        "min_orders": r.get("min-orders", d.min_orders, bounded_int("min-orders")),
        "warmup_ms": r.get("warmup", d.warmup_ms, seconds_ms("warmup")),
        "max_host_share": r.get("max-host-share", None, _fraction),
        "haunted_ratio": r.get("haunted-ratio", d.haunted_ratio, bounded("haunted-ratio")),
        "shadow": r.get("shadow", d.shadow, _shadow),
        "half_life_ms": r.get("half-life", d.half_life_ms, seconds_ms("half-life")),
        "profile_bucket_ms": r.get(
            "profile-bucket", d.profile_bucket_ms, seconds_ms("profile-bucket")
        ),
        "profile_half_life_ms": r.get(
            "profile-half-life", d.profile_half_life_ms, seconds_ms("profile-half-life")
        ),
        "fast_window_ms": r.get("fast-window", d.fast_window_ms, seconds_ms("fast-window")),
        "fast_multiplier": r.get("fast-multiplier", d.fast_multiplier, _multiplier),
        "fast_breach_ms": r.get("fast-breach", d.fast_breach_ms, seconds_ms("fast-breach")),
        "fast_min_orders": r.get("fast-min-orders", d.fast_min_orders, _count),
        "fast_host_share": r.get("fast-host-share", d.fast_host_share, _switch),
        **guardflags.values(r, d),
    }
    values["max_rate"], values["max_rate_auto"] = r.get(
        "max-rate", (d.max_rate, d.max_rate_auto), _rate
    )
    try:
        return MonitorConfig(**values)
    except ValueError as e:
        field, _, why = str(e).partition(": ")
        flag = FLAG_OF.get(field)
        if flag is None:  # a BaselineParams message ("half_life_ms must be positive ...")
            flag = next((f for k, f in FLAG_OF.items() if str(e).startswith(k)), "config")
        raise ConfigError(f"{flag}: {why or e}") from None


def config_json(config: MonitorConfig) -> dict[str, Any]:
    out = asdict(config)
    out["rate_cap"] = config.rate_cap
    out["causes"] = list(config.causes)
    out["shadow"] = (
        list(CAUSES)
        if config.shadow is True
        else sorted(config.shadow)
        if not isinstance(config.shadow, bool)
        else []
    )
    return out


# -- backtest ------------------------------------------------------------------------------


def add_backtest_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--counts", metavar="FILE.csv",
        help="recorded per-host counts: timestamp,host,count rows (see `killswitch export`)",
    )  # fmt: skip
    parser.add_argument(
        "--scenario", metavar="NAME",
        help="replay a scenario of the library instead of --counts (e.g. post_burst_flood, runaway_1m, pulse, normal_day_3; see docs/ANOMALY.md), from its own baseline unless --baseline is given",
    )  # fmt: skip
    parser.add_argument(
        "--tick", type=float, metavar="S",
        help="seconds between evaluations, as the aggregator's --tick (default 0.1)",
    )  # fmt: skip
    parser.add_argument(
        "--baseline", metavar="FILE.json",
        help="start from a stored baseline: a JSON object in the layout of the node's baseline "
        "hash (e.g. yesterday's), instead of learning from nothing",
    )  # fmt: skip
    parser.add_argument(
        "--rearm-after", metavar="S",
        help="after a trip, re-arm this many seconds later as operators would (default 60; "
        "'never' stops at the first trip)",
    )  # fmt: skip
    add_rule_flags(parser)


def _rearm(v: Any) -> int | None:
    if isinstance(v, str) and v.strip().lower() in ("never", "none", "off"):
        return None
    return seconds_ms("rearm-after")(v)


def _baseline_file(path: str | None, config: MonitorConfig) -> dict[str, str] | None:
    """The `--baseline` file, checked the way the aggregator checks a stored baseline."""
    from killswitch.core.baseline import Baseline, BaselineStateError

    if path is None:
        return None
    try:
        doc = json.loads(Path(path).read_text("utf-8"))
    except OSError as e:
        raise ConfigError(f"baseline: cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ConfigError(f"baseline: {path} is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"baseline: {path} must hold one JSON object (the baseline hash)")
    data = {str(k): str(v) for k, v in doc.items()}
    try:
        Baseline.from_dict(data, config.baseline_params())
    except BaselineStateError as e:
        raise ConfigError(f"baseline: {path}: {e}") from None
    return data


def backtest_command(r: Resolver, as_json: bool) -> tuple[int, str]:
    """`killswitch backtest`: (exit code, text to print)."""
    from killswitch.core.backtest import REARM_AFTER_MS, CsvError, read_counts_csv, replay
    from killswitch.core.ruleview import iso

    name = r.get("scenario", None, str)
    path = (
        r.require("counts", str, " (or give --scenario NAME)")
        if name is None
        else f"scenario {name}"
    )
    config = rule_config(r)
    tick_ms = r.get("tick", 100, seconds_ms("tick"))
    default_rearm: int | None = REARM_AFTER_MS
    rearm = r.get("rearm-after", default_rearm, _rearm)
    baseline = _baseline_file(r.get("baseline", None, str), config)
    if name is not None:
        events, baseline = guardflags.scenario_flow(name, config, baseline)
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise ConfigError(f"counts: cannot read {path}: {e.strerror or e}") from None
        try:
            events = read_counts_csv(text)
        except CsvError as e:
            raise ConfigError(f"counts: {path} {e}") from None
    result = replay(events, config, tick_ms=tick_ms, rearm_after_ms=rearm, baseline=baseline)
    trips = [
        {
            "at_ms": t.at_ms,
            "time": iso(t.at_ms),
            "cause": t.cause,
            "shadow": t.shadow,
            "host": t.host,
            "node_total": t.node_total,
            "limit": t.limit,
            "detail": t.detail,
        }
        for t in result.trips
    ]
    if as_json:
        doc = {
            "counts": path,
            "scenario": name,
            "rows": len(events),
            "ticks": result.ticks,
            "tick_ms": tick_ms,
            "first_ms": events[0].ts_ms if events else None,
            "last_ms": events[-1].ts_ms if events else None,
            "config": config_json(config),
            "trips": trips,
        }
        return 0, json.dumps(doc)
    lines = [
        f"backtest of {path}: {len(events)} rows, {result.ticks} evaluations every "
        f"{tick_ms} ms, {sum(not t['shadow'] for t in trips)} trips, "
        f"{sum(bool(t['shadow']) for t in trips)} shadow trips"
    ]
    for t in trips:
        kind = "SHADOW (would have tripped)" if t["shadow"] else "TRIP"
        lines.append(f"  {t['time']}  {kind:<27} {t['cause']:<15}  {t['detail']}")
    return 0, "\n".join(lines)


# -- export --------------------------------------------------------------------------------


def add_export_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hosts", metavar="H1,H2,...", help="hosts to export (default: the node's roster)"
    )
    parser.add_argument(
        "--attempted", action="store_true", default=None,
        help="count blocked orders too (what the routers tried to send), not only allowed ones",
    )  # fmt: skip


def counts_csv(
    flows: dict[str, list[tuple[str, dict[str, str]]]], *, attempted: bool, since_ms: int = 0
) -> str:
    """Flow entries as `timestamp,host,count` rows, oldest first; timestamps are the entries'
    Redis server time in epoch seconds with millisecond precision."""
    rows: list[tuple[int, str, int]] = []
    for host, entries in flows.items():
        for entry_id, f in entries:
            ts = int(entry_id.split("-", 1)[0])
            count = int(f.get("a", 0)) + (int(f.get("b", 0)) if attempted else 0)
            if ts >= since_ms and count > 0:
                rows.append((ts, host, count))
    rows.sort()
    return "".join(["timestamp,host,count\n", *(f"{ts / 1000:.3f},{h},{c}\n" for ts, h, c in rows)])


async def export_flows(
    redis_url: str, node: str, hosts: Sequence[str] | None
) -> dict[str, list[tuple[str, dict[str, str]]]]:
    from killswitch.store.redisconn import connect
    from killswitch.store.store import Store

    redis = connect(redis_url, socket_timeout=5.0, client_name=f"ks-export-{node}")
    try:
        store = Store(redis, node)
        roster = list(hosts) if hosts else list(await store.roster())
        return await store.flow_entries(roster)
    finally:
        await redis.aclose()
