"""The sidecar's local memory of the highest epoch it has seen, so a restart cannot forget a kill.

It also keeps what only this host knows and Redis must never be trusted for: its boot id
(random, made when the host had no memory; every arm proof names it), the epoch and digest
of the proof this boot last accepted (so a restart reopens on it without a new arm), and the
scoped kills it enforces (so a restart cannot forget them).

Written atomically (temp file, fsync, rename) and only when the epoch or its state changes,
never on the order path. An unreadable file is treated as "seen a kill we cannot name":
the sidecar starts a new boot and blocks (STALE) until two operators sign for that boot
(`arm --host`, or a node arm after it started); `load()` never raises
for what is in the file, since a sidecar that cannot start cannot even answer PING.

The file is `<node>@<host>.json`: `@` is not allowed in names, so no two (node, host)
pairs share a file (with `.` as the separator, `a.b`/`c` and `a`/`b.c` would).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from killswitch.core.node.state import NodeState


def prepare_dir(directory: str | Path) -> str:
    """Create `directory` (mode 0700) if needed and prove a file can be written and synced
    there; returns "" when usable, else one line saying why not."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=d)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        return f"cannot use {d} for the local state file: {e.strerror or e}"
    return ""


def new_boot_id() -> str:
    """A boot id for a host that has no memory: 64 random bits in hex."""
    return secrets.token_hex(8)


@dataclass(frozen=True, slots=True)
class Memo:
    """What the file keeps beside the highest epoch (see the module docstring)."""

    boot: str = ""
    accepted: tuple[int, str] = (0, "")  # (epoch, sha1 of the proof) this boot accepted
    scopes: dict[str, Any] = field(default_factory=dict)  # core.node.scope.held_json

    def to_json(self) -> dict[str, Any]:
        return {"boot": self.boot, "accepted": list(self.accepted), "scopes": self.scopes}


class LocalState:
    def __init__(self, directory: str | Path, node: str, host: str) -> None:
        self.path = Path(directory) / f"{node}@{host}.json"

    def load(self) -> tuple[int, NodeState | None, str]:
        """(max_epoch, state at it, problem) — problem is non-empty if the file was unreadable."""
        epoch, state, _, problem = self.load_all()
        return epoch, state, problem

    def load_all(self) -> tuple[int, NodeState | None, Memo | None, str]:
        """Like `load`, with the memo (None: no readable file, so no memory of this boot)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return 0, None, None, ""
        except OSError as e:
            return 0, None, None, f"local state file {self.path} unreadable: {e}"
        try:
            data = json.loads(raw.decode("utf-8"))
            epoch = int(data["max_epoch"])
            state = NodeState(data["max_state"]) if data.get("max_state") else None
            if epoch < 0:
                raise ValueError(f"negative epoch {epoch}")
        # Disk damage shows up as any of these (bad bytes, 1e400, absurd nesting).
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as e:
            why = f"local state file {self.path} unreadable: {type(e).__name__}: {e}"
            return 0, None, None, why
        return epoch, state, _memo(data), ""

    def save(self, max_epoch: int, state: NodeState | None, memo: Memo | None = None) -> None:
        """Replace the file atomically and durably; raises OSError when it cannot.

        A unique temporary name (two processes never write the same temp file), mode 0600,
        fsync of the file before the rename and of the directory after it, so a power cut
        leaves either the old file or the new one.
        """
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = json.dumps(
            {
                "max_epoch": max_epoch,
                "max_state": state.value if state else None,
                **(memo.to_json() if memo else {}),
            }
        )
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, payload.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _memo(data: dict[str, Any]) -> Memo | None:
    """The memo of a readable file; None when it has no usable boot id (a file written before
    boot ids, or damaged there): the host then has no memory of its boot and starts a new one,
    keeping the epoch (an older epoch must still never be accepted)."""
    boot = data.get("boot")
    if (
        not isinstance(boot, str)
        or len(boot) != 16
        or not all(c in "0123456789abcdef" for c in boot)
    ):
        return None
    acc = data.get("accepted")
    accepted = (0, "")
    if (
        isinstance(acc, list)
        and len(acc) == 2
        and isinstance(acc[0], int)
        and isinstance(acc[1], str)
    ):
        accepted = (acc[0], acc[1])
    scopes = data.get("scopes")
    return Memo(boot, accepted, scopes if isinstance(scopes, dict) else {})
