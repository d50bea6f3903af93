"""The in-process gate: the one check every order makes before it may be sent.

This is the order path. It must never touch the network, a file or a lock it can wait
on: `check()` reads two fields and a monotonic clock. The sidecar's sync loop (another
task, maybe another thread) moves the gate with `apply()` after each Redis round trip;
the gate closes by itself when that lease runs out, without waiting for any error.

Thread use: one trading thread may call `check()`/`allow()` while the sync loop runs in
another thread. Counters are plain ints incremented under the GIL; with several trading
threads on one gate, give each thread its own sidecar or serialise the calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from killswitch.core.enforce.limits import LimitChecker, Limits
from killswitch.core.enforce.recfmt import ALLOW, BLOCK, CANCEL, INPROC, kind
from killswitch.core.node.state import MAX_EPOCH, BlockReason, HostView, NodeState, boot_view

Decision = tuple[bool, int, str]  # (allowed, epoch, block reason or "")
# The flight recorder's append: (kind, order id, symbol, side, qty, price, epoch), `kind` from
# `core.enforce.recfmt.kind` (decision, reason, source). It must not raise (`runtime.ring.Ring.write`).
Recorder = Callable[[int, str, str, str, int, float, int], None]


# A decision's record kind for each source byte (`kind` keeps `source & 0xFF`), computed
# once: the order path indexes a tuple instead of calling `kind`.
_ALLOWED = tuple(kind(ALLOW, "", source) for source in range(256))
_CANCELLED = tuple(kind(CANCEL, "", source) for source in range(256))
_ALLOWED_INPROC = _ALLOWED[INPROC]
LIMIT = "limit"  # the block reason of an order over a local pre-trade limit


class BlockLogBudget:
    """At most `per_s` per-order BLOCK_ORDER lines a second; the rest are only counted.

    A runaway router sends the most exactly when the host must react fastest: past the
    budget a blocked order costs an integer increment instead of a log line. `skipped` only
    grows (reason -> orders not logged one by one), so a reader in another thread takes
    differences and never loses a count.
    """

    __slots__ = ("_clock", "_second", "_used", "per_s", "skipped")

    def __init__(self, per_s: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self.skipped: dict[str, int] = {}
        self._clock = clock
        self._second = -1e18
        self._used = 0

    def take(self) -> bool:
        now = self._clock()
        if now - self._second >= 1.0:
            self._second, self._used = now, 0
        if self._used < self.per_s:
            self._used += 1
            return True
        return False

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class Gate:
    """Allow or block one order, locally, against the last proven node state."""

    __slots__ = (
        "_allow",
        "_budget",
        "_clock",
        "_deadline",
        "_held",
        "_isolated",
        "_limits",
        "_log",
        "_open",
        "_plain",
        "_reason",
        "_rec",
        "_symbols",
        "allowed",
        "blocked",
        "blocked_by",
        "cancels",
        "host",
        "node",
        "scope_ver",
        "view",
    )

    def __init__(
        self,
        node: str,
        host: str,
        *,
        view: HostView | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: Any = None,
        log_budget: BlockLogBudget | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.node = node
        self._budget = log_budget
        self.host = host
        self.allowed = 0
        self.blocked = 0
        self.blocked_by: dict[str, int] = {}  # block reason -> count (sums to `blocked`)
        self.cancels = 0
        self._clock = clock
        self._log = log if log is not None else structlog.get_logger("killswitch.core.enforce.gate")
        self._open = False
        self._deadline = 0.0
        self._held = 0  # epoch of a kill notice not yet confirmed by a read (0: none)
        self.view = view or boot_view()
        self._reason = self.view.block_reason.value
        self._allow: Decision = (True, self.view.epoch, "")
        self._limits = LimitChecker(limits, clock()) if limits is not None else None
        self._isolated = False  # a scoped kill of this host (`kill --host`)
        self._symbols: frozenset[str] = frozenset()  # symbols killed on every host
        self.scope_ver = 0  # the version of the scoped kills this gate enforces
        self._plain = limits is None  # nothing but the node state to check: the fast path
        self._rec: Recorder | None = None  # the flight recorder (None: decisions not recorded)

    # -- the order path -------------------------------------------------------------------

    def allow(
        self,
        order_id: str = "-",
        symbol: str = "",
        side: str = "",
        qty: int = 0,
        price: float = 0.0,
    ) -> bool:
        """True if this order may be sent now; a refused order is counted and logged."""
        # The same decision as check(), inlined: this is the hot path of in-process callers.
        if self._open and self._plain and self._clock() < self._deadline:
            self.allowed += 1
            rec = self._rec
            if rec is not None:
                rec(_ALLOWED_INPROC, order_id, symbol, side, qty, price, self._allow[1])
            return True
        return self.check(order_id, symbol, side, qty, price)[0]

    def check(
        self,
        order_id: str = "-",
        symbol: str = "",
        side: str = "",
        qty: int = 0,
        price: float = 0.0,
        source: int = INPROC,
    ) -> Decision:
        """Like `allow()`, with the epoch and the block reason for the gate protocol reply.

        `source` is who asks, for the flight recorder (`core.enforce.recfmt`: LINE, FIX, INPROC).
        """
        if self._open:
            now = self._clock()
            if now < self._deadline:
                if not self._plain:
                    # symbols compare in upper case (scope.canonical_symbol)
                    if self._isolated or (self._symbols and symbol.upper() in self._symbols):
                        return self._refuse(
                            order_id, symbol, side, qty, BlockReason.KILLED.value, price, source
                        )
                    if self._limits is not None and self._limits.check(symbol, qty, price, now):
                        return self._refuse(order_id, symbol, side, qty, LIMIT, price, source)
                self.allowed += 1
                rec = self._rec
                if rec is not None:
                    rec(_ALLOWED[source & 0xFF], order_id, symbol, side, qty, price, self._allow[1])
                return self._allow
        return self._refuse(order_id, symbol, side, qty, "", price, source)

    def cancel(self, order_id: str = "-", ref: str = "", source: int = INPROC) -> int:
        """A cancel reduces risk: always allowed, in every state, and counted apart.

        Returns the epoch for the reply.
        """
        self.cancels += 1
        epoch = self._held or self.view.epoch
        if self._rec is not None:
            self._rec(_CANCELLED[source & 0xFF], order_id, "", "", 0, 0.0, epoch)
        return epoch

    def _refuse(
        self,
        order_id: str,
        symbol: str,
        side: str,
        qty: int,
        reason: str,
        price: float = 0.0,
        source: int = INPROC,
    ) -> Decision:
        self.blocked += 1
        if not reason:
            # An open gate whose lease ran out is stale: no round trip proved the node armed.
            reason = BlockReason.STALE.value if self._open else self._reason
        self.blocked_by[reason] = self.blocked_by.get(reason, 0) + 1
        epoch = self._held or self.view.epoch
        if self._rec is not None:
            self._rec(kind(BLOCK, reason, source), order_id, symbol, side, qty, price, epoch)
        if self._budget is not None and not self._budget.take():
            self._budget.skip(reason)
            return (False, epoch, reason)
        self._log.warning(
            "BLOCK_ORDER",
            node=self.node,
            host=self.host,
            epoch=epoch,
            reason=reason,
            order_id=order_id,
            symbol=symbol,
            side=side,
            qty=qty,
        )
        return (False, epoch, reason)

    def set_recorder(self, rec: Recorder | None) -> None:
        """Record every decision from now on with `rec` (None: stop recording)."""
        self._rec = rec

    @property
    def limits(self) -> LimitChecker | None:
        """The local pre-trade limits this gate enforces (None: none)."""
        return self._limits

    # -- the sync side --------------------------------------------------------------------

    def apply(self, view: HostView, lease_deadline: float) -> None:
        """Enforce `view` until `lease_deadline` (monotonic seconds)."""
        self._held = 0
        if not view.gate_open:
            self._open = False  # close first: a concurrent check() must never see it open
            self.view = view
            self._reason = view.block_reason.value
            return
        self._deadline = lease_deadline
        self.view = view
        self._allow = (True, view.epoch, "")
        self._reason = view.block_reason.value
        self._open = True

    def set_scope(self, isolated: bool, symbols: frozenset[str], ver: int) -> None:
        """Enforce scoped kills: this host killed on its own, and/or symbols killed node-wide
        (compared in upper case, `scope.canonical_symbol`)."""
        self._isolated = isolated
        self._symbols = frozenset(s.upper() for s in symbols)
        self.scope_ver = ver
        self._plain = self._limits is None and not isolated and not symbols

    @property
    def isolated(self) -> bool:
        return self._isolated

    @property
    def killed_symbols(self) -> frozenset[str]:
        return self._symbols

    def close(self) -> None:
        """Close until the next authoritative read (on shutdown)."""
        self._open = False

    def hold(self, epoch: int) -> bool:
        """A kill notice for `epoch` arrived: block now, as killed, until the next read applies.

        Closing is always safe, so a notice is trusted this far: it blocks, and the next
        authoritative read replaces it. Returns False for a notice older than what was seen,
        and for an absurd epoch no script could write exactly: remembered, it would block this
        host for good, since no arm could then take an epoch above it.
        """
        if epoch < self.view.max_epoch or epoch > MAX_EPOCH:
            return False  # an old notice (or a forged one) is not even worth a hold
        self._open = False
        self._held = epoch
        self._reason = BlockReason.KILLED.value
        return True

    @property
    def held(self) -> int:
        """The epoch of a kill notice the gate is holding for (0: none)."""
        return self._held

    def status(self) -> tuple[NodeState, int]:
        """What PING reports: the enforced state (STALE once the lease ran out) and epoch."""
        if self._held:
            return NodeState.KILLED, self._held
        if self._open and self._clock() >= self._deadline:
            return NodeState.STALE, self.view.epoch
        if self._open:
            return (NodeState.KILLED if self._isolated else NodeState.ARMED), self.view.epoch
        return self.view.state, self.view.epoch

    @property
    def is_open(self) -> bool:
        return self._open and not self._isolated and self._clock() < self._deadline

    def lease_left(self) -> float:
        return max(0.0, self._deadline - self._clock()) if self._open else 0.0
