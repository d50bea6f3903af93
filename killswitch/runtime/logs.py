"""structlog configuration: JSON lines in production, readable in a terminal, written off the
event loop.

Events keep stable keys (`event`, `node`, `host`, `epoch`, `reason`); `BLOCK_ORDER` is the
event name people grep for. The event loop only queues an event; a writer thread renders and
writes it, so a slow or full stderr can never stall the sync loop. When more than
`MAX_PENDING_BLOCKS` per-order `BLOCK_ORDER` lines wait to be written (a stuck stderr), the
rest are replaced by `BLOCK_ORDER` summary events (`summary: true`, at most one a second)
carrying exact counts per reason: nothing is dropped uncounted. (The sidecar also caps
per-order lines per second at the gate, `core.enforce.gate.BlockLogBudget`, so a flood costs the
event loop an increment per order.) This module only configures and writes; it never
decides what to log.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections import Counter, deque
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip

BLOCK_EVENT = "BLOCK_ORDER"
MAX_PENDING_BLOCKS = 2000  # per-order lines queued at most (a stuck stderr)
SUMMARY_EVERY_S = 1.0


class QueuedWriter:
    """A bounded queue of events and the daemon thread that renders and writes them."""

    def __init__(
        self,
        stream: TextIO,
        renderer: structlog.typing.Processor,
        max_pending_blocks: int = MAX_PENDING_BLOCKS,
    ) -> None:
        self.stream = stream
        self.renderer = renderer
        self.max_pending_blocks = max_pending_blocks
        self._last_summary = 0.0
        self.summarized = 0  # BLOCK_ORDER lines replaced by summaries, ever
        self._cond = threading.Condition()
        self._pending: deque[EventDict] = deque()
        self._pending_blocks = 0
        self._counts: Counter[str] = Counter()  # reason -> lines not written, not yet reported
        self._busy = False
        self._closed = False
        self._flushing = False
        self._last_dropped: EventDict = {}
        self._thread = threading.Thread(target=self._run, name="killswitch-log", daemon=True)
        self._thread.start()

    # -- the caller's side (the event loop): cheap, never blocks on I/O ---------------------

    def admit(self, _logger: WrappedLogger, _method: str, ed: EventDict) -> EventDict:
        """First processor: a BLOCK_ORDER the writer cannot keep up with only adds to a count."""
        if ed.get("event") != BLOCK_EVENT or ed.get("summary"):
            return ed
        if self._pending_blocks >= self.max_pending_blocks:
            with self._cond:
                self._counts[str(ed.get("reason", "?"))] += 1
                self.summarized += 1
                self._last_dropped = ed
            raise structlog.DropEvent
        return ed

    def put(self, ed: EventDict) -> None:
        with self._cond:
            self._pending.append(ed)
            if ed.get("event") == BLOCK_EVENT:
                self._pending_blocks += 1
            self._cond.notify()

    # -- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                # A flush only needs this thread when there is something to write: waking
                # for it with nothing pending spun here, holding the lock the flushing
                # thread needs to see that it was done (a stop could then take seconds).
                while not (
                    self._pending
                    or self._closed
                    or self._summary_due()
                    or (self._flushing and self._counts)
                ):
                    self._cond.wait(SUMMARY_EVERY_S if self._counts else None)
                if self._closed and not self._pending and not self._counts:
                    return
                batch = list(self._pending)
                self._pending.clear()
                self._pending_blocks = 0
                counts: Counter[str] = Counter()
                if self._counts and (self._summary_due() or self._closed or self._flushing):
                    counts, self._counts = self._counts, Counter()
                    self._last_summary = time.monotonic()
                last = self._last_dropped
                self._busy = True
            lines = [self._render(ed) for ed in batch]
            if counts:
                lines.append(self._render(_summary(counts, last)))
            try:
                self.stream.write("".join(lines))
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stderr must not take the process down with it
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _summary_due(self) -> bool:
        return bool(self._counts) and time.monotonic() - self._last_summary >= SUMMARY_EVERY_S

    def _render(self, ed: EventDict) -> str:
        try:
            out = self.renderer(None, "", dict(ed))
            text = out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)
            return f"{text}\n"
        except Exception as e:  # an unrenderable value must not lose the event
            return f"{ed.get('event', '?')} (unrenderable: {type(e).__name__})\n"

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything queued so far, summaries included, has been written."""
        with self._cond:
            self._flushing = True
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: not (self._pending or self._counts or self._busy), timeout=timeout
            )
            self._flushing = False

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


def _summary(counts: Counter[str], last: EventDict) -> EventDict:
    ed: EventDict = {
        "event": BLOCK_EVENT,
        "summary": True,
        "blocked": sum(counts.values()),
        "counts": dict(sorted(counts.items())),
        "level": "warning",
        "timestamp": datetime.now(UTC).isoformat(),
        "note": "per-order lines replaced: logging could not keep up",
    }
    for key in ("node", "host", "epoch"):
        if key in last:
            ed[key] = last[key]
    return ed


class _QueueLogger:
    """structlog's final logger: hands the processed event dict to the writer thread."""

    def __init__(self, writer: QueuedWriter) -> None:
        self._writer = writer

    def msg(self, ed: EventDict) -> None:
        self._writer.put(ed)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _to_writer(_logger: WrappedLogger, _method: str, ed: EventDict) -> Any:
    return (ed,), {}  # rendering happens in the writer thread


_writer: QueuedWriter | None = None


def configure(
    fmt: str | None = None, level: str | None = None, stream: TextIO | None = None
) -> QueuedWriter:
    """Configure structlog once per process; returns the writer (for `flush()` in tests).

    `fmt` is "json" or "console" (default: env KILLSWITCH_LOG_FORMAT, else console on a
    terminal and JSON otherwise); `level` defaults to env KILLSWITCH_LOG_LEVEL or "info".
    """
    global _writer  # noqa: PLW0603 - one writer per process, as structlog's own config is
    out = stream or sys.stderr
    fmt = fmt or os.environ.get("KILLSWITCH_LOG_FORMAT") or ("console" if out.isatty() else "json")
    level = (level or os.environ.get("KILLSWITCH_LOG_LEVEL") or "info").lower()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        # NO_COLOR (no-color.org): any non-empty value turns colours off, as in the tables
        else structlog.dev.ConsoleRenderer(colors=out.isatty() and not os.environ.get("NO_COLOR"))
    )
    if _writer is not None:
        _writer.close()
    writer = _writer = QueuedWriter(out, renderer)
    structlog.configure(
        processors=[
            writer.admit,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _to_writer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=lambda *_: _QueueLogger(writer),
        # No caching: a module's logger cached on first use keeps this writer and these
        # processors for good, so a later configure() (a second in-process CLI call) or a
        # test's capture_logs() would not reach it. The loggers that log per order are bound
        # once, at construction, so nothing on the order path resolves the config per call.
        cache_logger_on_first_use=False,
    )
    return writer


def flush(timeout: float = 5.0) -> None:
    """Write out every queued event (at exit, and before a process reports and quits)."""
    if _writer is not None:
        _writer.flush(timeout)


def summarized() -> int:
    """BLOCK_ORDER lines replaced by summary counts so far in this process."""
    return _writer.summarized if _writer is not None else 0


atexit.register(flush)
