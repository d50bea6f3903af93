"""The sidecar's local memory of the highest epoch it has seen, so a restart cannot forget a kill.

Written atomically (temp file, fsync, rename) and only when the epoch or its state changes,
never on the order path. An unreadable file is treated as "seen a kill we cannot name":
the sidecar then refuses to trust anything until an arm issues a newer epoch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from killswitch.state import NodeState


class LocalState:
    def __init__(self, directory: str | Path, node: str, host: str) -> None:
        self.path = Path(directory) / f"{node}.{host}.json"

    def load(self) -> tuple[int, NodeState | None, str]:
        """(max_epoch, state at it, problem) — problem is non-empty if the file was unreadable."""
        try:
            raw = self.path.read_text("utf-8")
        except FileNotFoundError:
            return 0, None, ""
        try:
            data = json.loads(raw)
            epoch = int(data["max_epoch"])
            state = NodeState(data["max_state"]) if data.get("max_state") else None
            if epoch < 0:
                raise ValueError("negative epoch")
        except (ValueError, KeyError, TypeError) as e:
            return 0, None, f"local state file {self.path} unreadable: {e}"
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
