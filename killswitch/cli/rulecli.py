"""The trip rules' settings as the aggregator and `killswitch backtest` build them, and the
bodies of the `backtest` and `export` commands.

The rule flags are declared once, in `core.settings.options`, so the backtest a user tunes with and
the aggregator they deploy read the same settings the same way (flag, environment, config
file, default), refuse the same bad values, naming the setting, and start from the same
defaults. It formats; the decisions are in `anomaly` and `backtest`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from killswitch.core.rules.anomaly import CAUSES, MonitorConfig
from killswitch.core.rules.config import SETTINGS
from killswitch.core.settings.options import to_ms
from killswitch.runtime.config import ConfigError, Resolver


def rule_config(r: Resolver) -> MonitorConfig:
    """The trip rules' settings as a `MonitorConfig`, one field per option of the trip rules
    (`config.SETTINGS`). Every value was converted and bounded by the table's converter (a
    bad one is a ConfigError naming its setting), so the config's own checks cannot refuse
    it."""
    values: dict[str, Any] = {}
    for field, (name, per) in SETTINGS.items():
        value = r.get(name)
        values[field] = to_ms(value) if per == 1000 and value is not None else value
    shadow = r.get("shadow")
    values["shadow"] = frozenset() if shadow is None else shadow
    values["max_rate"], values["max_rate_auto"] = r.get("max-rate")
    span, least = values["breach_span"], values["breach_windows"] - 1
    if span is not None and span < least:  # the one bound that depends on another setting
        raise ConfigError(
            f"breach-span: must be at least --breach-windows - 1 ({least}), got {span}"
        )
    return MonitorConfig(**values)


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


def _baseline_file(path: str | None, config: MonitorConfig) -> dict[str, str] | None:
    """The `--baseline` file, checked the way the aggregator checks a stored baseline."""
    from killswitch.core.rules.baseline import Baseline, BaselineStateError

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


def _scenario(name: str, config: MonitorConfig) -> tuple[list[Any], dict[str, str] | None]:
    """`--scenario NAME`: the library's flow, and the baseline the scenario starts from."""
    from killswitch.core.rules import scenarios

    try:
        s = scenarios.named(name)
    except ValueError as e:
        raise ConfigError(f"scenario: {e}") from None
    return scenarios.events(s), scenarios.start_baseline(s, config)


def backtest_command(r: Resolver) -> tuple[int, str]:
    """`killswitch backtest`: (exit code, text to print). The rules run with the aggregator's
    defaults: without --max-orders, its static cap derived from the hosts in the counts."""
    from killswitch.core.rules.backtest import CsvError, read_counts_csv, replay
    from killswitch.core.rules.config import with_static_cap
    from killswitch.view.ruleview import iso
    from killswitch.view.table import Col, table_lines

    as_json = bool(r.get("json"))
    name = r.get("scenario")
    path = r.require("counts") if name is None else f"scenario {name}"
    tick_ms = to_ms(r.get("tick"))
    rearm = r.get("rearm-after")
    if name is not None:
        events, start = _scenario(name, rule_config(r))
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise ConfigError(f"counts: cannot read {path}: {e.strerror or e}") from None
        try:
            events = read_counts_csv(text)
        except CsvError as e:
            raise ConfigError(f"counts: {path} {e}") from None
    config = with_static_cap(rule_config(r), len({e.host for e in events}))
    baseline = _baseline_file(r.get("baseline"), config)
    if name is not None and baseline is None:
        baseline = start
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
    rows = [
        [
            str(t["time"]),
            "SHADOW (would have tripped)" if t["shadow"] else "TRIP",
            str(t["cause"]),
            str(t["detail"]),
        ]
        for t in trips
    ]
    cols = (
        Col("time", overflow="keep"),
        Col("kind", overflow="keep"),
        Col("cause", overflow="keep"),
        Col("detail"),
    )
    lines.extend(table_lines(cols, rows, indent=2, header=False) if rows else [])
    return 0, "\n".join(lines)


# -- export --------------------------------------------------------------------------------


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
