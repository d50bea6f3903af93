"""The demo's deploy: seven hosts get the new build, the eighth keeps the old binary.

Knight's 1 August 2012 began here: the reused flag file means "RLP" to the new build and
"Power Peg" to the old one. With attestation the 09:30 open is refused, naming that host;
the demo then makes the host report its peers' release (what a fleet without `--attest`
sees) so the replay shows what the volume monitor alone does.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from redis.asyncio import Redis

from killswitch.ops import control
from killswitch.sim.fleet import Fleet, wait_until
from killswitch.sim.operators import two_person_arm
from killswitch.store.store import Store

ATTEST = ("bin/smars-router", "etc/flags.toml")
NEW_BUILD = b"smars router, build of 2012-08-01 (RLP)\n"
OLD_BUILD = b"smars router, build of 2003 (Power Peg behind the same flag)\n"
FLAGS = "# the flag reused for RLP: the old build reads it as Power Peg\nrlp = true\n"


def install(fleet: Fleet, old_host: str) -> None:
    """Every host gets the new build and the flag file; `old_host` keeps the old binary."""
    for h in fleet.hosts:
        d = fleet.release_dir(h)
        (d / "bin").mkdir(exist_ok=True)
        (d / "etc").mkdir(exist_ok=True)
        (d / "bin" / "smars-router").write_bytes(OLD_BUILD if h == old_host else NEW_BUILD)
        (d / "etc" / "flags.toml").write_text(FLAGS)


def wait_releases(fleet: Fleet, node: str, count: int, timeout: float = 30.0) -> None:
    """Wait until every roster host attested and `count` releases are reported."""

    async def check() -> bool:
        redis = Redis.from_url(fleet.redis_url, decode_responses=True)
        try:
            rep = (await control.status(Store(redis, node))).report
        finally:
            await redis.aclose()
        hosts = rep["hosts"].values()
        attested = all(s["release"] and not s["attest"] for s in hosts)
        return attested and len(rep["releases"]) == count

    wait_until(lambda: asyncio.run(check()), timeout, 0.05, f"{count} release(s) reported")


def refused_open(fleet: Fleet, node: str) -> dict[str, Any]:
    """The two-person arm at the open, on the split fleet: refused (exit 4), naming the host."""

    async def attempt() -> control.Outcome:
        redis = Redis.from_url(fleet.redis_url, decode_responses=True)
        try:
            return await two_person_arm(Store(redis, node), fleet.ops, reason="09:30 open")
        finally:
            await redis.aclose()

    out = asyncio.run(attempt())
    return {
        "code": out.code,
        "refused": out.report.get("refused"),
        "split": out.report.get("release_split"),
        "message": out.message.splitlines()[0] if out.message else "",
    }


def refused_line(refused: dict[str, Any]) -> str:
    """The open's refusal in one line that names the odd hosts (the message's first line
    ends in a colon before the host list)."""
    odd = ", ".join(sorted(refused.get("refused") or {})) or "?"
    return f"the 09:30 open: refused (exit {refused['code']}), release split: {odd} runs another release"


def attestation_off(fleet: Fleet, node: str, host: str) -> None:
    """Make `host` report its peers' release, as if no host attested anything."""
    (fleet.release_dir(host) / "bin" / "smars-router").write_bytes(NEW_BUILD)
    fleet.sidecars[host].send(signal.SIGHUP)
    wait_releases(fleet, node, 1)


def table_lines(att: dict[str, Any] | None) -> list[str]:
    if not att:
        return []
    odd = ", ".join(f"{h} ({r[:25]}...)" for h, r in sorted((att.get("refused") or {}).items()))
    return [
        f"With attestation (--attest on every sidecar): the 09:30 open was refused (exit "
        f"{att['code']}), {odd}; the node never opens.",
        "Attestation switched off below (or-08 made to report its peers' release): what the "
        "volume monitor alone does.",
        "",
    ]
