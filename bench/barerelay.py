"""A relay that only copies bytes: two blocking threads per connection, no framing, no gate.

`python -m bench.barerelay LISTEN_PORT UPSTREAM_PORT`. The FIX gateway bench times it beside
the gateway: what any relay process in the path costs on this machine (two more processes
to wake per round trip), so the gateway's own part can be told apart from it.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy one direction until it ends; then close both sockets, which ends the other
    direction's thread too (its read fails on the closed socket: that is its way out)."""
    with contextlib.suppress(OSError), src, dst:
        while data := src.recv(65536):
            dst.sendall(data)


def main(listen_port: int, upstream_port: int) -> None:
    server = socket.create_server(("127.0.0.1", listen_port))
    while True:
        client, _ = server.accept()
        venue = socket.create_connection(("127.0.0.1", upstream_port))
        for s in (client, venue):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(client, venue), daemon=True).start()
        threading.Thread(target=pump, args=(venue, client), daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
