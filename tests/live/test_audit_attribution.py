"""Audit attribution through the real CLI and a real sidecar: every entry says how its actor is known (`signed`
with the key's SHA256 fingerprint, `claimed`, `service`), and a refused arm names the key
that was presented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from redis.asyncio import Redis

from killswitch.sim.operators import OperatorKeys, make_key
from killswitch.store.store import Store
from kstest import Fleet, wait_until


def cli(
    redis_url: str, node: str, ops: OperatorKeys, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    env.update(KILLSWITCH_REDIS_URL=redis_url, KILLSWITCH_NODE=node,
               KILLSWITCH_OPERATORS=str(ops.file))  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    return out.stdout.split()[1]


class TestAttribution:
    """A signed kill and `--operator alice` no longer read the same; refusals name the key."""

    async def test_signed_claimed_service_and_refused(
        self, redis_url: str, redis: Redis, node: str, operator_keys: OperatorKeys, tmp_path: Path
    ) -> None:
        """kill --key alice: signed + alice's fingerprint; kill --operator alice: claimed, no
        key; an aggregator's kill: service; arm with a key outside the file: refused, with
        that key's fingerprint."""
        ops = operator_keys
        await Store(redis, node).set_roster(["h1"], "aggregator:test")
        f = Fleet(redis_url, node, ["h1"], operators=ops)
        try:
            f.start()
            wait_until(f.ready, 30, 0.05, "h1 alive")
            refused = cli(redis_url, node, ops, "arm", "--key", str(make_key(tmp_path / "m", "m")))
        finally:
            f.stop()
        assert refused.returncode == 4, refused
        kill = ("kill", "--timeout", "0.1", "--reason")
        assert cli(redis_url, node, ops, *kill, "signed", "--key", ops.key("alice")).returncode == 3
        assert cli(redis_url, node, ops, *kill, "claimed", "--operator", "alice").returncode == 3
        await Store(redis, node).kill(actor="aggregator:a1", reason="trip", cause="max_orders",
                                      floor=0, action="trip")  # fmt: skip
        out = cli(redis_url, node, ops, "audit", "--json")
        entries = {
            e["reason"] or e.get("refused", ""): e for e in json.loads(out.stdout)["entries"]
        }
        signed, claimed = entries["signed"], entries["claimed"]
        assert (signed["actor"], signed["actor_kind"]) == ("alice", "signed")
        assert signed["key"] == fingerprint(Path(ops.key("alice") + ".pub"))
        assert (claimed["actor"], claimed["actor_kind"]) == ("alice", "claimed")
        assert "key" not in claimed
        assert entries["trip"]["actor_kind"] == "service"
        bad = entries["signature refused"]
        assert bad["action"] == "refused" and bad["actor_kind"] == "claimed"
        assert bad["key"] == fingerprint(tmp_path / "m.pub")
