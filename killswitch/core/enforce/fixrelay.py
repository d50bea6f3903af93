"""What the FIX gateway decides for one relayed session, and the messages it writes itself.

Pure: framed messages and gate decisions in, bytes to send out; no I/O, no clock. The relay
keeps both legs of a session on the same sequence numbers by never adding or removing a
message on either leg: a blocked order's slot on the venue leg carries a TestRequest instead
(or, for a possible-duplicate resend, a SequenceReset-GapFill), and the venue's Heartbeat
answering that TestRequest takes the slot on the client leg as the order's rejecting
ExecutionReport. So no mapping table can drift, a relay restart loses no sequence state, and
ResendRequests pass through untouched; a venue's GapFill over a slot the relay filled is
split so the client gets its ExecutionReport again (PossDupFlag set) instead of a gap.
It must never produce a message that puts either leg's sequence numbers out of step.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

from killswitch.core.enforce.fixwire import Field, begin_string, encode, fields, first

ORDERS = frozenset({b"D", b"G", b"E", b"AB"})  # through the gate
CANCELS = frozenset({b"F", b"q"})  # always pass: they reduce risk
HEARTBEAT, TEST_REQUEST, SEQUENCE_RESET, LOGON = b"0", b"1", b"4", b"A"
# Standard header fields: everything a reply copies from the message whose slot it takes.
HEADER = frozenset(
    b"%d" % t
    for t in (8, 9, 35, 49, 56, 115, 128, 90, 91, 34, 50, 142, 57, 143, 116, 144, 129, 145,
              43, 97, 52, 122, 212, 213, 347, 369, 627, 628, 629, 630, 1128, 1129, 1156)
)  # fmt: skip
_FRAME = frozenset({b"8", b"9", b"10", b"35"})  # written anew in every reply
_SIDES = {b"1": "BUY", b"2": "SELL", b"3": "BUY", b"4": "SELL", b"5": "SELL", b"6": "SELL"}
KEEP = 100_000  # blocked sequence numbers and sent reports remembered per session

V = TypeVar("V")
Check = Callable[[str, str, str, int, float], tuple[bool, int, str]]


class Entry(NamedTuple):  # a NamedTuple: built for every order relayed, and cheap to build
    """One order as the gate sees it (a NewOrderList has one per list entry)."""

    clordid: bytes
    symbol: bytes
    side: bytes
    qty: bytes
    price: bytes

    def check(self, gate: Check) -> tuple[bool, int, str]:
        return gate(self.clordid.decode("ascii", "replace"), self.symbol.decode("ascii", "replace"),
                    _SIDES.get(self.side, self.side.decode("ascii", "replace")),
                    _qty(self.qty), _price(self.price))  # fmt: skip


class Order(NamedTuple):
    """An order message from the client: its place in the session and its entries."""

    msgtype: bytes
    seq: int
    possdup: bool
    entries: tuple[Entry, ...]
    orig: bytes = b""  # OrigClOrdID (41) of a cancel/replace
    list_id: bytes = b""  # ListID (66) of a NewOrderList

    @property
    def clordid(self) -> bytes:
        return self.entries[0].clordid


def read_order(msg: bytes, msgtype: bytes) -> Order:
    """What the gate and the relay need of an order message (its header only when blocked)."""
    entry: tuple[Entry, ...]
    if msgtype == b"E":  # each ClOrdID starts a list entry
        entries: list[Entry] = []
        cur: dict[bytes, bytes] = {}
        for t, v in fields(msg):
            if t == b"11" and cur:
                entries.append(_entry(cur))
                cur = {}
            if t in (b"11", b"55", b"54", b"38", b"44"):
                cur.setdefault(t, v)
        if cur:
            entries.append(_entry(cur))
        entry = tuple(entries) or (_entry({}),)
    # The fields the relay needs, in one pass of the regex engine (nine `find`s cost twice as
    # much); reversed, so that a field's first occurrence is the one kept.
    got = dict(reversed(_ORDER_FIELDS.findall(msg)))
    get = got.get
    if msgtype != b"E":
        entry = (Entry(get(b"11", b""), get(b"55", b""), get(b"54", b""), get(b"38", b""),
                       get(b"44", b"")),)  # fmt: skip
    seq = get(b"34", b"")
    return Order(
        msgtype, int(seq) if seq.isdigit() else 0, get(b"43") == b"Y", entry,
        get(b"41", b""), get(b"66", b""),
    )  # fmt: skip


# ClOrdID, Symbol, Side, OrderQty, Price, MsgSeqNum, PossDupFlag, OrigClOrdID, ListID
_ORDER_FIELDS = re.compile(rb"\x01(11|55|54|38|44|34|43|41|66)=([^\x01]*)")


def header_of(msg: bytes) -> list[Field]:
    """The standard header fields of a message, in order, less BeginString/BodyLength/MsgType."""
    return [(t, v) for t, v in fields(msg) if t in HEADER and t not in _FRAME]


def _entry(d: dict[bytes, bytes]) -> Entry:
    return Entry(d.get(b"11", b""), d.get(b"55", b""), d.get(b"54", b""), d.get(b"38", b""),
                 d.get(b"44", b""))  # fmt: skip


def _qty(raw: bytes) -> int:
    """Quantity for the limits: rounded up; one that is not a number is over every limit."""
    try:
        q = float(raw) if raw else 0.0
    except ValueError:
        return 2**62
    return math.ceil(q) if math.isfinite(q) and q >= 0 else 2**62


def _price(raw: bytes) -> float:
    try:
        p = float(raw) if raw else 0.0
    except ValueError:
        return math.inf
    return p if math.isfinite(p) else math.inf


def gate_order(order: Order, gate: Check) -> tuple[bool, int, str, bytes]:
    """Every entry through the gate; the first refusal refuses the message.

    Returns (allowed, epoch, reason, the ClOrdID the refusal names).
    """
    epoch = 0
    for e in order.entries:
        ok, epoch, reason = e.check(gate)
        if not ok:
            return False, epoch, reason, e.clordid
    return True, epoch, "", order.clordid


@dataclass(frozen=True, slots=True)
class Refusal:
    order: Order
    clordid: bytes
    reason: str
    epoch: int


def _with(header: tuple[Field, ...] | list[Field], **values: bytes) -> list[Field]:
    """`header` with fields set (`t34=b"7"`), replaced in place or appended."""
    want = {k[1:].encode(): v for k, v in values.items()}
    out = [(t, want.pop(t, v)) for t, v in header]
    out.extend(want.items())
    return out


class SessionBook:
    """One session's memory: blocked sequence numbers, replies owed, reports sent.

    Bounded: at most KEEP of each; what falls out is the oldest, which only means an older
    resend is gap-filled instead of answered with its report again.
    """

    def __init__(self, token_prefix: bytes, keep: int = KEEP) -> None:
        self.prefix = token_prefix
        self.keep = keep
        self.blocked: dict[int, None] = {}  # client-leg MsgSeqNums of blocked orders
        self.owed: dict[bytes, Refusal] = {}  # TestReqID -> the refusal its Heartbeat carries
        self.sent: dict[int, tuple[bytes, list[Field], bytes]] = {}  # seq -> begin, body, 52
        self._n = 0

    def reset(self) -> None:
        """The client reset its sequence numbers (Logon with 141=Y): old ones mean nothing."""
        self.blocked.clear()
        self.sent.clear()

    def was_blocked(self, order: Order) -> bool:
        """A possible-duplicate resend of an order this relay blocked: it stays blocked."""
        return order.possdup and order.seq in self.blocked

    def block(self, msg: bytes, refusal: Refusal) -> bytes:
        """The message that takes a blocked order's slot on the venue leg."""
        order = refusal.order
        again = self.was_blocked(order)
        _remember(self.blocked, order.seq, None, self.keep)
        begin, header = begin_string(msg), header_of(msg)
        if again:  # its report was sent the first time: fill the slot, as for an admin message
            return encode(begin, [(b"35", SEQUENCE_RESET), *header,
                                  (b"123", b"Y"), (b"36", b"%d" % (order.seq + 1))])  # fmt: skip
        self._n += 1
        token = self.prefix + b"%d" % self._n
        if len(self.owed) >= self.keep:
            self.owed.pop(next(iter(self.owed)))
        self.owed[token] = refusal
        # A first refusal of a resend keeps PossDupFlag and OrigSendingTime: the venue takes
        # the TestRequest in the order's slot, and the client still gets its report.
        head = [
            (t, v) for t, v in header if t != b"97" and (order.possdup or t not in (b"43", b"122"))
        ]
        return encode(begin, [(b"35", TEST_REQUEST), *head, (b"112", token)])

    def answer(self, msg: bytes) -> bytes | None:
        """For the venue's Heartbeat answering a TestRequest of ours: the ExecutionReport that
        takes its slot on the client leg (None: not ours, relay it as it is)."""
        fs = fields(msg)
        refusal = self.owed.pop(first(fs, b"112"), None)
        if refusal is None:
            return None
        begin = begin_string(msg)
        header = header_of(msg)
        body = report_body(begin, refusal, exec_id=self.prefix + b"%d" % self._n_report())
        seq = first(header, b"34")
        if seq.isdigit():
            _remember(self.sent, int(seq), (begin, body, first(header, b"52")), self.keep)
        return encode(begin, [(b"35", b"8"), *header, *body])

    def _n_report(self) -> int:
        self._n += 1
        return self._n

    def refill(self, msg: bytes) -> list[bytes] | None:
        """A venue GapFill over slots that carried our ExecutionReports, split so the client
        gets those reports again (PossDupFlag=Y) and gap fills around them; None: relay it."""
        if not self.sent:
            return None
        fs = fields(msg)
        if first(fs, b"123") != b"Y":
            return None
        lo, hi = first(fs, b"34"), first(fs, b"36")
        if not (lo.isdigit() and hi.isdigit()):
            return None
        start, stop = int(lo), int(hi)
        ours = sorted(s for s in self.sent if start <= s < stop)
        if not ours:
            return None
        begin = begin_string(msg)
        header = [(t, v) for t, v in fs if t in HEADER and t not in _FRAME]
        now = first(header, b"52")
        out: list[bytes] = []
        for s in ours:
            if start < s:
                out.append(_gap_fill(begin, header, start, s))
            _, body, was = self.sent[s]
            head = _with(header, t34=b"%d" % s, t43=b"Y", t122=was or now)
            out.append(encode(begin, [(b"35", b"8"), *head, *body]))
            start = s + 1
        if start < stop:
            out.append(_gap_fill(begin, header, start, stop))
        return out


def _gap_fill(begin: bytes, header: list[Field], seq: int, new_seq: int) -> bytes:
    head = _with(header, t34=b"%d" % seq)
    return encode(begin, [(b"35", SEQUENCE_RESET), *head, (b"123", b"Y"), (b"36", b"%d" % new_seq)])


def _remember(d: dict[int, V], key: int, value: V, keep: int) -> None:
    d.pop(key, None)
    d[key] = value
    if len(d) > keep:
        d.pop(next(iter(d)))


def report_body(begin: bytes, r: Refusal, exec_id: bytes) -> list[Field]:
    """An ExecutionReport's body rejecting the order (39=8, 150=8), with the fields a strict
    engine requires of a 35=8 in that FIX version."""
    order = r.order
    entry = next((e for e in order.entries if e.clordid == r.clordid), order.entries[0])
    body: list[Field] = [(b"37", b"NONE"), (b"11", r.clordid or b"NONE")]
    if order.orig:
        body.append((b"41", order.orig))
    if order.list_id:
        body.append((b"66", order.list_id))
    body.append((b"17", exec_id))
    if begin == b"FIX.4.2":
        body.append((b"20", b"0"))  # ExecTransType: required in 4.2, gone from 4.4
    body += [(b"150", b"8"), (b"39", b"8"), (b"103", b"0"), (b"55", entry.symbol or b"[N/A]"),
             (b"54", entry.side or b"1")]  # fmt: skip
    if entry.qty:
        body.append((b"38", entry.qty))
    body += [(b"151", b"0"), (b"14", b"0"), (b"6", b"0"),
             (b"58", b"killswitch %s epoch %d" % (r.reason.encode(), r.epoch))]  # fmt: skip
    return body
