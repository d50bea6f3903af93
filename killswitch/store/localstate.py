"""The sidecar's local memory of the highest epoch it has seen, so a restart cannot forget a kill.

Written atomically (temp file, fsync, rename) and only when the epoch or its state changes,
never on the order path. An unreadable file is treated as "seen a kill we cannot name":
the sidecar then blocks (STALE) until an arm issued after it started (an epoch above the
first one it read) proves that people re-armed the node on purpose; `load()` never raises
for what is in the file, since a sidecar that cannot start cannot even answer PING.

The file is `<node>@<host>.json`: `@` is not allowed in names, so no two (node, host)
pairs share a file (with `.` as the separator, `a.b`/`c` and `a`/`b.c` would).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from killswitch.core.state import NodeState


class LocalState:
    def __init__(self, directory: str | Path, node: str, host: str) -> None:
        self.path = Path(directory) / f"{node}@{host}.json"

    def load(self) -> tuple[int, NodeState | None, str]:
        """(max_epoch, state at it, problem) — problem is non-empty if the file was unreadable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0, None, ""
        except OSError as e:
            return 0, None, f"local state file {self.path} unreadable: {e}"
        try:
            data = json.loads(raw.decode("utf-8"))
            epoch = int(data["max_epoch"])
            state = NodeState(data["max_state"]) if data.get("max_state") else None
            if epoch < 0:
                raise ValueError(f"negative epoch {epoch}")
        # Disk damage shows up as any of these (bad bytes, 1e400, absurd nesting).
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            return 0, None, f"local state file {self.path} unreadable: {type(e).__name__}: {e}"
        return epoch, state, ""

    def save(self, max_epoch: int, state: NodeState | None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        payload = json.dumps({"max_epoch": max_epoch, "max_state": state.value if state else None})
        with tmp.open("w", encoding="utf-8") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
