"""Helpers to run a real fleet (sidecar and aggregator processes) for tests and the demo.

Everything here starts real processes (`python -m killswitch ...`) against a real Redis;
nothing stands in for Redis. Waits are conditions with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from killswitch.core.settings.options import default
from killswitch.sim.operators import OperatorKeys, make_operators


def wait_until(
    cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll `cond` until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # the condition may fail while things start up
            last_exc = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or cond}: {last_exc}")
        time.sleep(interval)


async def wait_until_async(
    cond: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """`wait_until` for code on an event loop: polls without blocking it. `cond` may return
    an awaitable (an async check); its result is what counts."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = cond()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
        except Exception as e:  # the condition may fail while things start up
            last_exc = e
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or cond}: {last_exc}")
        await asyncio.sleep(interval)


class GateClient:
    """A blocking gate-protocol client on a unix or TCP socket."""

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        if address.startswith("unix:"):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(address[5:])
            except OSError:
                self.sock.close()
                raise
        else:
            host, _, port = address.removeprefix("tcp:").rpartition(":")
            self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.file: IO[bytes] = self.sock.makefile("rb")

    def send(self, *lines: str | bytes) -> None:
        data = b"".join((x.encode() if isinstance(x, str) else x) + b"\n" for x in lines)
        self.sock.sendall(data)

    def reply(self) -> str:
        line = self.file.readline()
        if not line:
            raise ConnectionError("gate closed the connection")
        return line.decode().rstrip("\n")

    def request(self, line: str | bytes) -> str:
        self.send(line)
        return self.reply()

    def order(self, oid: str = "1", symbol: str = "AAPL", side: str = "BUY", qty: int = 100) -> str:
        return self.request(f"ORDER {oid} {symbol} {side} {qty}")

    def ping(self) -> str:
        return self.request("PING")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()

    def __enter__(self) -> GateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Proc:
    name: str
    args: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    cwd: Path | None = None

    def start(self, env: dict[str, str]) -> None:
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
            stdin=subprocess.DEVNULL, cwd=self.cwd,
        )  # fmt: skip

    def send(self, sig: int) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        p, self.popen = self.popen, None
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """JSON log events this process wrote (optionally only those named `name`)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and (name is None or ev.get("event") == name):
                    out.append(ev)
        return out

    def logged(self, name: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The events named `name`, once there is at least one (or [] after `timeout`).

        Services write their log off the event loop, so an event can land a moment after
        the state change it reports is visible in Redis.
        """
        with contextlib.suppress(TimeoutError):
            wait_until(lambda: self.events(name), timeout, 0.02, name)
        return self.events(name)


MADE: list[Path] = []  # fleet work dirs made here (10 MiB of rings each): conftest removes them


def _workdir() -> Path:
    MADE.append(Path(tempfile.mkdtemp(prefix="ks-fleet-")))
    return MADE[-1]


@dataclass
class Fleet:
    """Eight (or any number of) sidecar processes of one node, plus optionally its aggregator."""

    redis_url: str
    node: str
    hosts: Sequence[str]
    workdir: Path = field(default_factory=_workdir)
    flush_interval: float = default("flush-interval")
    stale_after: float = default("stale-after")
    sidecars: dict[str, Proc] = field(default_factory=dict)
    aggregator: Proc | None = None
    extra_sidecar_args: Sequence[str] = ()
    host_args: Mapping[str, Sequence[str]] = field(default_factory=dict)  # one host's own flags
    metrics_ports: Mapping[str, int] = field(default_factory=dict)  # host -> --metrics-port
    _audit_logs: set[int] = field(default_factory=set)
    # Two throwaway operators (alice, bob): every process gets their allowed-signers file.
    operators: OperatorKeys | None = None
    # Release files each sidecar attests, relative to its own directory (`release_dir`): the
    # same relative paths on every host, as the same install path would be in production.
    attest: Sequence[str] = ()

    def release_dir(self, host: str) -> Path:
        """The directory a host's sidecar runs in (its relative `--attest` paths start there)."""
        d = self.workdir / "release" / host
        d.mkdir(parents=True, exist_ok=True)
        return d

    def __post_init__(self) -> None:
        if self.operators is None:
            self.operators = make_operators(self.workdir / "operators")

    @property
    def ops(self) -> OperatorKeys:
        assert self.operators is not None
        return self.operators

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KILLSWITCH_REDIS_URL=self.redis_url,
            KILLSWITCH_NODE=self.node,
            KILLSWITCH_LOG_FORMAT="json",
            KILLSWITCH_OPERATORS=str(self.ops.file),
            PYTHONUNBUFFERED="1",
        )
        for k in ("KILLSWITCH_CONFIG", "KILLSWITCH_KEY", "KILLSWITCH_APPROVER"):
            env.pop(k, None)
        return env

    def address(self, host: str) -> str:
        return f"unix:{self.workdir / (host + '.sock')}"

    def sidecar_args(self, host: str) -> list[str]:
        return [
            sys.executable, "-m", "killswitch", "sidecar",
            "--host", host,
            "--listen", self.address(host),
            "--flush-interval", str(self.flush_interval),
            "--stale-after", str(self.stale_after),
            "--state-dir", str(self.workdir / "state"),
            *(("--metrics-port", str(self.metrics_ports[host])) if host in self.metrics_ports else ()),
            *self.extra_sidecar_args,
            *self.host_args.get(host, ()),
            *(a for path in self.attest for a in ("--attest", path)),
        ]  # fmt: skip

    def start_sidecar(self, host: str, wait: bool = True) -> Proc:
        proc = Proc(host, self.sidecar_args(host), self.workdir / f"{host}.log")
        if self.attest:
            proc.cwd = self.release_dir(host)
        proc.start(self.env())
        self.sidecars[host] = proc
        if wait:
            self.wait_serving(host)
        return proc

    def wait_serving(self, host: str, timeout: float = 60.0) -> None:
        # Generous: a process start is no claim, and on a loaded 2-core machine (coverage in
        # every process, other suites beside it) a Python start alone has taken over 10 s.
        def ok() -> bool:
            with GateClient(self.address(host), timeout=1.0) as c:
                return c.ping().startswith("PONG")

        wait_until(ok, timeout, 0.02, f"sidecar {host} serving")

    def start(self, timeout: float = 60.0) -> Fleet:
        # Generous: eight interpreters importing at once on two shared cores can take a while,
        # and a slow start is not what any test measures.
        for h in self.hosts:
            self.start_sidecar(h, wait=False)
        for h in self.hosts:
            self.wait_serving(h, timeout)
        return self

    def start_aggregator(self, *args: str) -> Proc:
        if not any(a.startswith("--max-orders") for a in args):
            # Load that tests and the demo drive is not about the static cap: keep the
            # always-on default (1000/s per host) from tripping under back-to-back loads.
            args = (*args, "--max-orders", "1000000000")
        proc = Proc(
            "aggregator",
            [
                sys.executable,
                "-m",
                "killswitch",
                "aggregator",
                "--hosts",
                ",".join(self.hosts),
                # each instance its own copy of the audit chain, inside the fleet's directory
                *(() if "--audit-log" in args else ("--audit-log", str(self._audit_log()))),
                *args,
            ],
            self.workdir / "aggregator.log",
        )
        proc.start(self.env())
        self.aggregator = proc
        return proc

    def _audit_log(self) -> Path:
        n = 1
        while (self.workdir / f"audit-{n}.jsonl").exists() or n in self._audit_logs:
            n += 1
        self._audit_logs.add(n)
        return self.workdir / f"audit-{n}.jsonl"

    def ready(self, redis_url: str | None = None) -> bool:
        """True once the roster is stored and every roster host reports alive (`status`)."""
        args = ("status",) if redis_url is None else ("status", "--redis", redis_url)
        rep = self.cli_json(*args)[1]
        hosts = rep["hosts"]
        return rep["roster"] == sorted(self.hosts) and all(h["alive"] for h in hosts.values())

    def wait_ready(self, timeout: float = 30.0, redis_url: str | None = None) -> None:
        wait_until(
            lambda: self.ready(redis_url), timeout, 0.05, "roster stored and every host reporting"
        )

    def client(self, host: str) -> GateClient:
        return GateClient(self.address(host))

    def ping(self, host: str) -> str:
        with self.client(host) as c:
            return c.ping()

    def order(self, host: str, oid: str = "1") -> str:
        with self.client(host) as c:
            return c.order(oid)

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "killswitch", *args],
            capture_output=True, text=True, env=self.env(), timeout=timeout, check=False,
        )  # fmt: skip

    def cli_json(self, *args: str) -> tuple[int, dict[str, Any]]:
        res = self.cli(*args, "--json")
        try:
            return res.returncode, json.loads(res.stdout)
        except ValueError:
            raise AssertionError(
                f"not JSON (exit {res.returncode}): {res.stdout!r} {res.stderr!r}"
            ) from None

    def arm(self, *args: str, reason: str = "test arm") -> dict[str, Any]:
        """The two-person arm: alice's signed request (exit 5), then bob's (exit 0)."""
        deadline = time.monotonic() + 30.0
        while True:
            code, rep = self.cli_json(
                "arm", "--key", self.ops.key("alice"), "--reason", reason, *args
            )
            # On a starved machine a live sidecar can miss its liveness window; arm is right to
            # refuse then, and this helper asks again (not for a node's refusal: "no roster")
            refused = rep.get("refused")
            late = (
                code == 4
                and isinstance(refused, dict)
                and bool(refused)
                and all("not reporting" in str(why) for why in refused.values())
            )
            if not late or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if code != 5:
            raise AssertionError(f"arm request failed ({code}): {rep}")
        code, rep = self.cli_json("arm", "--key", self.ops.key("bob"), *args)
        if code != 0:
            raise AssertionError(f"arm failed ({code}): {rep}")
        return rep

    def wait_all(self, prefix: str, timeout: float = 10.0) -> None:
        """Wait until every host's PING reply starts with `prefix` (e.g. 'PONG ARMED')."""
        for h in self.hosts:

            def ready(h: str = h) -> bool:
                return self.ping(h).startswith(prefix)

            wait_until(ready, timeout, 0.02, f"{h}: {prefix}")

    def stop(self) -> None:
        for proc in self.sidecars.values():
            proc.stop()
        if self.aggregator is not None:
            self.aggregator.stop()

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def fleet(redis_url: str, node: str, hosts: Sequence[str], **kw: Any) -> Iterator[Fleet]:
    f = Fleet(redis_url, node, hosts, **kw)
    try:
        yield f.start()
    finally:
        f.stop()
