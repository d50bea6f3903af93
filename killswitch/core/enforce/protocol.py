"""The gate protocol: one request line in, one reply line out.

Pure apart from the gate it is handed: parsing and formatting only. Nothing a client sends
may raise out of `handle_line`, and a line that does not parse never reaches the gate, so
it can never change the counts.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.recfmt import LINE
from killswitch.core.node.state import NodeState

MAX_LINE = 1024  # bytes, newline excluded; a longer line is refused with ERR
MAX_QTY = 10**12
_TOKEN = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces


def handle_line(line: bytes, gate: Gate) -> bytes:
    """Reply (with its newline) to one request line (without its newline)."""
    if len(line) > MAX_LINE:
        return b"ERR line too long\n"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return b"ERR invalid utf-8\n"
    parts = text.split()
    if not parts:
        return b"ERR empty line\n"
    verb = parts[0]
    if verb == "ORDER":
        err = _check_order(parts)
        if err:
            return f"ERR {err}\n".encode()
        price = float(parts[5]) if len(parts) == 6 else 0.0
        ok, epoch, reason = gate.check(parts[1], parts[2], parts[3], int(parts[4]), price, LINE)
        if ok:
            return f"ALLOW {parts[1]} {epoch}\n".encode()
        return f"BLOCK {parts[1]} {epoch} {reason}\n".encode()
    if verb == "CANCEL":
        # A cancel reduces risk: allowed in every state, so a killed router can still flatten.
        if len(parts) not in (2, 3):
            return b"ERR usage: CANCEL <id> [<order-ref>]\n"
        if not all(_TOKEN.fullmatch(p) for p in parts[1:]):
            return b"ERR bad id or order-ref: 1-64 printable ASCII characters\n"
        epoch = gate.cancel(parts[1], parts[2] if len(parts) == 3 else "", LINE)
        return f"ALLOW {parts[1]} {epoch}\n".encode()
    if verb == "PING":
        if len(parts) != 1:
            return b"ERR PING takes no arguments\n"
        state, epoch = gate.status()
        return f"PONG {state.value} {epoch}\n".encode()
    return f"ERR unknown command {_clip(verb)}; expected ORDER, CANCEL, PING, SUBSCRIBE or FLAT\n".encode()


def state_line(state: NodeState, epoch: int) -> bytes:
    """The line pushed to subscribers: `STATE <state> <epoch> <reason>`, reason one word."""
    reason = "armed" if state is NodeState.ARMED else state.value.lower()
    return f"STATE {state.value} {epoch} {reason}\n".encode()


def parse_flat(parts: list[str]) -> int | str:
    """The epoch of a `FLAT <epoch>` request, or the ERR message for a malformed one."""
    if len(parts) != 2 or not parts[1].isascii() or not parts[1].isdigit():
        return "usage: FLAT <epoch>"
    if not 0 < int(parts[1]) < 2**63:
        return "bad epoch: a positive whole number"
    return int(parts[1])


def _check_order(parts: list[str]) -> str:
    if len(parts) not in (5, 6):
        return "usage: ORDER <id> <symbol> <BUY|SELL> <qty> [<price>]"
    _, oid, symbol, side, qty = parts[:5]
    if not _TOKEN.fullmatch(oid):
        return "bad id: 1-64 printable ASCII characters"
    if not _TOKEN.fullmatch(symbol):
        return "bad symbol: 1-64 printable ASCII characters"
    if side not in ("BUY", "SELL"):
        return f"bad side {_clip(side)}: BUY or SELL"
    if not qty.isascii() or not qty.isdigit() or not 0 < int(qty) <= MAX_QTY:
        return f"bad qty {_clip(qty)}: a whole number from 1 to {MAX_QTY}"
    if len(parts) == 6:
        try:
            price = Decimal(parts[5])
        except InvalidOperation:
            return f"bad price {_clip(parts[5])}"
        if not price.is_finite() or price <= 0:
            return f"bad price {_clip(parts[5])}: a positive number"
    return ""


def _clip(s: str) -> str:
    s = s.encode("ascii", "backslashreplace").decode("ascii")
    return s if len(s) <= 32 else s[:29] + "..."
