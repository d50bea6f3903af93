"""An Alertmanager webhook receiver for the compose stack and the tests: it keeps the
notifications Alertmanager sends it and serves them back, so a person or a test can see that
an alert really arrived (`python -m killswitch.sim.alertsink --listen 0.0.0.0:9095`).

POST /alerts takes one webhook notification (Alertmanager's JSON, version 4); GET /alerts
returns {"notifications": [...]}, oldest first; GET /healthz answers ok. It is a sink, not a
pager: it never forwards anything, and it holds only the last `keep` notifications in memory.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Sequence
from typing import Any

import structlog
from aiohttp import web

from killswitch.runtime import logs

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


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen takes HOST:PORT, not {value!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m killswitch.sim.alertsink", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--listen", type=parse_listen, default=("127.0.0.1", 9095), help="HOST:PORT to serve on"
    )
    p.add_argument("--keep", type=int, default=KEEP, help="notifications kept in memory")
    args = p.parse_args(argv)
    logs.configure()
    host, port = args.listen
    sink = AlertSink(keep=max(1, args.keep))
    try:
        # run_app turns SIGTERM and SIGINT into a clean shutdown.
        web.run_app(sink.app(), host=host, port=port, print=None, access_log=None)
    except OSError as e:
        print(f"alertsink: cannot listen on {host}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        logs.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
