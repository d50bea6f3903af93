"""Resolve the service commands' settings (flag, environment, config file, default) into the
typed settings they run with, refusing bad values with a ConfigError that names the field.

Pure resolution plus the few checks a start needs before binding anything (socket paths,
the state directory); nothing here starts a service.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from killswitch.core.names import InvalidName, check_roster
from killswitch.runtime.config import (
    ConfigError,
    Resolver,
    check_listen_path,
    default_state_dir,
    file_mode,
    group_id,
    host_name,
    listen_host,
    parse_listen,
    pick_state_dir,
    str_list,
)
from killswitch.runtime.validate import bounded, bounded_int, seconds_ms

if TYPE_CHECKING:  # the services import redis/aiohttp: only loaded when one runs
    from killswitch.aggregator.settings import AggregatorSettings
    from killswitch.sidecar.settings import SidecarSettings
    from killswitch.sim.loadgen import LoadgenSettings


def sidecar_settings(r: Resolver, node: str, redis_url: str) -> SidecarSettings:
    from killswitch.runtime.limitsfile import load_limits
    from killswitch.sidecar.settings import SidecarSettings

    listen = tuple(parse_listen(x) for x in r.require("listen", str_list))
    for addr in listen:
        check_listen_path(addr)
    memoryless = r.given_empty("state-dir")
    state_dir = "" if memoryless else r.get("state-dir", None, str)
    warnings: list[str] = []
    if state_dir is None:
        state_dir, warning = pick_state_dir()
        warnings += [warning] if warning else []
    elif memoryless:
        warnings.append(
            "--state-dir '': no state file, on purpose: every start of this sidecar is a new "
            "boot that blocks (unproven) until two operators admit it with arm --host, and a "
            "restart forgets the highest epoch and the scoped kills it saw"
        )
    limits_path = r.get("limits", "", str)
    limits, limits_digest = load_limits(limits_path) if limits_path else (None, "")
    settings = SidecarSettings(
        node=node,
        host=r.require("host", host_name),
        redis_url=redis_url,
        listen=listen,
        metrics_port=r.get("metrics-port", None, bounded_int("metrics-port")),
        metrics_listen=r.get("metrics-listen", "127.0.0.1", listen_host),
        flush_interval=r.get("flush-interval", 0.1, bounded("flush-interval")),
        stale_after=r.get("stale-after", 1.0, bounded("stale-after")),
        state_dir=state_dir,
        memoryless=memoryless,
        max_conns=r.get("max-conns", 1024, bounded_int("max-conns")),
        line_timeout=r.get("line-timeout", 5.0, bounded("line-timeout")),
        socket_mode=r.get("socket-mode", None, file_mode),
        socket_gid=r.get("socket-group", None, group_id),
        operators=operators_path(r),
        limits=limits,
        limits_digest=limits_digest,
        on_kill=r.get("on-kill", "", str),
        on_kill_grace=r.get("on-kill-grace", 10.0, bounded("on-kill-grace")),
        attest=tuple(r.get("attest", [], str_list)),
        attest_interval=r.get("attest-interval", 2.0, bounded("attest-interval")),
        extra={"warnings": warnings},
    )
    if settings.flush_interval >= settings.stale_after:
        raise ConfigError(
            "flush-interval must be shorter than stale-after, or every gate goes stale"
        )
    return settings


def operators_path(r: Resolver) -> str:
    """The --operators path; the service loads it at start (a bad file: exit 2)."""
    return r.get("operators", "", str)


def check_state_dir(directory: str) -> None:
    """Refuse (exit 2) a state directory the sidecar could not write its epoch memory to."""
    from killswitch.store.localstate import prepare_dir

    problem = prepare_dir(directory)
    if problem:
        raise ConfigError(f"state-dir: {problem}")


def loadgen_settings(r: Resolver) -> LoadgenSettings:
    from killswitch.sim.loadgen import LoadgenSettings

    return LoadgenSettings(
        address=str(parse_listen(r.require("listen", str))),
        rate=r.get("rate", 100.0, bounded("rate")),
        duration=r.get("duration", None, bounded("duration")),
        name=r.get("name", "router", str),
    )


def aggregator_settings(r: Resolver, node: str, redis_url: str) -> AggregatorSettings:
    from killswitch.aggregator.settings import AggregatorSettings, default_instance
    from killswitch.cli import rulecli  # the rule modules load only for the aggregator
    from killswitch.core.limitburst import LimitBurstConfig

    try:
        hosts = check_roster(r.require("hosts", str_list))
    except InvalidName as e:
        raise ConfigError(f"hosts: {e}") from None
    monitor = rulecli.rule_config(r)
    max_refusals = r.get("max-limit-refusals", None, bounded_int("max-limit-refusals"))
    limit_burst = (
        LimitBurstConfig(
            max_refusals,
            seconds_ms("limit-window")(r.get("limit-window", 1.0, bounded("limit-window"))),
            r.get("limit-min-hosts", 2, bounded_int("limit-min-hosts")),
        )
        if max_refusals is not None
        else None
    )
    return AggregatorSettings(
        node=node,
        redis_url=redis_url,
        hosts=hosts,
        monitor=monitor,
        metrics_port=r.get("metrics-port", None, bounded_int("metrics-port")),
        metrics_listen=r.get("metrics-listen", "127.0.0.1", listen_host),
        tick=r.get("tick", 0.1, bounded("tick")),
        confirm_timeout=r.get("confirm-timeout", 5.0, bounded("confirm-timeout")),
        lease_ttl=r.get("lease-ttl", 2.0, bounded("lease-ttl")),
        require_durable=r.get("require-durable", False, truthy),
        fleet_max_orders=r.get("fleet-max-orders", None, bounded_int("max-orders")),
        instance=r.get("instance", "", str) or default_instance(),
        operators=operators_path(r),
        limit_burst=limit_burst,
        on_haunted=r.get("on-haunted", "kill", on_haunted),
        audit_log=r.get("audit-log", str(Path(default_state_dir()) / f"audit-{node}.jsonl"), str),
    )


def on_haunted(v: Any) -> str:
    if v not in ("kill", "isolate"):
        raise ValueError("isolate or kill")
    return str(v)


def truthy(v: Any) -> bool:
    """A yes/no setting: a flag's True, or 1/true/yes/on from the environment or TOML."""
    if isinstance(v, bool):
        return v
    word = str(v).strip().lower()
    if word not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("must be one of 1/0, true/false, yes/no, on/off")
    return word in ("1", "true", "yes", "on")
