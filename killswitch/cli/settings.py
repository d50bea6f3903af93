"""Resolve the service commands' settings (flag, environment, config file, default) into the
typed settings they run with, refusing bad values with a ConfigError that names the field.

Pure resolution plus the few checks a start needs before binding anything (socket paths,
the state directory); nothing here starts a service.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from killswitch.runtime.config import (
    ConfigError,
    Resolver,
    check_listen_path,
    default_state_dir,
    pick_state_dir,
)
from killswitch.runtime.fdlimit import fit_max_conns

if TYPE_CHECKING:  # the services import redis/aiohttp: only loaded when one runs
    from killswitch.aggregator.settings import AggregatorSettings
    from killswitch.core.enforce.fence import FenceSpec
    from killswitch.sidecar.settings import SidecarSettings
    from killswitch.sim.alertsink import AlertSinkSettings
    from killswitch.sim.loadgen import LoadgenSettings


def sidecar_settings(r: Resolver, node: str, redis_url: str) -> SidecarSettings:
    from killswitch.runtime.limitsfile import load_limits
    from killswitch.sidecar.settings import SidecarSettings

    listen = r.require("listen")
    fix = r.get("fix") or ()  # (listen, upstream) pairs
    for addr in (*listen, *(route[0] for route in fix)):
        check_listen_path(addr)
    state_dir = r.get("state-dir")  # '' from any source: none, on purpose (Option.empty)
    memoryless = state_dir == ""
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
    limits_path = r.get("limits") or ""
    limits, limits_digest = load_limits(limits_path) if limits_path else (None, "")
    given = r.get("max-conns") if r.source("max-conns") is not None else None
    max_conns, warning = fit_max_conns(given, r.get("max-conns"))
    warnings += [warning] if warning else []
    settings = SidecarSettings(
        node=node,
        host=r.require("host"),
        redis_url=redis_url,
        listen=listen,
        metrics_port=r.get("metrics-port"),
        metrics_listen=r.get("metrics-listen"),
        flush_interval=r.get("flush-interval"),
        stale_after=r.get("stale-after"),
        state_dir=state_dir,
        memoryless=memoryless,
        max_conns=max_conns,
        line_timeout=r.get("line-timeout"),
        socket_mode=r.get("socket-mode"),
        socket_gid=r.get("socket-group"),
        operators=operators_path(r),
        limits=limits,
        limits_digest=limits_digest,
        on_kill=r.get("on-kill") or "",
        on_kill_grace=r.get("on-kill-grace"),
        attest=tuple(r.get("attest") or ()),
        attest_interval=r.get("attest-interval"),
        fix=fix,
        **fence_settings(r),
        recorder=r.get("recorder"),  # '' (any source): none; None: the default path
        recorder_size=r.get("recorder-size"),
        recorder_freeze=r.get("recorder-freeze"),
        recorder_writer=r.get("recorder-writer"),
        extra={"warnings": warnings},
    )
    check_together(r)
    return settings


def check_together(r: Resolver) -> None:
    """The checks that take two settings at once (`config --check` makes them too)."""
    if r.verb == "sidecar":
        fence_spec(r)  # the endpoints and uids parse, and the fence's flags go together
    if r.verb == "sidecar" and r.get("flush-interval") >= r.get("stale-after"):
        raise ConfigError(
            "flush-interval must be shorter than stale-after, or every gate goes stale"
        )


def fence_settings(r: Resolver) -> dict[str, Any]:
    """The network fence's settings; with `--fence`, refused (exit 2) unless this process may
    install it (CAP_NET_ADMIN, libnftables, `ss`)."""

    spec = fence_spec(r)
    if spec is None:
        return {}
    netns = r.get("fence-netns") or ""
    check_fence(netns)
    return {"fence": spec, "fence_netns": netns, "fence_on_kill": bool(r.get("fence-on-kill"))}


def fence_spec(r: Resolver) -> FenceSpec | None:
    """The fenced endpoints and allowed uids (None: no `--fence`); bad ones are refused."""
    import os

    from killswitch.core.enforce.fence import FenceError, FenceSpec, parse_endpoint, parse_uid

    endpoints = list(r.get("fence") or ())
    try:
        uids = [parse_uid(u) for u in r.get("fence-allow-uid") or ()]
    except ValueError as e:
        raise ConfigError(f"fence-allow-uid: {e}") from None
    if not endpoints:
        if r.get("fence-netns") or r.get("fence-on-kill") or uids:
            raise ConfigError("fence-netns, fence-allow-uid and fence-on-kill need --fence")
        return None
    try:
        return FenceSpec(tuple(parse_endpoint(e) for e in endpoints), tuple(uids or [os.getuid()]))
    except FenceError as e:
        raise ConfigError(str(e)) from None


def check_fence(netns: str) -> None:
    """Refuse a fence this process could not install, before anything starts."""
    import shutil

    from killswitch.core.enforce.fence import CAP_SYS_ADMIN, GRANT_HINT, NETNS_HINT, has_cap
    from killswitch.sidecar.nftables import LIBNFTABLES, load_library

    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    if not has_cap(status):
        raise ConfigError(GRANT_HINT)
    if netns and not has_cap(status, CAP_SYS_ADMIN):
        raise ConfigError(NETNS_HINT)
    try:
        load_library()
    except OSError:
        raise ConfigError(f"fence: {LIBNFTABLES} cannot be loaded: install nftables") from None
    if shutil.which("ss") is None:
        raise ConfigError("fence: ss is not installed (iproute2): it cuts established connections")
    if netns and not Path(f"/run/netns/{netns}").exists():
        raise ConfigError(f"fence-netns: no network namespace {netns} (/run/netns/{netns})")


def operators_path(r: Resolver) -> str:
    """The --operators path; the service loads it at start (a bad file: exit 2)."""
    return str(r.get("operators") or "")


def require_operators(path: str) -> None:
    """The aggregator's --operators: without it no arm verifies and no rule ever trips, so it
    refuses to start (exit 2) instead of running with its trips silently off."""
    if not path:
        raise ConfigError(
            "operators: the aggregator needs --operators PATH (or KILLSWITCH_OPERATORS): "
            "without it no arm can be verified and no rule would ever trip"
        )


def check_state_dir(directory: str) -> None:
    """Refuse (exit 2) a state directory the sidecar could not write its epoch memory to."""
    from killswitch.store.localstate import prepare_dir

    problem = prepare_dir(directory)
    if problem:
        raise ConfigError(f"state-dir: {problem}")


def alertsink_settings(r: Resolver) -> AlertSinkSettings:
    from killswitch.sim.alertsink import AlertSinkSettings

    return AlertSinkSettings(bind=r.get("bind"), port=r.get("port"))


def loadgen_settings(r: Resolver) -> LoadgenSettings:
    from killswitch.sim.loadgen import LoadgenSettings

    return LoadgenSettings(
        address=r.require("listen"),
        rate=r.get("rate"),
        duration=r.get("duration"),
        name=r.get("name"),
    )


def aggregator_settings(r: Resolver, node: str, redis_url: str) -> AggregatorSettings:
    from killswitch.aggregator.settings import AggregatorSettings, default_instance
    from killswitch.cli import rulecli  # the rule modules load only for the aggregator
    from killswitch.core.rules.limitburst import LimitBurstConfig
    from killswitch.core.settings.options import to_ms

    hosts = r.require("hosts")
    monitor = rulecli.rule_config(r)
    max_refusals = r.get("max-limit-refusals")
    limit_burst = (
        LimitBurstConfig(max_refusals, to_ms(r.get("limit-window")), r.get("limit-min-hosts"))
        if max_refusals is not None
        else None
    )
    audit_log = r.get("audit-log")
    settings = AggregatorSettings(
        node=node,
        redis_url=redis_url,
        hosts=hosts,
        monitor=monitor,
        metrics_port=r.get("metrics-port"),
        metrics_listen=r.get("metrics-listen"),
        tick=r.get("tick"),
        confirm_timeout=r.get("confirm-timeout"),
        lease_ttl=r.get("lease-ttl"),
        require_durable=r.get("require-durable"),
        fleet_max_orders=r.get("fleet-max-orders"),
        instance=r.get("instance") or default_instance(),
        operators=operators_path(r),
        limit_burst=limit_burst,
        on_haunted=r.get("on-haunted"),
        audit_log=str(Path(default_state_dir()) / f"audit-{node}.jsonl")
        if audit_log is None
        else audit_log,
    )
    require_operators(settings.operators)  # last: a bad value elsewhere is named first
    return settings
