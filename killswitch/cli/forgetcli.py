"""`killswitch forget`: its flags and the plain function it calls (`ops.forget`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from typing import Any

from killswitch.ops.control import Outcome
from killswitch.runtime.config import ConfigError, Resolver, host_name
from killswitch.runtime.validate import bounded

HELP = (
    "Remove what was left behind. `--host H`: the keys an off-roster host left in Redis "
    "(audited; refused, 4, for a roster host or one still reporting). `--key K` (with "
    "--node): remove the node from the fleet registry, signed by two operators like arm: the "
    "first call exits 5 (pending), a second, distinct operator's call completes it (0); a key "
    "not in the operators file is refused (4), and so is a node that is still alive. Nothing "
    "else removes a node from what `kill --fleet` covers."
)


def add_parser(
    cmd: Callable[[str, str, Any], argparse.ArgumentParser], parents: Any
) -> argparse.ArgumentParser:
    f = cmd("forget", HELP, parents)
    f.add_argument("--host", dest="forget_host", metavar="HOST", help="an off-roster host")
    f.add_argument(
        "--key", metavar="PATH",
        help="your SSH private key (or its .pub with ssh-agent): forget the node (--node), "
        "two-person (env KILLSWITCH_KEY)",
    )  # fmt: skip
    f.add_argument("--reason", metavar="TEXT", help="why (audited; signed with --key)")
    f.add_argument("--operator", metavar="NAME", help="with --host: who (default $USER)")
    f.add_argument(
        "--expires", type=float, metavar="S",
        help="a new forget --node request expires after this many seconds (default 600)",
    )  # fmt: skip
    return f


def action(r: Resolver, alive_ms: int) -> Callable[[Any], Awaitable[Outcome]]:
    """The plain function `forget` runs with the given flags (bad flags: ConfigError)."""
    from killswitch.ops import forget

    host = r.flags.get("forget_host")
    key = r.flags.get("key") or ""
    reason: str | None = r.get("reason", None, str)
    if host and key:
        raise ConfigError("forget: give --host H (an off-roster host) or --key K (the node)")
    if host:
        checked = host_name(host)
        actor = r.get("operator", os.environ.get("USER") or "unknown", str)

        def run_host(s: Any) -> Awaitable[Outcome]:
            return forget.forget_host(
                s, host=checked, actor=actor, reason=reason or "", alive_ms=alive_ms
            )

        return run_host
    key = key or r.get("key", "", str)
    if not key:
        raise ConfigError("forget: give --host H, or --key K to forget the node (two-person)")
    expires = r.get("expires", forget.DEFAULT_EXPIRES_S, bounded("expires"))
    from killswitch.runtime.operators import load_operators

    operators = load_operators(
        r.require("operators", str, " (the operators' allowed-signers file)")
    )

    def run_node(s: Any) -> Awaitable[Outcome]:
        return forget.forget_node(
            s, key=key, operators=operators, reason=reason, expires_s=expires, alive_ms=alive_ms
        )

    return run_node
