"""The aggregator's typed settings, resolved once by the CLI (or built by a Python caller)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from killswitch.core.anomaly import MonitorConfig
from killswitch.core.limitburst import LimitBurstConfig


@dataclass(frozen=True)
class AggregatorSettings:
    node: str
    redis_url: str
    hosts: tuple[str, ...]
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    metrics_port: int | None = None
    tick: float = 0.1
    confirm_timeout: float = 5.0
    baseline_save_interval: float = 5.0  # seconds between baseline writes (and one on stop)
    instance: str = field(default_factory=lambda: default_instance())  # noqa: PLW0108 (defined below)
    lease_ttl: float = 2.0  # leader lease on Redis server time, renewed every tick
    require_durable: bool = False  # refuse to start unless Redis runs with appendonly
    operators: str = ""  # the operators' allowed-signers file ("": never treats a node as armed)
    # Firm-wide cap: orders across every node of the fleet within the window (None: off).
    fleet_max_orders: int | None = None
    limit_burst: LimitBurstConfig | None = None  # kill on local-limit refusals across hosts
    on_haunted: str = "kill"  # host_share trip: "kill" the node or "isolate" the host
    audit_log: str = ""  # local JSONL copy of the audit chain ("": none)


def default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
