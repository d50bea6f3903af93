"""Prometheus exposition for every process: the registry is passed in, never global.

`render()` is the pure core (registry in, status/headers/body out); `MetricsServer` is the
thin aiohttp adapter that serves it on `/metrics`. Metric names are part of the public
contract (dashboards and alert rules use them): add new ones, never rename.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from killswitch.core.version import __version__
from killswitch.runtime.errors import StartupError


def render(registry: CollectorRegistry) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": CONTENT_TYPE_LATEST}, generate_latest(registry)


def build_info(registry: CollectorRegistry, component: str) -> None:
    """`killswitch_build_info`, and the standard `process_*` metrics of this process (open
    file descriptors against their limit matter with `--max-conns`; resident memory, CPU,
    start time)."""
    ProcessCollector(registry=registry)
    g = Gauge(
        "killswitch_build_info",
        "Always 1; labels say which killswitch component and version this process runs.",
        ["component", "version"],
        registry=registry,
    )
    g.labels(component=component, version=__version__).set(1)


DEFAULT_LISTEN = "127.0.0.1"  # scrape across hosts or containers with --metrics-listen 0.0.0.0


class MetricsServer:
    """Serves `/metrics` and `/healthz` of one registry on a TCP port.

    `health` returns "" while the process works, else the reason it does not: `/healthz`
    then answers 503 with that reason, so a supervisor or a scraper sees it.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        host: str = DEFAULT_LISTEN,
        health: Callable[[], str] | None = None,
    ) -> None:
        self.registry = registry
        self.port = port
        self.host = host
        self.health = health
        self.routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {}
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _request: web.Request) -> web.Response:
        status, headers, body = render(self.registry)
        return web.Response(status=status, body=body, headers=headers)

    async def _health(self, _request: web.Request) -> web.Response:
        problem = self.health() if self.health is not None else ""
        if problem:
            return web.Response(status=503, text=f"unhealthy: {problem}\n")
        return web.Response(text="ok\n")

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        for path, handler in self.routes.items():  # e.g. the sidecar's /recorder
            app.router.add_get(path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise StartupError(
                f"metrics: cannot listen on {self.host}:{self.port}: {e.strerror or e}"
            ) from None
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
