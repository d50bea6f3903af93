"""An Alertmanager webhook receiver for the compose stack and the tests: it keeps the
notifications Alertmanager sends it and serves them back, so a person or a test can see that
an alert really arrived (`killswitch alertsink --bind 0.0.0.0 --port 9095`).

POST /alerts takes one webhook notification (Alertmanager's JSON, version 4); GET /alerts
returns {"notifications": [...]}, oldest first; GET /healthz answers ok. It is a sink, not a
pager: it never forwards anything, and it holds only the last `keep` notifications in memory.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from killswitch.runtime.errors import StartupError

KEEP = 1000  # notifications kept; older ones are dropped


class AlertSink:
    """The receiver's state and its three routes."""

    def __init__(self, keep: int = KEEP, log: Any = None) -> None:
        self.notifications: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self.log = log if log is not None else structlog.get_logger("alertsink")

    async def receive(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.Response(status=400, text="not JSON\n")
        if not isinstance(body, dict) or not isinstance(body.get("alerts"), list):
            return web.Response(status=400, text="not an Alertmanager notification\n")
        self.notifications.append(body)
        for alert in body["alerts"]:
            labels = alert.get("labels") if isinstance(alert, dict) else None
            labels = labels if isinstance(labels, dict) else {}
            self.log.info(
                "ALERT_RECEIVED",
                alertname=labels.get("alertname"),
                node=labels.get("node"),
                host=labels.get("host"),
                status=alert.get("status") if isinstance(alert, dict) else None,
                receiver=body.get("receiver"),
            )
        return web.Response(text="ok\n")

    async def listing(self, _request: web.Request) -> web.Response:
        return web.json_response({"notifications": list(self.notifications)})

    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/alerts", self.receive)
        app.router.add_get("/alerts", self.listing)
        app.router.add_get("/healthz", self.health)
        return app


@dataclass(frozen=True)
class AlertSinkSettings:
    """What `killswitch alertsink` runs with (resolved and validated by the CLI)."""

    bind: str = "127.0.0.1"
    port: int = 9095


def serve(settings: AlertSinkSettings, keep: int = KEEP) -> int:
    """`killswitch alertsink`: serve until SIGTERM or SIGINT (logging is configured by the CLI)."""
    bind, port = settings.bind, settings.port
    sink = AlertSink(keep=keep)
    try:
        # run_app turns SIGTERM and SIGINT into a clean shutdown.
        web.run_app(sink.app(), host=bind, port=port, print=None, access_log=None)
    except OSError as e:
        raise StartupError(f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
    return 0
