"""Network namespaces for the fence's tests and bench: a venue namespace and a trading one
joined by a veth pair, a venue echo listener, and clients run as any uid in the trading
namespace. Needs root (`ip netns add`); the names are unique per run and everything is
deleted on exit, even after a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

# Private test addresses, only ever configured inside the two namespaces.
VENUE_ADDR = "10.203.0.1"
TRADING_ADDR = "10.203.0.2"
VENUE_PORT = 9878
CLIENT_PYTHON = "/usr/bin/python3"  # readable by any uid (a venv's interpreter may not be)

_ECHO = """
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(({addr!r}, {port})); s.listen(128); print("listening", flush=True)
def serve(c):
    with c:
        while True:
            try:
                data = c.recv(4096)
            except OSError:
                return
            if not data:
                return
            c.sendall(data)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# Connects, sends one line and reads it back; prints "ok" or the error's name. With
# "hold", it then waits for a line on stdin and tries again on the same connection.
_CLIENT = """
import socket, sys
try:
    c = socket.create_connection(({addr!r}, {port}), timeout=3)
    c.sendall(b"ping"); assert c.recv(4) == b"ping"
    print("ok", flush=True)
except OSError as e:
    print(type(e).__name__, flush=True); sys.exit(0)
if {hold}:
    sys.stdin.readline()
    try:
        c.sendall(b"ping"); data = c.recv(4)
        print("ok" if data == b"ping" else "closed", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""


def is_root() -> bool:
    return os.geteuid() == 0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class NetPair:
    """`venue` and `trading` namespaces joined by a veth pair."""

    venue: str
    trading: str

    def exec(self, ns: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", ns, *argv]

    def as_uid(self, uid: int, *argv: str) -> list[str]:
        """`argv` in the trading namespace as `uid` (no supplementary groups)."""
        return self.exec(
            self.trading, "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv
        )

    def connect(self, uid: int, timeout: float = 10.0) -> str:
        """One connection to the venue from the trading namespace as `uid`: "ok" or the
        error's name (e.g. ConnectionRefusedError)."""
        code = _CLIENT.format(addr=VENUE_ADDR, port=VENUE_PORT, hold=False)
        res = subprocess.run(
            self.as_uid(uid, CLIENT_PYTHON, "-c", code),
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        return res.stdout.strip() or f"failed: {res.stderr.strip()[-200:]}"

    def hold(self, uid: int) -> subprocess.Popen[str]:
        """A connection kept open: its first line says whether it connected; a line on its
        stdin makes it use the connection again and print the outcome."""
        code = _CLIENT.format(addr=VENUE_ADDR, port=VENUE_PORT, hold=True)
        return subprocess.Popen(
            self.as_uid(uid, CLIENT_PYTHON, "-c", code),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    def nft_list(self) -> str:
        res = subprocess.run(
            self.exec(self.trading, "nft", "list", "table", "inet", "killswitch"),
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return res.stdout


@contextlib.contextmanager
def net_pair(prefix: str = "ks") -> Iterator[NetPair]:
    """Two fresh namespaces with unique names, a venue echo listener on
    VENUE_ADDR:VENUE_PORT; all deleted on exit."""
    tag = secrets.token_hex(3)
    pair = NetPair(f"{prefix}v-{tag}", f"{prefix}t-{tag}")
    veth_v, veth_t = f"kv{tag}", f"kt{tag}"
    listener: subprocess.Popen[str] | None = None
    created: list[str] = []
    try:
        for ns in (pair.venue, pair.trading):
            _ip("netns", "add", ns)
            created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", veth_v, "netns", pair.venue, "type", "veth", "peer", "name", veth_t,
            "netns", pair.trading)  # fmt: skip
        for ns, dev, addr in (
            (pair.venue, veth_v, VENUE_ADDR),
            (pair.trading, veth_t, TRADING_ADDR),
        ):
            _ip("-n", ns, "addr", "add", f"{addr}/30", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
        listener = subprocess.Popen(
            pair.exec(pair.venue, CLIENT_PYTHON, "-c", _ECHO.format(addr=VENUE_ADDR, port=VENUE_PORT)),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert listener.stdout is not None
        if listener.stdout.readline().strip() != "listening":
            raise RuntimeError("the venue listener did not start")
        yield pair
    finally:
        if listener is not None:
            listener.kill()
            listener.wait()
            if listener.stdout is not None:
                listener.stdout.close()
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
