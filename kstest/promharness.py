"""A real Prometheus server on a free loopback port, for tests.

`PrometheusHarness` runs the actual `prometheus` binary (never a stand-in) with a generated
config that scrapes the given targets and loads the repo's alert rules, every second, and
sends its alerts to the Alertmanagers it is given (`kstest.alertharness`). The expressions to
evaluate against it come from `kstest.promexprs`. Test tooling only: services never import
this, and it must never scrape or write anything it was not given.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from killswitch.sim.embedded import free_port, stop_process
from kstest.promexprs import ALERT_RULES

T = TypeVar("T")

INSTALL_HINT = (
    "prometheus was not found on PATH. Install it (Debian/Ubuntu: "
    "`sudo apt-get install -y prometheus`) or set KILLSWITCH_PROMETHEUS to its path."
)


class PrometheusMissing(RuntimeError):
    """No prometheus binary could be found."""


class PromQueryError(RuntimeError):
    """Prometheus refused a query or answered with something that is not a success."""


def find_prometheus() -> str:
    """Return the prometheus binary: env KILLSWITCH_PROMETHEUS, PATH, or /usr/bin."""
    explicit = os.environ.get("KILLSWITCH_PROMETHEUS")
    if explicit:
        return explicit
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if not found:
        raise PrometheusMissing(INSTALL_HINT)
    return found


# --- the server ---------------------------------------------------------------------------


def scrape_config(
    targets: Sequence[str],
    rule_files: Sequence[Path],
    *,
    scrape_interval: str = "1s",
    scrape_timeout: str = "800ms",
    evaluation_interval: str = "1s",
    job: str = "killswitch",
    alertmanagers: Sequence[str] = (),
) -> dict[str, Any]:
    """The Prometheus config the harness runs (JSON is valid YAML, so no YAML writer)."""
    alerting = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return {
        **({"alerting": alerting} if alertmanagers else {}),
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_timeout,  # Prometheus refuses one above the interval
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                # As in deploy/prometheus/prometheus.yml: keep killswitch's own `instance`.
                "honor_labels": True,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }


class PrometheusHarness:
    """One prometheus process on 127.0.0.1 scraping `targets`, in its own temp directory.

    `start()` blocks until `/-/ready`; `stop()` is idempotent and removes the directory.
    Use as a context manager. `query()` / `alerts()` talk to its HTTP API synchronously.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        rule_files: Sequence[Path] = (ALERT_RULES,),
        scrape_interval: str = "1s",
        scrape_timeout: str = "800ms",
        evaluation_interval: str = "1s",
        port: int | None = None,
        binary: str | None = None,
        alertmanagers: Sequence[str] = (),  # HOST:PORT of each Alertmanager to send alerts to
    ) -> None:
        self.binary = binary or find_prometheus()
        self.targets = list(targets)
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.scrape_interval = scrape_interval
        self.scrape_timeout = scrape_timeout
        self.evaluation_interval = evaluation_interval
        self.alertmanagers = list(alertmanagers)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return Path(self._dir.name) / "prometheus.log" if self._dir else None

    def log_tail(self, chars: int = 4000) -> str:
        path = self.log_path
        return path.read_text(errors="replace")[-chars:] if path and path.exists() else ""

    def start(self, timeout: float = 30.0) -> PrometheusHarness:
        if self.proc is not None and self.proc.poll() is None:
            return self
        self._dir = tempfile.TemporaryDirectory(prefix="ks-prom-")
        work = Path(self._dir.name)
        config = work / "prometheus.yml"
        config.write_text(
            json.dumps(
                scrape_config(
                    self.targets,
                    self.rule_files,
                    scrape_interval=self.scrape_interval,
                    scrape_timeout=self.scrape_timeout,
                    evaluation_interval=self.evaluation_interval,
                    alertmanagers=self.alertmanagers,
                ),
                indent=2,
            )
        )
        args = [
            self.binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={work / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=info",
        ]
        with (work / "prometheus.log").open("wb") as log:
            # The child keeps its own copy of the descriptor; ours is closed right away.
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        try:
            self._wait_ready(timeout)
        except Exception:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"prometheus did not become ready on {self.url}:\n{tail}") from None
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError("prometheus exited during start-up")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.url}/-/ready not 200 after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, 10.0)
        directory, self._dir = self._dir, None
        if directory is not None:
            directory.cleanup()

    def __enter__(self) -> PrometheusHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP API ---------------------------------------------------------------------

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET /api/v1/<path>; returns `data` or raises PromQueryError with Prometheus' reason."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10.0) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode(errors="replace")
            raise PromQueryError(
                f"{path} {dict(params or {})}: HTTP {exc.code}: {detail}"
            ) from None
        if body.get("status") != "success":
            raise PromQueryError(f"{path} {dict(params or {})}: {body}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; each result is {"metric": {labels}, "value": [ts, "v"]}.

        A scalar or string result is returned as one item with empty labels, so callers can
        treat every answer as a list.
        """
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self.api("query", params)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns nothing."""
        result = self.query(expr)
        if not result:
            return None
        if len(result) > 1:
            raise PromQueryError(f"{expr!r} returned {len(result)} series, expected one")
        return float(result[0]["value"][1])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing): {"labels", "annotations", "state", ...}."""
        return list(self.api("alerts")["alerts"])

    def firing(self, alertname: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.alerts()
            if a["state"] == "firing" and a["labels"].get("alertname") == alertname
        ]

    def targets_health(self) -> dict[str, str]:
        """scrape URL -> "up" / "down" / "unknown" for every active target."""
        data = self.api("targets", {"state": "active"})
        return {t["scrapeUrl"]: t["health"] for t in data["activeTargets"]}

    def wait_for(
        self,
        probe: Callable[[], T | None],
        timeout: float = 15.0,
        what: str = "condition",
        interval: float = 0.05,
    ) -> T:
        """Poll `probe` until it returns something truthy; return it or raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not met within {timeout}s on {self.url}")
            time.sleep(interval)

    def wait_query(self, expr: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll an instant query until it returns at least one series."""
        return self.wait_for(lambda: self.query(expr), timeout, f"query {expr!r} has data")
