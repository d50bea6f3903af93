"""Prometheus exposition for every process: the registry is passed in, never global.

`render()` is the pure core (registry in, status/headers/body out); `MetricsServer` is the
thin aiohttp adapter that serves it on `/metrics`. Metric names are part of the public
contract (dashboards and alert rules use them): add new ones, never rename.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from killswitch.core.version import __version__


def render(registry: CollectorRegistry) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": CONTENT_TYPE_LATEST}, generate_latest(registry)


def build_info(registry: CollectorRegistry, component: str) -> None:
    g = Gauge(
        "killswitch_build_info",
        "Always 1; labels say which killswitch component and version this process runs.",
        ["component", "version"],
        registry=registry,
    )
    g.labels(component=component, version=__version__).set(1)


class MetricsServer:
    """Serves `/metrics` (and `/healthz`) of one registry on a TCP port."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> None:
        self.registry = registry
        self.port = port
        self.host = host
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        status, headers, body = render(self.registry)
        return web.Response(status=status, body=body, headers=headers)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
