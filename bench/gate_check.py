"""The in-process gate check, per order, against one Redis round trip per order; and what
verifying a signed arm costs a host (once per new arm, never per order)."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from killswitch.core.armproof import ArmRequest, Proof, gate_refusal, verify_proof
from killswitch.core.gate import Gate
from killswitch.core.limits import Limit, Limits
from killswitch.core.sshsig import parse_allowed_signers
from killswitch.core.state import HostView, NodeState
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import make_key, signer_line

N = 2_000_000


def _per_call_ns(fn: object, n: int = N, repeats: int = 5) -> float:
    best = float("inf")
    f = fn  # local for the loop
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        for _ in range(n):
            f()  # type: ignore[operator]
        best = min(best, (time.perf_counter_ns() - t0) / n)
    return best


async def _redis_rtt_us(url: str, n: int = 5000) -> float:
    r = Redis.from_url(url)
    try:
        await r.ping()
        t0 = time.perf_counter()
        for _ in range(n):
            await r.incr("bench:rl")
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        await r.aclose()


def _verify_us(key_type: str, n: int = 300) -> float:
    """Microseconds to verify one two-signature proof made by `key_type` keys."""
    with tempfile.TemporaryDirectory() as d:
        keys = {w: make_key(Path(d) / w, w, key_type) for w in ("alice", "bob")}
        ops = parse_allowed_signers("".join(signer_line(w, k) for w, k in keys.items()))
        boots = (("h1", "b0" * 8), ("h2", "b1" * 8))
        msg = ArmRequest("bench", 1, 1, 2, ("h1", "h2"), "bench", 2**40, boots=boots).encode()
        sigs = tuple(
            subprocess.run(
                ["ssh-keygen", "-q", "-Y", "sign", "-n", "killswitch", "-f", str(k)],
                input=msg, capture_output=True, check=True,
            ).stdout.decode()
            for k in keys.values()
        )  # fmt: skip
        text = Proof(msg, sigs).to_text()
        assert gate_refusal(verify_proof(ops, text), "bench", "h1", 2) == ("", "")
        t0 = time.perf_counter()
        for _ in range(n):
            verify_proof(ops, text)
        return (time.perf_counter() - t0) / n * 1e6


def run() -> dict[str, float]:
    gate = Gate("bench", "h1")
    gate.apply(HostView(1, NodeState.ARMED, NodeState.ARMED, 1, 1), time.monotonic() + 3600)
    allow = gate.allow
    check = gate.check
    empty = _per_call_ns(lambda: None)
    # Limits on: every kind set, one symbol override, and a rate the run never reaches, so
    # every order walks the whole check (qty, notional, bucket refill) and is allowed.
    limits = Limits(
        Limit(max_qty=1_000_000, max_notional=1e12, max_orders_per_s=1e12),
        {"ES": Limit(max_qty=10, max_notional=1e12, max_orders_per_s=1e12)},
    )
    lgate = Gate("bench", "h1", limits=limits)
    lgate.apply(HostView(1, NodeState.ARMED, NodeState.ARMED, 1, 1), time.monotonic() + 3600)
    lcheck = lgate.check
    lallow = lgate.allow

    def check_args() -> object:
        return check("o-1", "AAPL", "BUY", 100, 187.5)

    def lcheck_args() -> object:
        return lcheck("o-1", "AAPL", "BUY", 100, 187.5)

    def lcheck_sym() -> object:
        return lcheck("o-1", "ES", "BUY", 5, 5000.25)

    def lallow_args() -> object:
        return lallow("o-1", "AAPL", "BUY", 100, 187.5)

    wrap = _per_call_ns(lambda: check_args)  # the cost of the wrapper itself, for subtraction
    res = {
        "allow_ns": round(_per_call_ns(allow), 1),
        "check_ns": round(_per_call_ns(check), 1),
        "check_with_order_args_limits_off_ns": round(_per_call_ns(check_args) - wrap, 1),
        "check_limits_on_ns": round(_per_call_ns(lcheck_args) - wrap, 1),
        "check_limits_on_symbol_override_ns": round(_per_call_ns(lcheck_sym) - wrap, 1),
        "allow_limits_on_ns": round(_per_call_ns(lallow_args) - wrap, 1),
        "empty_call_ns": round(empty, 1),
        "orders_checked": gate.allowed + lgate.allowed,
        "limit_refusals": lgate.blocked,
    }
    with EmbeddedRedis() as server:
        res["redis_incr_roundtrip_us"] = round(asyncio.run(_redis_rtt_us(server.url)), 1)
    for key_type in ("ed25519", "ecdsa", "rsa"):
        res[f"verify_arm_proof_{key_type}_us"] = round(_verify_us(key_type), 1)
    return res
