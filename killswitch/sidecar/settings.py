"""The sidecar's typed settings, resolved once by the CLI (or built by a Python caller)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from killswitch.core.enforce.fence import FenceSpec
from killswitch.core.enforce.limits import Limits
from killswitch.core.settings.options import default
from killswitch.runtime.config import ListenAddr


@dataclass(frozen=True)
class SidecarSettings:
    node: str
    host: str
    redis_url: str
    listen: tuple[ListenAddr, ...] = ()
    metrics_port: int | None = None
    # Defaults are the table's (`core.settings.options`): one place for every setting.
    flush_interval: float = default("flush-interval")
    stale_after: float = default("stale-after")
    state_dir: str = ""  # "" with memoryless False: SidecarThread picks the default directory
    # No state file at all, on purpose: every start is a new boot that no proof names, so the
    # host blocks (`unproven`) until two operators admit it (`arm --host`). For tests and
    # throwaway hosts; `sidecar --state-dir ''` is this choice (with a warning).
    memoryless: bool = False
    operators: str = ""  # the operators' allowed-signers file ("": this gate never opens)
    metrics_listen: str = default("metrics-listen")  # 0.0.0.0: scraped from elsewhere
    max_conns: int = default("max-conns")  # gate connections at once
    line_timeout: float = default("line-timeout")  # seconds a gate client may hold a partial line
    socket_mode: int | None = None  # unix socket permission bits (None: the umask decides)
    socket_gid: int | None = None  # unix socket group (None: the process's group)
    limits: Limits | None = None  # local pre-trade limits (`--limits`); None: none
    limits_digest: str = ""  # sha256 of the limits file, reported with the host's release
    on_kill: str = ""  # shell command run once per kill epoch (`--on-kill`)
    on_kill_grace: float = default("on-kill-grace")  # on stop, seconds it may still finish
    attest: tuple[str, ...] = ()  # files or globs whose bytes are this host's release
    attest_interval: float = default(
        "attest-interval"
    )  # seconds between checks for changed attested files
    fix: tuple[tuple[ListenAddr, ListenAddr], ...] = ()  # FIX gateway routes (listen, venue)
    fence: FenceSpec | None = None  # the network fence (`--fence`); None: none
    fence_netns: str = ""  # the network namespace fenced ("": the sidecar's own)
    fence_on_kill: bool = default("fence-on-kill")  # every kill raises the kill fence
    # the flight recorder's ring file (None: <state-dir>/<node>@<host>.rec; "": none), its
    # records, the seconds before and after a kill that a freeze keeps, and its writer
    recorder: str | None = None
    recorder_size: int = default("recorder-size")
    recorder_freeze: int = default("recorder-freeze")
    recorder_writer: str = default("recorder-writer")  # auto, native or python
    extra: dict[str, Any] = field(default_factory=dict)
