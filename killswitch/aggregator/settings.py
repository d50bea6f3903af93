"""The aggregator's typed settings, resolved once by the CLI (or built by a Python caller)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.core.rules.config import default_cap, with_static_cap
from killswitch.core.rules.limitburst import LimitBurstConfig
from killswitch.core.settings.options import CAP_PER_HOST_PER_S, default

__all__ = [
    "CAP_PER_HOST_PER_S", "AggregatorSettings", "default_cap", "default_instance",
    "with_static_cap",
]  # fmt: skip


@dataclass(frozen=True)
class AggregatorSettings:
    node: str
    redis_url: str
    hosts: tuple[str, ...]
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    metrics_port: int | None = None
    metrics_listen: str = default("metrics-listen")  # 0.0.0.0: scraped from elsewhere
    tick: float = default("tick")
    confirm_timeout: float = default("confirm-timeout")
    baseline_save_interval: float = 5.0  # seconds between baseline writes (and one on stop)
    instance: str = field(default_factory=lambda: default_instance())  # noqa: PLW0108 (defined below)
    lease_ttl: float = default("lease-ttl")  # leader lease on Redis server time, renewed every tick
    require_durable: bool = default(
        "require-durable"
    )  # refuse to start unless Redis runs with appendonly
    operators: str = ""  # the operators' allowed-signers file (required: the CLI and
    # `Aggregator` refuse to start without it, as no arm could verify and no rule would trip)
    # Firm-wide cap: orders across every node of the fleet within the window (None: off).
    fleet_max_orders: int | None = None
    limit_burst: LimitBurstConfig | None = None  # kill on local-limit refusals across hosts
    on_haunted: str = default(
        "on-haunted"
    )  # host_share trip: "kill" the node or "isolate" the host
    audit_log: str = ""  # local JSONL copy of the audit chain ("": none)


def default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"
