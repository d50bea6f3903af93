"""The operator verbs: `kill`, `arm`/`resume`, `status` and `audit` (each a plain function of
`ops` run over a store, its outcome printed as text or JSON), plus `watch` and `export`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from killswitch.cli.exits import fail
from killswitch.cli.transport import FAST_VERBS, lean_url, with_lean_store, with_store
from killswitch.core.node.names import check_roster
from killswitch.core.settings.options import to_ms
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Outcome
from killswitch.runtime.config import ConfigError, Resolver


def run_watch(r: Resolver, node: str, redis_url: str) -> int:
    import asyncio

    from killswitch.cli.watch import watch

    return asyncio.run(watch(redis_url, node, interval=r.get("interval"), once=r.get("once")))


def _scope(r: Resolver) -> tuple[str, str] | None:
    """The scope flag of kill/arm, read from the flags only: a scope is never a default."""
    host, symbol = r.get("host"), r.get("symbol")  # both flags only
    if host:
        return ("host", host)
    if symbol:
        from killswitch.core.node.scope import canonical_symbol

        return ("symbol", canonical_symbol(symbol))
    return None


def run_export(r: Resolver, node: str, redis_url: str) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from killswitch.cli import rulecli

    try:
        flows = asyncio.run(rulecli.export_flows(redis_url, node, r.get("hosts")))
    except (RedisError, OSError) as e:
        from killswitch.store.redisconn import classify

        return fail("export", classify(e).line(redis_url), EXIT_FAILED)
    sys.stdout.write(rulecli.counts_csv(flows, attempted=r.get("attempted")))
    return EXIT_OK


def run_operator(cmd: str, r: Resolver, node: str, redis_url: str, as_json: bool) -> int:
    from killswitch.cli import render
    from killswitch.ops import control

    action: Callable[[Any], Awaitable[Outcome]]
    # The node's liveness bound: the same setting as the sidecars' --stale-after, so one
    # config file (or KILLSWITCH_STALE_AFTER) sets both; a host's own claim never widens it.
    alive_ms = to_ms(r.get("stale-after")) if cmd != "audit" else 0
    scope = _scope(r) if cmd in ("kill", "arm", "resume") else None
    if cmd == "kill":
        reason = r.require("reason", hint=" (say why: it is audited)")
        operator = r.get("operator") or os.environ.get("USER") or "unknown"
        timeout = r.get("timeout")
        kill_key = r.get("key") or ""
        ops_path = (r.get("operators") or "") if kill_key else ""
        net_fence = bool(r.get("fence"))  # flags only: never a default
        if net_fence and scope is not None:
            raise ConfigError("--fence is for a kill of the whole node, not a scoped kill")

        who, note, fingerprint = operator, "", ""
        if kill_key:
            # Signed here, before the Redis work: the lean transport that runs kill has no
            # event loop, and signing (a subprocess, at most 2 s) needs one.
            import asyncio

            from killswitch.ops import arming

            who, note, fingerprint = asyncio.run(
                arming.kill_actor(node, kill_key, ops_path, operator, reason)
            )

        async def action(s: Any) -> Outcome:
            if scope is not None:
                from killswitch.ops.scope import kill_scope

                out = await kill_scope(
                    s, kind=scope[0], value=scope[1], reason=reason, operator=who,
                    timeout=timeout,
                )  # fmt: skip
            else:
                out = await control.kill(
                    s, reason=reason, operator=who, timeout=timeout, alive_ms=alive_ms,
                    fence=net_fence, actor_kind="signed" if fingerprint else "claimed",
                    key=fingerprint,
                )  # fmt: skip
            out.report["signed_by"] = who if kill_key and not note else ""
            if note:
                out.message = f"{note}\n{out.message}".rstrip()
            return out

    elif cmd in ("arm", "resume"):
        from killswitch.ops import arming
        from killswitch.runtime.operators import load_operators

        if r.get("approver"):
            raise ConfigError(
                "approver: --approver is gone: approvals are signatures now. Each operator runs "
                "`killswitch arm --key PATH-TO-THEIR-SSH-KEY` (with --operators naming the "
                "operators file); the second distinct operator's call arms the node"
            )
        # Out-of-range numbers were refused up front: no key or file is read for a call that fails.
        expires, timeout = r.get("expires"), r.get("timeout")
        key = r.require("key", hint=" (your SSH key: arming is signed)")
        operators = load_operators(
            r.require("operators", hint=" (the operators' allowed-signers file)")
        )
        roster_arg = r.get("roster")
        roster = check_roster(roster_arg) if roster_arg else None
        reason_arg: str | None = r.get("reason")

        def action(s: Any) -> Awaitable[Outcome]:
            if scope is not None:
                from killswitch.ops.scope import arm_scope

                return arm_scope(
                    s, kind=scope[0], value=scope[1], key=key, operators=operators,
                    reason=reason_arg, expires_s=expires, timeout=timeout,
                )  # fmt: skip
            return arming.arm(
                s, key=key, operators=operators, roster=roster, reason=reason_arg,
                expires_s=expires, timeout=timeout, alive_ms=alive_ms,
            )  # fmt: skip

    elif cmd == "rollout":
        from killswitch.cli import rolloutcli

        action = rolloutcli.action(r, alive_ms)
    elif cmd == "forget":
        from killswitch.cli import forgetcli

        action = forgetcli.action(r, alive_ms)
    elif cmd == "status":

        def action(s: Any) -> Awaitable[Outcome]:
            return control.status(s, alive_ms=alive_ms)

    elif cmd == "audit":
        from killswitch.ops import audit

        limit, audit_file = r.get("limit"), r.get("file")
        if r.get("verify"):

            def action(s: Any) -> Awaitable[Outcome]:
                return audit.verify(s, audit_file)

        else:

            def action(s: Any) -> Awaitable[Outcome]:
                return audit.audit(s, limit)

    else:  # pragma: no cover - argparse restricts the verbs
        raise ConfigError(f"unknown command {cmd}")
    # An operator command never hangs: its own wait plus a margin for Redis round trips.
    budget = (
        r.get("timeout") + (135.0 if cmd != "kill" else 15.0)
        if cmd in ("kill", "arm", "resume")
        else 15.0
    )
    lean = lean_url(redis_url) if cmd in FAST_VERBS else None
    if lean is not None:
        outcome = with_lean_store(lean, redis_url, node, action, budget)
    else:
        import asyncio

        outcome = asyncio.run(with_store(redis_url, node, action, budget))
    if outcome.code in (EXIT_FAILED, EXIT_USAGE) and not outcome.report:
        print(outcome.message, file=sys.stderr)
        return outcome.code
    if outcome.code == EXIT_USAGE:
        print(f"killswitch {cmd}: {outcome.message}", file=sys.stderr)
        return outcome.code
    if as_json:
        print(json.dumps(outcome.report, sort_keys=False))
        if outcome.message:  # stdout stays one JSON object; what a human must read goes here
            print(outcome.message, file=sys.stderr)
    elif cmd == "rollout":
        from killswitch.cli import rolloutcli

        print(rolloutcli.human(outcome))
    elif cmd == "forget":
        from killswitch.view.text import safe_text

        print(safe_text(outcome.message.split("\n")))
    else:
        print(render.human(cmd, outcome))
    return outcome.code
