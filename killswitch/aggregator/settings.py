"""The aggregator's typed settings, resolved once by the CLI (or built by a Python caller)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace

from killswitch.core.anomaly import CAUSES, MAX_ORDERS, MonitorConfig
from killswitch.core.limitburst import LimitBurstConfig


@dataclass(frozen=True)
class AggregatorSettings:
    node: str
    redis_url: str
    hosts: tuple[str, ...]
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    metrics_port: int | None = None
    metrics_listen: str = "127.0.0.1"  # 0.0.0.0 to be scraped from another host or container
    tick: float = 0.1
    confirm_timeout: float = 5.0
    baseline_save_interval: float = 5.0  # seconds between baseline writes (and one on stop)
    instance: str = field(default_factory=lambda: default_instance())  # noqa: PLW0108 (defined below)
    lease_ttl: float = 2.0  # leader lease on Redis server time, renewed every tick
    require_durable: bool = False  # refuse to start unless Redis runs with appendonly
    operators: str = ""  # the operators' allowed-signers file (required: the CLI and
    # `Aggregator` refuse to start without it, as no arm could verify and no rule would trip)
    # Firm-wide cap: orders across every node of the fleet within the window (None: off).
    fleet_max_orders: int | None = None
    limit_burst: LimitBurstConfig | None = None  # kill on local-limit refusals across hosts
    on_haunted: str = "kill"  # host_share trip: "kill" the node or "isolate" the host
    audit_log: str = ""  # local JSONL copy of the audit chain ("": none)


def default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# The static cap an aggregator enforces when none is given: this many orders per second per
# roster host, over the window. A backstop that is always active (the baseline rule spends
# its first --warmup learning), set far above normal flow; give --max-orders for a real limit.
DEFAULT_CAP_PER_HOST_PER_S = 1000


def default_cap(window_ms: int, hosts: int) -> int:
    return max(1, round(DEFAULT_CAP_PER_HOST_PER_S * max(hosts, 1) * window_ms / 1000))


def with_static_cap(monitor: MonitorConfig, hosts: int) -> MonitorConfig:
    """`monitor` with its static cap enforcing: derived by `default_cap` when none was given,
    and never in shadow (`--shadow all` shadows the other rules; `backtest` may still
    preview a shadowed cap)."""
    if monitor.max_orders is None:
        monitor = replace(monitor, max_orders=default_cap(monitor.window_ms, hosts))
    shadow = monitor.shadow
    if shadow is True:
        shadow = frozenset(c for c in CAUSES if c != MAX_ORDERS)
    elif not isinstance(shadow, bool) and MAX_ORDERS in shadow:
        shadow = shadow - {MAX_ORDERS}
    return monitor if shadow == monitor.shadow else replace(monitor, shadow=shadow)
