"""A real Alertmanager and the project's webhook receiver on free loopback ports, for tests.

`AlertmanagerHarness` runs the actual Alertmanager binary (Debian's `prometheus-alertmanager`,
or upstream's `alertmanager`) with the repo's deploy/alertmanager/alertmanager.yml, its
webhook URLs pointed at a receiver of the test's and its timers shortened (`shortened_config`).
`AlertReceiver` runs the receiver the compose stack runs (`killswitch alertsink`)
and reads back what reached it. Test tooling only: services never import this.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from killswitch.sim.embedded import free_port, stop_process
from killswitch.sim.fleet import Proc
from kstest.promexprs import REPO_ROOT

ALERTMANAGER_CONFIG = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
# Each route's timers in a test: the first notification of a group after `group_wait`, the next
# after `group_interval` (a resolved alert included). Short, so no test waits on them.
TEST_TIMERS = {"group_wait": "200ms", "group_interval": "1s", "repeat_interval": "1m"}

INSTALL_HINT = (
    "Alertmanager was not found. Install it (Debian/Ubuntu: "
    "`sudo apt-get install -y prometheus-alertmanager`) or set KILLSWITCH_ALERTMANAGER to it."
)


class AlertmanagerMissing(RuntimeError):
    """No Alertmanager binary could be found."""


def find_alertmanager() -> str:
    """The binary: env KILLSWITCH_ALERTMANAGER, else `alertmanager` or Debian's name on PATH."""
    explicit = os.environ.get("KILLSWITCH_ALERTMANAGER")
    if explicit:
        return explicit
    for name in ("alertmanager", "prometheus-alertmanager"):
        found = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if found:
            return found
    raise AlertmanagerMissing(INSTALL_HINT)


def shortened_config(receiver_url: str, path: Path = ALERTMANAGER_CONFIG) -> dict[str, Any]:
    """The shipped config with every webhook sent to `receiver_url` and TEST_TIMERS on every
    route that sets timers; routing, grouping, inhibition and receivers stay as shipped."""
    import yaml  # noqa: PLC0415  test-only dependency: only this helper reads YAML

    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = receiver_url
    routes = [doc["route"]]
    while routes:
        route = routes.pop()
        for key, value in TEST_TIMERS.items():
            if key in route:
                route[key] = value
        routes.extend(route.get("routes", []))
    return doc


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5.0) as resp:
        return json.load(resp)


def _wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is None or proc.poll() is not None:
            raise RuntimeError(f"exited during start-up (waiting for {url})")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not 200 after {timeout}s")
        time.sleep(0.05)


class AlertmanagerHarness:
    """One Alertmanager on 127.0.0.1 with `config`, alone (no cluster), in a temp directory.

    `start()` blocks until `/-/ready`; `stop()` is idempotent and removes the directory.
    """

    def __init__(self, config: dict[str, Any], *, binary: str | None = None) -> None:
        self.binary = binary or find_alertmanager()
        self.config = config
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        if self._dir is None:
            return ""
        path = Path(self._dir.name) / "alertmanager.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def start(self, timeout: float = 30.0) -> AlertmanagerHarness:
        self._dir = tempfile.TemporaryDirectory(prefix="ks-am-")
        work = Path(self._dir.name)
        config = work / "alertmanager.yml"
        config.write_text(json.dumps(self.config, indent=2))  # JSON is valid YAML
        args = [
            self.binary,
            f"--config.file={config}",
            f"--storage.path={work / 'data'}",
            f"--web.listen-address={self.address}",
            "--cluster.listen-address=",  # one instance: no gossip port to collide on
            "--log.level=info",
        ]
        with (work / "alertmanager.log").open("wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=work)
        try:
            _wait_ready(f"http://{self.address}/-/ready", self.proc, timeout)
        except Exception as e:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"alertmanager did not become ready: {e}\n{tail}") from None
        return self

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds now (API v2)."""
        return list(_get_json(f"http://{self.address}/api/v2/alerts"))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, 10.0)
        directory, self._dir = self._dir, None
        if directory is not None:
            directory.cleanup()

    def __enter__(self) -> AlertmanagerHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AlertReceiver:
    """The stack's webhook receiver as a process of its own, logging JSON to `log_path`."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.proc = Proc(
            "alertsink",
            [sys.executable, "-m", "killswitch", "alertsink", "--port", str(self.port)],
            log_path,
        )

    @property
    def url(self) -> str:
        """Where Alertmanager posts (the path compose.yaml's receiver serves)."""
        return f"http://127.0.0.1:{self.port}/alerts"

    def start(self, timeout: float = 30.0) -> AlertReceiver:
        self.proc.start({**os.environ, "KILLSWITCH_LOG_FORMAT": "json"})
        _wait_ready(f"http://127.0.0.1:{self.port}/healthz", self.proc.popen, timeout)
        return self

    def notifications(self) -> list[dict[str, Any]]:
        return list(_get_json(self.url)["notifications"])

    def delivered(self, alertname: str, status: str = "firing") -> list[dict[str, Any]]:
        """Every `alertname` alert with `status` in the notifications received so far."""
        return [
            a
            for n in self.notifications()
            for a in n["alerts"]
            if a["status"] == status and a["labels"].get("alertname") == alertname
        ]

    def stop(self) -> None:
        self.proc.stop()
