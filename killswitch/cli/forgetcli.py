"""`killswitch forget`: the plain function it calls (`ops.forget`), from the verb's settings
(`core.settings.options`)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from killswitch.ops.control import Outcome
from killswitch.runtime.config import ConfigError, Resolver


def action(r: Resolver, alive_ms: int) -> Callable[[Any], Awaitable[Outcome]]:
    """The plain function `forget` runs with the given flags (bad flags: ConfigError)."""
    from killswitch.ops import forget

    host = r.get("host")
    key = r.get("key") or ""
    reason: str | None = r.get("reason")
    if host and (r.source("key") or ("",))[0] == "flag":  # a KILLSWITCH_KEY is no choice
        raise ConfigError("forget: give --host H (an off-roster host) or --key K (the node)")
    if host:
        actor = r.get("operator") or os.environ.get("USER") or "unknown"

        def run_host(s: Any) -> Awaitable[Outcome]:
            return forget.forget_host(
                s, host=host, actor=actor, reason=reason or "", alive_ms=alive_ms
            )

        return run_host
    if not key:
        raise ConfigError("forget: give --host H, or --key K to forget the node (two-person)")
    expires = r.get("expires")
    from killswitch.runtime.operators import load_operators

    operators = load_operators(
        r.require("operators", hint=" (the operators' allowed-signers file)")
    )

    def run_node(s: Any) -> Awaitable[Outcome]:
        return forget.forget_node(
            s, key=key, operators=operators, reason=reason, expires_s=expires, alive_ms=alive_ms
        )

    return run_node
