"""`killswitch rollout`: its flags, the plain function it calls, and its human output.

Parsing only: the steps and their checks are `ops.rollout`; what `status` shows of a
rollout is `rollout_lines` here, used by `status` and `watch` too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from killswitch.core.node.names import check_roster
from killswitch.ops.control import EXIT_OK, Outcome
from killswitch.runtime.config import ConfigError, Resolver
from killswitch.view.text import escape, safe_text


def action(r: Resolver, alive_ms: int) -> Callable[[Any], Awaitable[Outcome]]:
    """The plain function `rollout` runs with the given flags (bad flags: ConfigError)."""
    from killswitch.ops import rollout as ops

    release: str | None = r.get("release")
    promote, abort = r.get("promote"), r.get("abort")
    # flags only: KILLSWITCH_HOSTS and a config's `hosts` are the aggregator's proposal
    hosts_arg = r.get("hosts")
    if hosts_arg and not release:
        raise ConfigError("hosts: --hosts names the canary of a new rollout: give --release too")
    if release is not None:
        if len(release) != 64 or any(c not in "0123456789abcdef" for c in release):
            raise ConfigError("release: must be a release digest (64 lowercase hex digits)")
        if not hosts_arg:
            raise ConfigError("hosts: a rollout names its canary hosts: --hosts H1,H2,...")
    hosts = check_roster(hosts_arg) if hosts_arg else None
    expires = r.get("expires")
    key = r.get("key") or ""
    step = "begin" if release else "promote" if promote else "abort" if abort else ops.SIGN
    if not key:
        if release or promote or abort:
            raise ConfigError("key: every rollout step is signed: give --key PATH")
        return ops.show
    from killswitch.runtime.operators import load_operators

    operators = load_operators(
        r.require("operators", hint=" (the operators' allowed-signers file)")
    )
    reason: str | None = r.get("reason")

    def run(s: Any) -> Awaitable[Outcome]:
        return ops.rollout(
            s, step=step, key=key, operators=operators, release=release, hosts=hosts,
            reason=reason, expires_s=expires, alive_ms=alive_ms,
        )  # fmt: skip

    return run


def human(outcome: Outcome) -> str:
    rep = outcome.report
    lines = [] if outcome.code == EXIT_OK else [outcome.message]
    lines.extend(rollout_lines(rep, full=True))
    releases: Mapping[str, list[str]] = rep.get("releases") or {}
    for digest, hosts in releases.items():
        lines.append(f"  release {digest[:12]}: {','.join(hosts)}")
    if outcome.code == EXIT_OK and outcome.message:
        lines.append(outcome.message)
    return safe_text([part for line in lines if line for part in line.split("\n")])


def rollout_lines(rep: Mapping[str, Any], full: bool = False) -> list[str]:
    """What `status` (and `rollout`) shows of the node's rollout: one line while one runs."""
    ro = rep.get("rollout")
    if not isinstance(ro, dict):
        return [f"node {rep.get('node')}: no rollout"] if full else []
    phase = ro.get("phase", "none")
    out = []
    who = "; ".join(f"{s} by {'+'.join(p)}" for s, p in (ro.get("signed_by") or {}).items())
    change = f"{str(ro.get('from'))[:12]} -> {str(ro.get('to'))[:12]}"
    if phase in ("canary", "promoted"):
        where = "every host" if phase == "promoted" else ",".join(ro.get("hosts") or [])
        verified = ""
        if ro.get("verified") is False:
            verified = f"  NOT HONOURED by the aggregator ({ro.get('refusal') or 'not verified'})"
        out.append(
            f"ROLLOUT {ro.get('seq')} {phase.upper()}: {change} on {where or '-'} "
            f"({who or 'unsigned'}){verified}"
        )
    elif full and phase in ("complete", "aborted"):
        out.append(f"last rollout {ro.get('seq')} {phase}: {change} ({who})")
    elif full:
        out.append(f"node {rep.get('node')}: no rollout in progress")
    if full and ro.get("approved"):
        out.append(f"approved release: {ro['approved'][:12]}")
    pending = ro.get("pending")
    if isinstance(pending, dict):
        out.append(
            f"PENDING ROLLOUT {pending.get('step')} by {pending.get('by')} until "
            f"{pending.get('expires_at')}; a second, distinct operator completes it with "
            "`killswitch rollout --key THEIR-KEY`"
        )
    return [escape(line) for line in out]  # every field was read from Redis
