"""The sidecar's typed settings, resolved once by the CLI (or built by a Python caller)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from killswitch.core.limits import Limits
from killswitch.runtime.config import ListenAddr


@dataclass(frozen=True)
class SidecarSettings:
    node: str
    host: str
    redis_url: str
    listen: tuple[ListenAddr, ...] = ()
    metrics_port: int | None = None
    flush_interval: float = 0.1
    stale_after: float = 1.0
    state_dir: str = ""
    operators: str = ""  # the operators' allowed-signers file ("": this gate never opens)
    limits: Limits | None = None  # local pre-trade limits (`--limits`); None: none
    limits_digest: str = ""  # sha256 of the limits file, reported with the host's release
    on_kill: str = ""  # shell command run once per kill epoch (`--on-kill`)
    attest: tuple[str, ...] = ()  # files or globs whose bytes are this host's release
    attest_interval: float = 2.0  # seconds between checks for changed attested files
    extra: dict[str, Any] = field(default_factory=dict)
