"""structlog configuration: JSON lines in production, readable in a terminal.

Events keep stable keys (`event`, `node`, `host`, `epoch`, `reason`); `BLOCK_ORDER` is the
event name people grep for. This module only configures; it never decides what to log.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


def configure(
    fmt: str | None = None, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog once per process.

    `fmt` is "json" or "console" (default: env KILLSWITCH_LOG_FORMAT, else console on a
    terminal and JSON otherwise); `level` defaults to env KILLSWITCH_LOG_LEVEL or "info".
    """
    out = stream or sys.stderr
    fmt = fmt or os.environ.get("KILLSWITCH_LOG_FORMAT") or ("console" if out.isatty() else "json")
    level = (level or os.environ.get("KILLSWITCH_LOG_LEVEL") or "info").lower()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
