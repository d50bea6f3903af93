"""The container side of `./dev stack`: picks the engine, builds the images, brings the
compose project up and down. It knows nothing of killswitch beyond image names and must never
touch a container, image or volume that is not this project's.

Docker with a reachable daemon is used as it is; otherwise podman with this directory's
containers.conf and podman-compose. With no registry reachable (or KILLSWITCH_STACK_OFFLINE=1)
the images are built from Debian packages: an mmdebstrap base, Redis, Prometheus and
Alertmanager from Debian, and killswitch from wheels built on this machine. Built images are reused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STACK_DIR = REPO / ".stack"
WHEELS = STACK_DIR / "wheels"
PROJECT = "killswitch"

# Debian packages of the offline base: the killswitch image needs python3 and its venv
# module; the Redis, Prometheus and Alertmanager images are this base with their own user and
# entrypoint. The base's tag names this list, so a base made from an older list is not reused.
BASE_PACKAGES = "python3,python3-venv,redis-server,redis-tools,prometheus,prometheus-alertmanager"
_PACKAGES_ID = hashlib.sha256(BASE_PACKAGES.encode()).hexdigest()[:8]
OFFLINE_BASE = f"localhost/killswitch-base:bookworm-{_PACKAGES_ID}"
OFFLINE_IMAGES = {
    name: (f"localhost/killswitch-{image}:bookworm-{_PACKAGES_ID}", f"{image}.Containerfile")
    for name, image in (
        ("REDIS_IMAGE", "redis"),
        ("PROMETHEUS_IMAGE", "prometheus"),
        ("ALERTMANAGER_IMAGE", "alertmanager"),
    )
}
# Grafana has no Debian package to build an image from offline; it stays in compose.yaml for
# users and is the one service the test does not run.
NOT_TESTED = ("grafana",)
# The ports compose.yaml publishes on 127.0.0.1 (variables of compose.yaml) and their defaults.
PORTS = {"PROMETHEUS_PORT": "9090", "ALERTMANAGER_PORT": "9093", "ALERT_RECEIVER_PORT": "9095"}


def say(msg: str) -> None:
    print(f"stack: {msg}", file=sys.stderr, flush=True)


class StackError(RuntimeError):
    """Something the stack needs is missing or did not behave; the message says what."""


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    if not quiet:
        say("$ " + " ".join(argv))
    p = subprocess.run(list(argv), env=env, text=True, capture_output=True, check=False)
    if check and p.returncode != 0:
        raise StackError(f"{' '.join(argv)} exited {p.returncode}:\n{p.stdout}{p.stderr}")
    return p


# -- the engine ----------------------------------------------------------------------------


@dataclass
class Engine:
    """A container engine CLI (docker or podman) and the compose command that goes with it."""

    binary: str
    compose: list[str]
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))

    def __call__(self, *args: str, check: bool = True, quiet: bool = False) -> str:
        return run([self.binary, *args], env=self.env, check=check, quiet=quiet).stdout

    def compose_run(self, *args: str, check: bool = True) -> str:
        argv = [*self.compose, "-f", str(REPO / "compose.yaml"), "-p", PROJECT, *args]
        return run(argv, env=self.env, check=check).stdout

    def has_image(self, name: str) -> bool:
        return (
            run(
                [self.binary, "image", "inspect", name], env=self.env, check=False, quiet=True
            ).returncode
            == 0
        )

    def container(self, service: str) -> str:
        """The name of the container running `service` in this project."""
        out = self(
            "ps", "-a", "--format", "{{.Names}}",
            "--filter", f"label=com.docker.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}",
            quiet=True,
        )  # fmt: skip
        names = out.split()
        if len(names) != 1:
            raise StackError(f"expected one container for {service}, found {names}")
        return names[0]


def docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    ok = subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0
    return (
        ok
        and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    )


def pick_engine() -> Engine:
    wanted = os.environ.get("KILLSWITCH_STACK_ENGINE", "")
    if wanted in ("", "docker") and docker_works():
        return Engine("docker", ["docker", "compose"])
    if wanted == "docker":
        raise StackError(
            "KILLSWITCH_STACK_ENGINE=docker but no Docker daemon answers `docker info`"
        )
    if shutil.which("podman") is None:
        raise StackError("no Docker daemon and no podman: install podman (./dev stack does)")
    compose = os.environ.get("KILLSWITCH_PODMAN_COMPOSE") or str(
        STACK_DIR / "venv/bin/podman-compose"
    )
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(HERE / "containers.conf"))
    env.setdefault("CONTAINERS_REGISTRIES_CONF", str(HERE / "registries.conf"))
    return Engine("podman", [compose], env)


def registry_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("KILLSWITCH_STACK_OFFLINE") == "1":
        return False
    try:
        urllib.request.urlopen("https://registry-1.docker.io/v2/", timeout=timeout)
    except urllib.error.HTTPError:
        return True  # 401: the registry answered, pulls can work
    except (OSError, ValueError):
        return False
    return True


# -- images --------------------------------------------------------------------------------


def build_offline(eng: Engine) -> dict[str, str]:
    """Builds (or reuses) the images from Debian packages; returns the compose variables."""
    if not eng.has_image(OFFLINE_BASE):
        if shutil.which("mmdebstrap") is None:
            raise StackError("the offline build needs mmdebstrap (apt-get install mmdebstrap)")
        with tempfile.TemporaryDirectory(prefix="ks-rootfs-") as tmp:
            tar = str(Path(tmp) / "rootfs.tar")
            say(f"making the base image {OFFLINE_BASE} with mmdebstrap (once; a minute or two)")
            run(["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", "bookworm", tar])
            eng("import", "--change", 'CMD ["/bin/bash"]', tar, OFFLINE_BASE)
    images: dict[str, str] = {}
    for var, (name, containerfile) in OFFLINE_IMAGES.items():
        if not eng.has_image(name):
            eng(
                "build",
                "--build-arg",
                f"BASE={OFFLINE_BASE}",
                "-f",
                str(HERE / containerfile),
                "-t",
                name,
                str(HERE),
            )
        images[var] = name
    # Debian's Python 3.11.2 needs async-timeout for redis-py, which pip on a newer host
    # Python leaves out: ask for it by name.
    # The wheels live only for this build: left in the context, they would be what a later
    # `docker compose build` installs, however the source has changed since.
    shutil.rmtree(WHEELS, ignore_errors=True)
    WHEELS.mkdir(parents=True)
    try:
        pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(WHEELS)]
        # killswitch's wheel carries the flight recorder's C writer built for this Python:
        # it installs in the image only when this is the image's Python (bookworm: 3.11);
        # else a pure wheel, and the image runs the Python writer (docs/RECORDER.md).
        pure = {} if sys.version_info[:2] == (3, 11) else {"KILLSWITCH_NO_NATIVE": "1"}
        run([*pip_wheel, str(REPO), "async-timeout"], env={**os.environ, **pure})
        images["KILLSWITCH_IMAGE"] = build_killswitch(eng, OFFLINE_BASE)
    finally:
        shutil.rmtree(WHEELS, ignore_errors=True)
    return images


def build_killswitch(eng: Engine, base: str | None) -> str:
    name = "localhost/killswitch:dev"
    args = ["build", "-t", name, "-f", str(REPO / "Dockerfile")]
    if base:
        args += ["--build-arg", f"BASE={base}"]
    eng(*args, str(REPO))
    return name


def build(eng: Engine) -> dict[str, str]:
    if registry_reachable():
        say(
            "a registry is reachable: upstream images"
            " (redis, prom/prometheus, prom/alertmanager, python:3.11-slim)"
        )
        return {"KILLSWITCH_IMAGE": build_killswitch(eng, None)}
    say("no registry reachable: building the images from Debian packages")
    return build_offline(eng)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- up / down -----------------------------------------------------------------------------


def services(eng: Engine, *, with_grafana: bool) -> list[str]:
    out = eng.compose_run("config", "--services")
    names = [s for s in out.split() if s]
    return [s for s in names if with_grafana or s not in NOT_TESTED]


def up(eng: Engine, images: dict[str, str], *, with_grafana: bool) -> None:
    eng.env.update(images)
    for var, port in PORTS.items():
        eng.env.setdefault(var, port)
    todo = services(eng, with_grafana=with_grafana)
    eng.compose_run("up", "-d", "--no-build", *todo)
    say(
        f"up: {', '.join(todo)}; Prometheus on http://127.0.0.1:{eng.env['PROMETHEUS_PORT']},"
        f" Alertmanager on http://127.0.0.1:{eng.env['ALERTMANAGER_PORT']}, what it delivered"
        f" on http://127.0.0.1:{eng.env['ALERT_RECEIVER_PORT']}/alerts"
    )


def down(eng: Engine) -> None:
    eng.compose_run("down", "-v", "--remove-orphans", check=False)
    left = eng(
        "ps",
        "-a",
        "-q",
        "--filter",
        f"label=com.docker.compose.project={PROJECT}",
        check=False,
        quiet=True,
    )
    if left.strip():
        raise StackError(f"containers left after down: {left.split()}")
