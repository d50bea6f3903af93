"""The FIX gateway's decisions (core.enforce.fixrelay): which orders the gate sees, what takes a
blocked order's slot on each leg, and that both legs keep contiguous sequence numbers."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.enforce.fixrelay import (
    Refusal,
    SessionBook,
    _price,
    _qty,
    gate_order,
    read_order,
)
from killswitch.core.enforce.fixwire import Field, Framer, encode, fields, first, msg_type


def msg(
    mt: bytes, seq: int, body: list[Field], begin: bytes = b"FIX.4.4", dup: bool = False
) -> bytes:
    head: list[Field] = [(b"35", mt), (b"49", b"CLIENT"), (b"56", b"VENUE"), (b"34", b"%d" % seq)]
    if dup:
        head += [(b"43", b"Y"), (b"122", b"20260101-00:00:00.000")]
    return encode(begin, [*head, (b"52", b"20260101-00:00:01.000"), *body])


def nos(seq: int, clordid: bytes = b"o-1", dup: bool = False, begin: bytes = b"FIX.4.4") -> bytes:
    body = [(b"11", clordid), (b"55", b"AAPL"), (b"54", b"1"), (b"38", b"100"), (b"44", b"10.5")]
    return msg(b"D", seq, body, begin, dup)


def heartbeat(seq: int, token: bytes, begin: bytes = b"FIX.4.4") -> bytes:
    head = [(b"35", b"0"), (b"49", b"VENUE"), (b"56", b"CLIENT"), (b"34", b"%d" % seq)]
    return encode(begin, [*head, (b"52", b"20260101-00:00:02.000"), (b"112", token)])


def as_dict(raw: bytes) -> dict[bytes, bytes]:
    assert Framer().feed(raw) == [raw], "every message the relay writes is framed correctly"
    return dict(fields(raw))


class TestReadOrder:
    def test_new_order_single(self) -> None:
        """A NewOrderSingle gives one entry with 11/55/54/38/44 and its place in the session."""
        o = read_order(nos(7, b"abc"), b"D")
        assert (o.seq, o.possdup, o.clordid) == (7, False, b"abc")
        assert [(e.symbol, e.side, e.qty, e.price) for e in o.entries] == [
            (b"AAPL", b"1", b"100", b"10.5")
        ]

    def test_new_order_list_has_an_entry_per_order(self) -> None:
        """Each ClOrdID of a NewOrderList starts an entry of its own."""
        body = [(b"66", b"L1"), (b"73", b"2"), (b"11", b"a"), (b"55", b"X"), (b"54", b"1"),
                (b"38", b"1"), (b"11", b"b"), (b"55", b"Y"), (b"54", b"2"), (b"38", b"2")]  # fmt: skip
        o = read_order(msg(b"E", 3, body), b"E")
        assert [(e.clordid, e.symbol, e.qty) for e in o.entries] == [
            (b"a", b"X", b"1"),
            (b"b", b"Y", b"2"),
        ]
        assert o.list_id == b"L1"

    def test_replace_keeps_its_original(self) -> None:
        """A cancel/replace names its OrigClOrdID (41)."""
        body = [(b"11", b"n"), (b"41", b"o"), (b"55", b"X"), (b"54", b"2"), (b"38", b"5")]
        assert read_order(msg(b"G", 4, body), b"G").orig == b"o"

    @pytest.mark.parametrize(
        ("raw", "want"),
        [
            (b"100", 100),
            (b"100.5", 101),
            (b"", 0),
            (b"abc", 2**62),
            (b"nan", 2**62),
            (b"-5", 2**62),
        ],
    )
    def test_qty_is_conservative(self, raw: bytes, want: int) -> None:
        """A fractional quantity rounds up; one that is not a number is over every limit."""
        assert _qty(raw) == want

    @pytest.mark.parametrize(
        ("raw", "want"), [(b"10.5", 10.5), (b"", 0.0), (b"x", math.inf), (b"inf", math.inf)]
    )
    def test_price_is_conservative(self, raw: bytes, want: float) -> None:
        """A price that is not a finite number is over every notional limit."""
        assert _price(raw) == want


class TestGateOrder:
    def test_every_entry_is_checked_and_the_first_refusal_names_its_order(self) -> None:
        """The gate sees each entry; the list is refused with the ClOrdID the gate refused."""
        seen: list[tuple[str, str, str, int, float]] = []

        def gate(oid: str, sym: str, side: str, qty: int, price: float) -> tuple[bool, int, str]:
            seen.append((oid, sym, side, qty, price))
            return (sym != "Y", 5, "" if sym != "Y" else "killed")

        body = [(b"73", b"2"), (b"11", b"a"), (b"55", b"X"), (b"54", b"1"), (b"38", b"1"),
                (b"11", b"b"), (b"55", b"Y"), (b"54", b"2"), (b"38", b"2"), (b"44", b"3")]  # fmt: skip
        ok, epoch, reason, clordid = gate_order(read_order(msg(b"E", 3, body), b"E"), gate)
        assert (ok, epoch, reason, clordid) == (False, 5, "killed", b"b")
        assert seen == [("a", "X", "BUY", 1, 0.0), ("b", "Y", "SELL", 2, 3.0)]


class TestBlockedSlot:
    def test_a_blocked_order_becomes_a_test_request_in_its_slot(self) -> None:
        """The venue leg gets a TestRequest with the order's MsgSeqNum and CompIDs."""
        book = SessionBook(b"ks-")
        order = read_order(nos(9), b"D")
        out = as_dict(book.block(nos(9), Refusal(order, b"o-1", "killed", 4)))
        assert (out[b"35"], out[b"34"], out[b"49"], out[b"56"]) == (b"1", b"9", b"CLIENT", b"VENUE")
        assert out[b"112"] in book.owed

    @pytest.mark.parametrize(("begin", "fix42"), [(b"FIX.4.2", True), (b"FIX.4.4", False)])
    def test_the_heartbeat_answering_it_becomes_the_execution_report(
        self, begin: bytes, fix42: bool
    ) -> None:
        """The venue's Heartbeat for our TestRequest reaches the client as a rejecting
        ExecutionReport in the same slot, with the fields that FIX version requires."""
        book = SessionBook(b"ks-")
        raw = nos(9, b"abc", begin=begin)
        token = as_dict(book.block(raw, Refusal(read_order(raw, b"D"), b"abc", "killed", 4)))[
            b"112"
        ]
        er = book.answer(heartbeat(12, token, begin))
        assert er is not None
        d = as_dict(er)
        assert (d[b"35"], d[b"34"], d[b"49"], d[b"56"]) == (b"8", b"12", b"VENUE", b"CLIENT")
        assert (d[b"39"], d[b"150"], d[b"11"]) == (b"8", b"8", b"abc")
        assert d[b"58"] == b"killswitch killed epoch 4"
        for tag in (b"37", b"17", b"54", b"55", b"14", b"151", b"6"):
            assert tag in d, tag
        assert (b"20" in d) is fix42 and b"112" not in d
        assert book.owed == {} and 12 in book.sent

    def test_a_heartbeat_that_is_not_ours_passes(self) -> None:
        """A Heartbeat answering the client's own TestRequest is relayed unchanged."""
        assert SessionBook(b"ks-").answer(heartbeat(3, b"client-1")) is None

    def test_a_resend_refused_for_the_first_time_still_gets_its_report(self) -> None:
        """A PossDupFlag resend this relay never blocked before takes its slot with a
        TestRequest that keeps PossDupFlag and OrigSendingTime, so a report is still owed."""
        book = SessionBook(b"ks-")
        resent = read_order(nos(9, dup=True), b"D")
        out = as_dict(book.block(nos(9, dup=True), Refusal(resent, b"o-1", "stale", 3)))
        assert (out[b"35"], out[b"34"], out[b"43"], out[b"122"]) == (
            b"1",
            b"9",
            b"Y",
            b"20260101-00:00:00.000",
        )
        assert out[b"112"] in book.owed

    def test_a_resent_blocked_order_stays_blocked_as_a_gap_fill(self) -> None:
        """A PossDupFlag resend of a blocked order is remembered and fills its own slot."""
        book = SessionBook(b"ks-")
        first_try = read_order(nos(9), b"D")
        book.block(nos(9), Refusal(first_try, b"o-1", "killed", 4))
        resent = read_order(nos(9, dup=True), b"D")
        assert book.was_blocked(resent)
        gf = as_dict(book.block(nos(9, dup=True), Refusal(resent, b"o-1", "", 0)))
        assert (gf[b"35"], gf[b"34"], gf[b"36"], gf[b"123"], gf[b"43"]) == (
            b"4",
            b"9",
            b"10",
            b"Y",
            b"Y",
        )
        assert not book.was_blocked(read_order(nos(9), b"D")), "only resends are matched"
        book.reset()
        assert not book.was_blocked(resent)


def gap_fill(seq: int, new_seq: int) -> bytes:
    head = [(b"35", b"4"), (b"49", b"VENUE"), (b"56", b"CLIENT"), (b"34", b"%d" % seq),
            (b"43", b"Y"), (b"52", b"20260101-00:00:03.000"), (b"122", b"20260101-00:00:00.000")]  # fmt: skip
    return encode(b"FIX.4.4", [*head, (b"123", b"Y"), (b"36", b"%d" % new_seq)])


def book_with_reports(seqs: list[int]) -> SessionBook:
    book = SessionBook(b"ks-")
    for i, s in enumerate(seqs):
        raw = nos(100 + i, b"o%d" % s)
        token = dict(
            fields(book.block(raw, Refusal(read_order(raw, b"D"), b"o%d" % s, "killed", 2)))
        )[b"112"]
        book.answer(heartbeat(s, token))
    return book


class TestRefill:
    def test_a_gap_fill_over_our_reports_is_split_around_them(self) -> None:
        """The client gets its reports again (PossDupFlag=Y) between gap fills, in order."""
        out = [as_dict(m) for m in (book_with_reports([7, 9]).refill(gap_fill(5, 12)) or [])]
        assert [(d[b"35"], d[b"34"], d.get(b"36")) for d in out] == [
            (b"4", b"5", b"7"), (b"8", b"7", None), (b"4", b"8", b"9"), (b"8", b"9", None),
            (b"4", b"10", b"12"),
        ]  # fmt: skip
        assert all(d[b"43"] == b"Y" for d in out)
        assert out[1][b"11"] == b"o7" and out[1][b"122"] == b"20260101-00:00:02.000"

    def test_a_gap_fill_elsewhere_passes(self) -> None:
        """A gap fill that covers none of our reports, or a reset without GapFillFlag, passes."""
        book = book_with_reports([7])
        assert book.refill(gap_fill(8, 12)) is None
        reset = encode(b"FIX.4.4", [(b"35", b"4"), (b"34", b"5"), (b"36", b"20")])
        assert book.refill(reset) is None

    @given(st.sets(st.integers(1, 60), max_size=15), st.integers(1, 60), st.integers(1, 30))
    def test_split_keeps_the_client_leg_contiguous(
        self, ours: set[int], lo: int, span: int
    ) -> None:
        """Whatever the reports and the range, the split covers [lo, hi) exactly, in order,
        and every report inside it is sent again in its own slot."""
        hi = lo + span
        out = book_with_reports(sorted(ours)).refill(gap_fill(lo, hi))
        if out is None:
            assert not any(lo <= s < hi for s in ours)
            return
        at = lo
        for raw in out:
            d = dict(fields(raw))
            assert int(d[b"34"]) == at
            at = int(d[b"36"]) if msg_type(raw) == b"4" else at + 1
            if msg_type(raw) == b"8":
                assert int(d[b"34"]) in ours and first(list(d.items()), b"39") == b"8"
        assert at == hi


field_values = st.binary(min_size=0, max_size=12).filter(lambda b: b"\x01" not in b)


class TestAnyOrder:
    @given(
        st.sampled_from([b"D", b"G", b"E", b"AB"]),
        st.lists(st.tuples(st.sampled_from([b"11", b"34", b"38", b"41", b"43", b"44", b"54", b"55",
                                            b"66", b"73", b"122"]), field_values), max_size=12),
    )  # fmt: skip
    def test_any_order_is_judged_and_its_slot_filled(self, mt: bytes, body: list[Field]) -> None:
        """An order message with any values (missing, repeated, not numbers) is read, judged
        and blocked without an exception, and what takes its slot is a well-framed message."""
        raw = encode(b"FIX.4.4", [(b"35", mt), (b"49", b"C"), (b"56", b"V"), *body])
        order = read_order(raw, mt)
        ok, epoch, reason, clordid = gate_order(order, lambda *a: (False, 3, "killed"))
        assert not ok
        book = SessionBook(b"ks-")
        out = book.block(raw, Refusal(order, clordid, reason, epoch))
        assert Framer().feed(out) == [out]
        token = dict(fields(out)).get(b"112")
        if token is not None:  # its report, too, is a well-framed message
            er = book.answer(heartbeat(5, token))
            assert er is not None and Framer().feed(er) == [er]
