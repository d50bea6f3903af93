"""QuickFIX at both ends of the FIX gateway: builds `fixpeer.cpp` once and drives it.

The engine is Debian's `libquickfix-dev` (`./dev test` installs it), compiled with g++ into a
cache directory keyed by the source's hash, so a test session compiles at most once and
later sessions not at all. Each `FixPeer` is one QuickFIX process, a client (initiator) or a
venue (acceptor), with its own file store and logs; every message it sends or receives is
one line on its stdout, which the tests read. Waits are conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fixpeer.cpp"
SPEC = HERE / "fixspec"
HEADER = Path("/usr/include/quickfix/Session.h")
CXXFLAGS = ("-std=gnu++14", "-O1", "-Wno-deprecated", "-Wno-deprecated-declarations")
DICTIONARIES = {"FIX.4.2": "FIX42.xml", "FIX.4.4": "FIX44.xml", "FIXT.1.1": "FIXT11.xml",
                "FIX.5.0SP2": "FIX50SP2.xml"}  # fmt: skip


class FixPeerUnavailable(RuntimeError):
    """QuickFIX's headers or g++ are missing: say how to install them."""


def build_dir() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(CXXFLAGS).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "killswitch-fixpeer" / key


def build() -> Path:
    """The compiled fixpeer binary (compiled now unless a build of this source exists)."""
    out = build_dir()
    binary = out / "fixpeer"
    if binary.exists():
        return binary
    if not HEADER.exists():
        raise FixPeerUnavailable(
            "QuickFIX is not installed: run ./dev test (it installs libquickfix-dev) or "
            "apt-get install libquickfix-dev"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f"fixpeer.{os.getpid()}.tmp"
    res = subprocess.run(
        ["g++", *CXXFLAGS, "-o", str(tmp), str(SOURCE), "-lquickfix", "-lpthread"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if res.returncode != 0:
        raise FixPeerUnavailable(f"g++ could not build fixpeer: {res.stderr[-2000:]}")
    os.replace(tmp, binary)  # atomic: parallel test workers may build at once
    return binary


def dictionary(begin: str) -> Path:
    """QuickFIX's own data dictionary for `begin` (unpacked next to the binary)."""
    name = DICTIONARIES[begin]
    path = build_dir() / name
    if not path.exists():
        build_dir().mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(gzip.decompress((SPEC / f"{name}.gz").read_bytes()))
        os.replace(tmp, path)
    return path


def settings_text(role: str, begin: str, port: int, workdir: Path, heartbeat: int = 2) -> str:
    """A QuickFIX settings file: the client connects to `port`, the venue listens on it."""
    me, them = ("CLIENT", "VENUE") if role == "client" else ("VENUE", "CLIENT")
    lines = [
        "[DEFAULT]",
        f"ConnectionType={'initiator' if role == 'client' else 'acceptor'}",
        f"FileStorePath={workdir / 'store'}",
        f"FileLogPath={workdir / 'log'}",
        "StartTime=00:00:00",
        "EndTime=00:00:00",
        "UseDataDictionary=Y",
        *(
            [
                f"TransportDataDictionary={dictionary(begin)}",
                f"AppDataDictionary={dictionary('FIX.5.0SP2')}",
                "DefaultApplVerID=FIX.5.0SP2",
            ]
            if begin == "FIXT.1.1"
            else [f"DataDictionary={dictionary(begin)}"]
        ),
        "ReconnectInterval=1",
        f"HeartBtInt={heartbeat}",
        "SocketNodelay=Y",
        "[SESSION]",
        f"BeginString={begin}",
        f"SenderCompID={me}",
        f"TargetCompID={them}",
        f"SocketConnectPort={port}" if role == "client" else f"SocketAcceptPort={port}",
        "SocketConnectHost=127.0.0.1",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Event:
    kind: str  # logon, logout, app_in, app_out, admin_in, admin_out, seq, started
    fields: dict[str, str]  # tag -> value (first occurrence)
    raw: str

    @property
    def type(self) -> str:
        return self.fields.get("35", "")


def parse(line: str) -> Event:
    kind, _, rest = line.partition("|")
    fields: dict[str, str] = {}
    for f in rest.split("|"):
        tag, sep, value = f.partition("=")
        if sep:
            fields.setdefault(tag, value)
    return Event(kind, fields, rest)


class FixPeer:
    """One QuickFIX process; `events` grows as it reports."""

    def __init__(self, role: str, begin: str, port: int, workdir: Path) -> None:
        self.role = role
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "settings.cfg"
        cfg.write_text(settings_text(role, begin, port, workdir))
        self.events: list[Event] = []
        self._cv = threading.Condition()
        self._stderr = (workdir / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            [str(build()), role, str(cfg)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, bufsize=1,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait(lambda: self.count("started"), 30, f"{role} started")

    def _read(self) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            ev = parse(line.rstrip("\n"))
            with self._cv:
                self.events.append(ev)
                self._cv.notify_all()

    def send(self, *commands: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(c + "\n" for c in commands))
        self.proc.stdin.flush()

    def wait(self, cond: Callable[[], object], timeout: float = 20.0, what: str = "") -> object:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                value = cond()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"{self.role}: timed out waiting for {what or cond}")
                self._cv.wait(min(left, 0.2))

    def count(self, kind: str, **want: str) -> int:
        return len(self.select(kind, **want))

    def select(self, kind: str, **want: str) -> list[Event]:
        """Events of `kind` whose fields match `want` (keyword `f35="8"` for tag 35)."""
        wanted = {k.removeprefix("f"): v for k, v in want.items()}
        return [
            e for e in list(self.events)
            if e.kind == kind and all(e.fields.get(t) == v for t, v in wanted.items())
        ]  # fmt: skip

    def seq(self) -> tuple[int, int]:
        """(next MsgSeqNum it sends, next MsgSeqNum it expects), asked of the engine now."""
        before = self.count("seq")
        self.send("seq")
        self.wait(lambda: self.count("seq") > before, 10, "seq")
        ev = [e for e in self.events if e.kind == "seq"][-1]
        sender, target = ev.raw.split("|")
        return int(sender), int(target)

    def session_faults(self) -> list[str]:
        """Session-level trouble either way: Rejects (35=3), Logouts (35=5), and what the
        engine's own event log says it could not accept."""
        faults = [f"{e.kind} {e.raw}" for e in self.events
                  if e.kind.startswith("admin") and e.type in ("3", "5")]  # fmt: skip
        for log in (self.workdir / "log").glob("*.event*.log"):
            for line in log.read_text(errors="replace").splitlines():
                if any(w in line for w in ("too low", "Reject", "rejected", "Invalid")):
                    faults.append(f"event.log: {line}")
        return faults

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send("quit")
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
