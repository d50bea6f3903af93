"""The sidecar's flight recorder: every gate decision into the ring file, and each kill's
records frozen into a file of their own that the host's confirmation names.

A collaborator of `Sidecar`: it hands the gate the ring's `record` (one call per decision),
reports its fields with every round trip, freezes in a worker thread (never on the order
path, never delaying the confirmation: the frozen file's name and digest reach the
confirmation on the round trip after they exist) and serves `GET /recorder` beside
`/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.recfmt import (
    HEADER_SIZE,
    HOST,
    KILL,
    RECORD_SIZE,
    FormatError,
    frozen_file,
    read_header,
    ring_slots,
)
from killswitch.core.node.state import NodeState
from killswitch.runtime.errors import StartupError
from killswitch.runtime.metrics import MetricsServer
from killswitch.runtime.ring import Ring
from killswitch.sidecar.attest import AttestLoop
from killswitch.sidecar.recmetrics import RecorderCollector
from killswitch.sidecar.settings import SidecarSettings

NS = 1_000_000_000
# Why a freeze failed, as the metric's `reason` label (bounded: every other cause is `io` or
# `other`); each exported from 0.
FREEZE_FAILURES = ("no_space", "permission", "io", "other")
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_PERMISSION = {errno.EACCES, errno.EPERM, errno.EROFS}


class _Sidecar(Protocol):
    @property
    def s(self) -> SidecarSettings: ...
    @property
    def gate(self) -> Gate: ...
    @property
    def log(self) -> Any: ...
    @property
    def attest(self) -> AttestLoop: ...
    @property
    def _wake(self) -> asyncio.Event: ...
    @property
    def registry(self) -> CollectorRegistry: ...


def ring_path(s: SidecarSettings) -> str:
    """`--recorder` as given ('' none), else `<state-dir>/<node>@<host>.rec` ('' without one)."""
    if s.recorder is not None:
        return s.recorder
    return str(Path(s.state_dir) / f"{s.node}@{s.host}.rec") if s.state_dir else ""


def frozen_path(ring: str, node: str, host: str, epoch: int) -> str:
    return str(Path(ring).parent / f"{node}@{host}.{epoch}.rec")


class Recording:
    """The ring, the freezes and the `/recorder` route of one sidecar (`ring` None: off)."""

    def __init__(self, sidecar: _Sidecar, metrics: MetricsServer | None = None) -> None:
        self.sc = sidecar
        s = sidecar.s
        self.path = ring_path(s)
        self.ring: Ring | None = None
        if self.path:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                self.ring = Ring(self.path, s.recorder_size + 1, s.node, s.host,
                                 freeze_s=s.recorder_freeze, writer=s.recorder_writer)  # fmt: skip
            except (FormatError, ValueError) as e:  # not a ring of ours; a writer not built
                raise StartupError(f"recorder: {self.path}: {e}", 2) from None
            except OSError as e:
                raise StartupError(
                    f"recorder: cannot map {self.path}: {e.strerror or e}", 2
                ) from None
            sidecar.gate.set_recorder(self.ring.write)
        self.epoch = 0  # the last kill epoch frozen
        self.file = ""
        self.digest = ""
        self.complete = False
        self._kill_ns = 0
        self._frozen: bytes = b""  # the frozen file's bytes as last written
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self.failed = ""  # why the last freeze of `epoch` failed ("" none; FREEZE_FAILURES)
        self.freezes = 0  # frozen files written (a kill's first part, then its completion)
        self.failures = dict.fromkeys(FREEZE_FAILURES, 0)
        self.frozen_bytes = 0  # the size of the frozen file written last
        if metrics is not None:
            metrics.routes["/recorder"] = self.serve  # beside /metrics, on its listen address
        if self.ring is not None:
            sidecar.registry.register(RecorderCollector(self, s.node, s.host))

    def announce(self) -> None:
        """RECORDER_STARTED, once the sidecar has started (a start that fails says one line)."""
        if self.ring is not None:
            self.sc.log.info("RECORDER_STARTED", path=self.path, records=self.sc.s.recorder_size,
                             writer=self.ring.writer, next_seq=self.ring.started)  # fmt: skip

    def record(
        self,
        source: int,
        order_id: str,
        symbol: str,
        side: str,
        qty: int,
        price: float,
        decision: int,
        reason: str,
        epoch: int,
    ) -> None:
        """A decision made beside the gate (e.g. a FIX gateway answering a session message
        itself), with `core.enforce.recfmt` codes; a no-op without a ring. Never raises."""
        if self.ring is not None:
            self.ring.record(source, order_id, symbol, side, qty, price, decision, reason, epoch)

    # -- every round trip ------------------------------------------------------------------

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        """The report fields; also where a kill is noticed and its freeze begins."""
        if self.ring is None:
            return self._metrics_addr()
        self.ring.set_ids(self.sc.attest.current.release, self.sc.s.limits_digest)
        state, epoch = self.sc.gate.status()
        if state is NodeState.KILLED and epoch > self.epoch:
            self._freeze(epoch)
        return (
            *self._metrics_addr(),
            ("recorder_epoch", str(self.epoch)),
            ("recorder_file", self.file),
            ("recorder_digest", self.digest),
            ("recorder_complete", "1" if self.complete else "0"),
            ("recorder_failed", self.failed),
        )

    def _metrics_addr(self) -> tuple[tuple[str, str], ...]:
        """The metrics address (where `killswitch recorder --node` fetches `/recorder`)."""
        s = self.sc.s
        if s.metrics_port is None:
            return ()
        host = s.metrics_listen
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        addr = f"[{host}]:{s.metrics_port}" if ":" in host else f"{host}:{s.metrics_port}"
        return (("metrics", addr),)

    # -- freezing --------------------------------------------------------------------------

    def _freeze(self, epoch: int) -> None:
        assert self.ring is not None
        ring, span = self.ring, self.sc.s.recorder_freeze
        self.epoch, self.file, self.digest, self.complete, self.failed = epoch, "", "", False, ""
        self._frozen = b""
        if self._adopt(epoch):
            # a restart after this kill: its file stands (its kill time is the real one)
            left = (self._kill_ns + span * NS - time.time_ns()) / NS
        else:
            ring.record(HOST, "-", "", "", 0, 0.0, KILL, "killed", epoch)
            self._kill_ns, left = time.time_ns(), span
            self._spawn(self._write(ring, epoch, final=False))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.complete:
            self._timer = asyncio.get_running_loop().call_later(
                max(left, 0.0), lambda: self._spawn(self._write(ring, epoch, final=True))
            )

    def _adopt(self, epoch: int) -> bool:
        """Take over this kill's frozen file when an earlier run of this host wrote it."""
        path = frozen_path(self.path, self.sc.s.node, self.sc.s.host, epoch)
        try:
            data = Path(path).read_bytes()
            h = read_header(data)
        except (OSError, FormatError):
            return False
        if h.epoch != epoch or not h.kill_ns:
            return False
        self._frozen, self._kill_ns, self.complete = data, h.kill_ns, h.complete
        self.file, self.digest = path, hashlib.sha256(data).hexdigest()
        return True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="recorder-freeze")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, ring: Ring, epoch: int, final: bool) -> None:
        if epoch != self.epoch:
            return
        path = frozen_path(self.path, self.sc.s.node, self.sc.s.host, epoch)
        span = self.sc.s.recorder_freeze
        try:
            before, kill_ns = self._frozen, self._kill_ns
            data = await asyncio.to_thread(
                lambda: freeze(ring.snapshot(whole=False), before, epoch, kill_ns, span, final)
            )
            digest = await asyncio.to_thread(_write_atomically, path, data)
        except Exception as e:  # a full disk, a lost permission: counted, logged, reported
            reason = failure_reason(e)
            self.failures[reason] += 1
            self.sc.log.error(
                "RECORDER_FREEZE_FAILED", epoch=epoch, path=path, reason=reason, error=str(e)
            )
            if epoch == self.epoch and not self.file:
                self.failed = reason  # `kill` stops waiting for this host's file
                self.sc._wake.set()
            return
        self.freezes += 1
        self.frozen_bytes = len(data)
        if epoch != self.epoch:
            return  # a later kill began its own freeze meanwhile
        self._frozen, self.file, self.digest, self.complete = data, path, digest, final
        self.failed = ""
        self.sc.log.info(
            "RECORDER_FROZEN", epoch=epoch, path=path, digest=digest, complete=final,
            records=(len(data) - HEADER_SIZE) // RECORD_SIZE,
        )  # fmt: skip
        self.sc._wake.set()  # into the confirmation on the next round trip

    # -- serving and stopping --------------------------------------------------------------

    async def serve(self, request: web.Request) -> web.Response:
        """`GET /recorder`: the ring's bytes; `?epoch=E`: that kill's frozen file if any."""
        if self.ring is None:
            return web.Response(status=404, text="no flight recorder on this host\n")
        epoch = request.query.get("epoch", "")
        if epoch.isdigit():
            path = frozen_path(self.path, self.sc.s.node, self.sc.s.host, int(epoch))
            with contextlib.suppress(OSError):
                data = await asyncio.to_thread(Path(path).read_bytes)
                return web.Response(body=data, content_type="application/octet-stream")
        ring = await asyncio.to_thread(self.ring.snapshot)
        return web.Response(body=ring, content_type="application/octet-stream")

    async def close(self) -> None:
        """Finish a pending freeze with what exists, then unmap the ring."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        ring, self.ring = self.ring, None
        if ring is None:
            return
        self.sc.gate.set_recorder(None)
        if self.epoch and not self.complete:
            await self._write(ring, self.epoch, final=True)
        ring.close()


def freeze(
    snap: bytes | bytearray, before: bytes, epoch: int, kill_ns: int, span: int, final: bool
) -> bytes:
    """The frozen file of a kill: the ring's records from `span` s before `kill_ns` to as
    long after (to now, if sooner). Records already frozen (`before`) are kept as written,
    so a flood that wraps the ring after the kill cannot erase what came before it."""
    ring = memoryview(snap)
    h = read_header(ring)
    lo, hi = kill_ns - span * NS, kill_ns + span * NS
    kept: list[bytes] = []
    last = 0
    if before:
        old = read_header(before)
        kept = [before[off : off + RECORD_SIZE] for _, _, off in ring_slots(before, old)]
        last = max((seq for seq, _, _ in ring_slots(before, old)), default=0)
    for seq, t_ns, off in ring_slots(ring, h):
        if seq > last and lo <= t_ns <= hi:
            kept.append(ring[off : off + RECORD_SIZE].tobytes())
    head = replace(h, epoch=epoch, kill_ns=kill_ns, freeze_s=span, complete=final)
    return frozen_file(head, kept)


def failure_reason(e: BaseException) -> str:
    """The metric label of a failed freeze (one of FREEZE_FAILURES)."""
    if isinstance(e, OSError):
        if e.errno in _NO_SPACE:
            return "no_space"
        if e.errno in _PERMISSION:
            return "permission"
        return "io"
    return "other"


def _write_atomically(path: str, data: bytes) -> str:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()
