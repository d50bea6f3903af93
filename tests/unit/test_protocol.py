"""The gate protocol's `handle_line` against a real `Gate` on a fake clock: no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import CapturingLogger

from killswitch.core.enforce.gate import Gate
from killswitch.core.enforce.protocol import MAX_LINE, MAX_QTY, handle_line
from killswitch.core.node.state import HostView, NodeState

T0 = 1000.0
LEASE = T0 + 1.0


def armed(epoch: int = 3) -> HostView:
    return HostView(max_epoch=epoch, max_state=NodeState.ARMED, state=NodeState.ARMED, epoch=epoch)


def killed(epoch: int = 4) -> HostView:
    return HostView(
        max_epoch=epoch, max_state=NodeState.KILLED, state=NodeState.KILLED, epoch=epoch
    )


class Rig:
    """A gate on a clock the test moves, with the logger it writes BLOCK_ORDER events to."""

    def __init__(self) -> None:
        self.t = [T0]
        self.log = CapturingLogger()
        self.gate = Gate("smars", "or-01", clock=lambda: self.t[0], log=self.log)

    def send(self, line: bytes) -> bytes:
        return handle_line(line, self.gate)

    def counts(self) -> tuple[int, int]:
        return self.gate.allowed, self.gate.blocked

    def blocks(self) -> list[dict[str, object]]:
        return [c.kwargs for c in self.log.calls if c.args == ("BLOCK_ORDER",)]


@pytest.fixture
def rig() -> Rig:
    return Rig()


@pytest.fixture
def open_rig(rig: Rig) -> Rig:
    rig.gate.apply(armed(3), lease_deadline=LEASE)
    return rig


class TestOrder:
    @pytest.mark.parametrize(
        "line",
        [
            b"ORDER o-1 AAPL BUY 100",
            b"ORDER o-1 AAPL SELL 100 187.25",
            b"ORDER o-1 BRK.A BUY 1 612000",
            b"ORDER o-1 ES_F SELL 1000000000000 0.01",
            b"ORDER o-1 AAPL BUY 0007 1e3",
            b"  ORDER   o-1\tAAPL BUY 5  ",
            b"ORDER o-1 AAPL BUY 5\r",
        ],
    )
    def test_allow(self, open_rig: Rig, line: bytes) -> None:
        """A well-formed ORDER (with or without price) on an armed gate is allowed at its epoch."""
        assert open_rig.send(line) == b"ALLOW o-1 3\n"
        assert open_rig.counts() == (1, 0)
        assert open_rig.blocks() == []

    def test_id_is_echoed_verbatim(self, open_rig: Rig) -> None:
        """The client's token comes back byte for byte, punctuation included."""
        oid = "Zx9!#$%&'()*+,-./:;<=>?@[]^_`{|}~" + "q" * 30
        reply = open_rig.send(f"ORDER {oid} AAPL BUY 1".encode())
        assert reply == f"ALLOW {oid} 3\n".encode()

    @pytest.mark.parametrize(
        ("view", "reply", "reason", "epoch"),
        [
            pytest.param(
                HostView(state=NodeState.UNARMED),
                b"BLOCK o-9 0 unarmed\n",
                "unarmed",
                0,
                id="unarmed",
            ),
            pytest.param(killed(4), b"BLOCK o-9 4 killed\n", "killed", 4, id="killed"),
            pytest.param(
                HostView(max_epoch=5, max_state=NodeState.ARMED, epoch=5, regression="gone"),
                b"BLOCK o-9 5 stale\n",
                "stale",
                5,
                id="regression-stale",
            ),
        ],
    )
    def test_block(self, rig: Rig, view: HostView, reply: bytes, reason: str, epoch: int) -> None:
        """A closed gate blocks with its epoch and one-word reason, and logs BLOCK_ORDER."""
        rig.gate.apply(view, lease_deadline=LEASE)
        assert rig.send(b"ORDER o-9 MSFT SELL 250 411.10") == reply
        assert rig.counts() == (0, 1)
        [event] = rig.blocks()
        assert event["node"] == "smars"
        assert event["host"] == "or-01"
        assert event["epoch"] == epoch
        assert event["reason"] == reason
        assert event["order_id"] == "o-9"

    def test_fresh_gate_blocks_stale_at_epoch_0(self, rig: Rig) -> None:
        """A gate that has not made one round trip yet blocks as stale at epoch 0."""
        assert rig.send(b"ORDER a1 AAPL BUY 1") == b"BLOCK a1 0 stale\n"
        assert rig.send(b"PING") == b"PONG STALE 0\n"

    def test_lease_expiry_blocks_stale(self, open_rig: Rig) -> None:
        """When the lease runs out without a new read, orders block as stale at the last epoch."""
        assert open_rig.send(b"ORDER o-1 AAPL BUY 1") == b"ALLOW o-1 3\n"
        open_rig.t[0] = LEASE - 0.001
        assert open_rig.send(b"ORDER o-2 AAPL BUY 1") == b"ALLOW o-2 3\n"
        open_rig.t[0] = LEASE
        assert open_rig.send(b"ORDER o-3 AAPL BUY 1") == b"BLOCK o-3 3 stale\n"
        assert open_rig.send(b"PING") == b"PONG STALE 3\n"
        assert open_rig.counts() == (2, 1)
        [event] = open_rig.blocks()
        assert (event["epoch"], event["reason"], event["order_id"]) == (3, "stale", "o-3")

    def test_every_block_is_logged(self, rig: Rig) -> None:
        """Each BLOCK reply has its own BLOCK_ORDER event, in order."""
        rig.gate.apply(killed(8), lease_deadline=LEASE)
        for i in range(5):
            assert rig.send(f"ORDER k{i} AAPL BUY 1".encode()) == f"BLOCK k{i} 8 killed\n".encode()
        assert [e["order_id"] for e in rig.blocks()] == [f"k{i}" for i in range(5)]
        assert all(set(e) >= {"node", "host", "epoch", "reason"} for e in rig.blocks())


class TestPing:
    @pytest.mark.parametrize(
        ("view", "reply"),
        [
            (armed(3), b"PONG ARMED 3\n"),
            (killed(4), b"PONG KILLED 4\n"),
            (HostView(state=NodeState.UNARMED), b"PONG UNARMED 0\n"),
        ],
    )
    def test_ping(self, rig: Rig, view: HostView, reply: bytes) -> None:
        """PING reports the enforced state and epoch and counts nothing."""
        rig.gate.apply(view, lease_deadline=LEASE)
        assert rig.send(b"PING") == reply
        assert rig.send(b" PING \r") == reply
        assert rig.counts() == (0, 0)


MALFORMED = [
    pytest.param(b"ORDER o-1 AAPL BUY", id="too-few-fields"),
    pytest.param(b"ORDER o-1 AAPL BUY 1 2.5 extra", id="too-many-fields"),
    pytest.param(b"ORDER", id="verb-only"),
    pytest.param(b"ORDER o-1 AAPL buy 100", id="lowercase-side"),
    pytest.param(b"ORDER o-1 AAPL SHORT 100", id="unknown-side"),
    pytest.param(b"ORDER o-1 AAPL BUY 0", id="qty-0"),
    pytest.param(b"ORDER o-1 AAPL BUY -5", id="qty-negative"),
    pytest.param(b"ORDER o-1 AAPL BUY +5", id="qty-plus-sign"),
    pytest.param(b"ORDER o-1 AAPL BUY 1.5", id="qty-fraction"),
    pytest.param(b"ORDER o-1 AAPL BUY 1e3", id="qty-exponent"),
    pytest.param("ORDER o-1 AAPL BUY \uff11\uff12".encode(), id="qty-fullwidth-digits"),
    pytest.param("ORDER o-1 AAPL BUY ²".encode(), id="qty-superscript"),
    pytest.param(f"ORDER o-1 AAPL BUY {MAX_QTY + 1}".encode(), id="qty-over-max"),
    pytest.param(b"ORDER o-1 AAPL BUY " + b"9" * 900, id="qty-900-digits"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 abc", id="price-abc"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 -1", id="price-negative"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 0", id="price-zero"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 nan", id="price-nan"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 sNaN", id="price-snan"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 inf", id="price-inf"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 -Infinity", id="price-minus-inf"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 1e999999999999999999999", id="price-exponent-overflow"),
    pytest.param(b"ORDER " + b"i" * 65 + b" AAPL BUY 5", id="id-65-chars"),
    pytest.param("ORDER ordré AAPL BUY 5".encode(), id="id-non-ascii"),
    pytest.param(b"ORDER o\x01 AAPL BUY 5", id="id-control-char"),
    pytest.param(b"ORDER o-1 " + b"S" * 65 + b" BUY 5", id="symbol-65-chars"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   \t  ", id="whitespace-only"),
    pytest.param(b"\r", id="bare-cr"),
    pytest.param(b"HALT o-1", id="unknown-verb"),
    pytest.param(b"order o-1 AAPL BUY 5", id="lowercase-verb"),
    pytest.param(b"PING extra", id="ping-extra"),
    pytest.param(b"PONG", id="pong-is-a-reply-not-a-request"),
    pytest.param(b"ORDER o-1 AAPL BUY \xff\xfe", id="invalid-utf8"),
    pytest.param(b"\xc3", id="truncated-utf8"),
    pytest.param(b"\xed\xa0\x80", id="utf8-surrogate"),
    pytest.param(b"ORDER o-1 AAPL BUY 5 " + b"1" * 2000, id="2000-bytes"),
    pytest.param(b"A" * (MAX_LINE + 1), id="one-byte-over-max"),
]


class TestMalformed:
    @pytest.mark.parametrize("line", MALFORMED)
    @pytest.mark.parametrize("gate_open", [True, False], ids=["open", "closed"])
    def test_err_and_counts_unchanged(self, rig: Rig, line: bytes, gate_open: bool) -> None:
        """A malformed line gets one ERR line and never reaches the gate's counts or log."""
        if gate_open:
            rig.gate.apply(armed(3), lease_deadline=LEASE)
        reply = rig.send(line)
        assert reply.startswith(b"ERR "), reply
        assert reply.endswith(b"\n")
        assert reply.count(b"\n") == 1
        assert rig.counts() == (0, 0)
        assert rig.blocks() == []

    @pytest.mark.parametrize(
        ("line", "reply"),
        [
            (b"", b"ERR empty line\n"),
            (b"\xff", b"ERR invalid utf-8\n"),
            (b"x" * 2000, b"ERR line too long\n"),
            (b"PING extra", b"ERR PING takes no arguments\n"),
            (
                b"HALT o-1",
                b"ERR unknown command HALT; expected ORDER, CANCEL, PING, SUBSCRIBE or FLAT\n",
            ),
            (b"CANCEL", b"ERR usage: CANCEL <id> [<order-ref>]\n"),
            (b"CANCEL a b c", b"ERR usage: CANCEL <id> [<order-ref>]\n"),
        ],
    )
    def test_err_messages(self, rig: Rig, line: bytes, reply: bytes) -> None:
        """The common errors have stable, readable messages."""
        assert rig.send(line) == reply

    def test_line_at_max_is_parsed(self, open_rig: Rig) -> None:
        """A line of exactly MAX_LINE bytes is still parsed, not refused as too long."""
        head = b"ORDER o-1 AAPL BUY 5 "
        line = head + b"1" * (MAX_LINE - len(head))
        assert len(line) == MAX_LINE
        assert open_rig.send(line) == b"ALLOW o-1 3\n"

    def test_unknown_verb_is_clipped_and_ascii(self, rig: Rig) -> None:
        """An echoed unknown verb is cut short and escaped, so the reply stays short ASCII."""
        reply = rig.send(("Ω" * 200).encode())
        assert reply.startswith(b"ERR unknown command ")
        assert reply.isascii()
        assert len(reply) < 120


VERBS = st.sampled_from(["ORDER", "PING", "order", "PONG", "ALLOW", ""])
FIELDS = st.one_of(
    st.sampled_from(
        ["o-1", "AAPL", "BUY", "SELL", "1", "100", "0", "-5", "187.25", "nan", "\uff11"]
    ),
    st.text(max_size=8),
)


@st.composite
def order_like(draw: st.DrawFn) -> bytes:
    """Lines built from protocol words, so ALLOW and BLOCK replies are common too."""
    words = [draw(VERBS), *draw(st.lists(FIELDS, max_size=7))]
    sep = draw(st.sampled_from([" ", "  ", "\t", " \r"]))
    return sep.join(words).encode("utf-8", "surrogatepass")


LINES = st.one_of(
    st.binary(max_size=1200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    order_like(),
    st.builds(
        lambda oid, sym, side, qty: f"ORDER {oid} {sym} {side} {qty}".encode(),
        st.from_regex(r"[!-~]{1,64}", fullmatch=True),
        st.from_regex(r"[!-~]{1,64}", fullmatch=True),
        st.sampled_from(["BUY", "SELL"]),
        st.integers(1, MAX_QTY),
    ),
)


class TestHandleLineProperties:
    @given(st.lists(LINES, min_size=1, max_size=8), st.sampled_from(["open", "closed", "expired"]))
    def test_one_reply_line_and_honest_counts(self, lines: list[bytes], mode: str) -> None:
        """Any bytes get exactly one reply line, and only ALLOW/BLOCK move a count, by one."""
        rig = Rig()
        if mode != "closed":
            rig.gate.apply(armed(3), lease_deadline=LEASE)
        if mode == "expired":
            rig.t[0] = LEASE + 5
        for raw in lines:
            line = raw.split(b"\n", 1)[0]  # the server hands over one line, newline removed
            allowed, blocked = rig.counts()
            reply = rig.send(line)
            assert reply.endswith(b"\n")
            assert reply.count(b"\n") == 1
            verb = reply.split(b" ", 1)[0]
            assert verb in (b"ALLOW", b"BLOCK", b"PONG", b"ERR"), reply
            expected = {
                b"ALLOW": (allowed + 1, blocked),
                b"BLOCK": (allowed, blocked + 1),
            }.get(verb, (allowed, blocked))
            assert rig.counts() == expected
            if verb in (b"ALLOW", b"BLOCK"):
                assert (verb == b"ALLOW") is (mode == "open")
                assert reply.split(b" ")[1].decode() == line.decode().split()[1]
        assert len(rig.blocks()) == rig.gate.blocked
