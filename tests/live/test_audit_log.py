"""The aggregator's local JSONL copy of the audit chain: it verifies on its own, and it
shows when Redis lost or rewrote the trail it copied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import redis as redis_sync
import structlog
from redis.asyncio import Redis

from killswitch.aggregator.auditlog import AuditMirror
from killswitch.core.proof import auditchain
from killswitch.ops import audit as ops_audit
from killswitch.ops.control import EXIT_OK, EXIT_REFUSED
from killswitch.sim.embedded import free_port
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store
from kstest import Proc, wait_until
from tests.live.test_ha import metric


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


async def _changes(store: Store, ops: OperatorKeys) -> None:
    await store.set_roster(["h1"], "test")
    await store.kill(actor="alice", reason="one", cause="operator", floor=0)
    await signed_store_arm(store, ops, reason="two", roster=["h1"])


class TestMirror:
    """AuditMirror copies the chain, resumes after a restart, and records breaks."""

    async def test_copy_verifies_and_matches_redis(
        self, operator_keys: OperatorKeys, redis: Redis, node: str, tmp_path: Path
    ) -> None:
        """Every entry is copied once (also across a restart) and the file verifies."""
        store = Store(redis, node)
        path = tmp_path / "audit.jsonl"
        await _changes(store, operator_keys)
        assert await AuditMirror(store, str(path), structlog.get_logger()).sync() == 3
        await store.kill(actor="carol", reason="three", cause="operator", floor=0)
        again = AuditMirror(store, str(path), structlog.get_logger())  # a restarted aggregator
        assert await again.sync() == 1
        assert len(path.read_text().splitlines()) == 4
        verdict, entries = ops_audit.verify_file(str(path))
        assert verdict.ok and len(entries) == 4
        assert (await ops_audit.verify(store, str(path))).code == EXIT_OK

    async def test_wiped_redis_is_caught_by_the_copy(
        self, operator_keys: OperatorKeys, redis: Redis, node: str, tmp_path: Path
    ) -> None:
        """After Redis loses the whole trail (stream and head), the file still holds it and
        `verify --file` exits 4 naming the break and the entries Redis no longer has."""
        store = Store(redis, node)
        path = tmp_path / "audit.jsonl"
        mirror = AuditMirror(store, str(path), structlog.get_logger())
        await _changes(store, operator_keys)
        await mirror.sync()
        await redis.delete(store.keys.audit, store.keys.audit_head)
        await store.kill(actor="sre", reason="after the wipe", cause="operator", floor=0)
        await mirror.sync()
        assert mirror.breaks == 1
        out = await ops_audit.verify(store, str(path))
        assert out.code == EXIT_REFUSED
        assert out.report["redis"]["ok"] is True  # a fresh chain looks whole on its own
        assert out.report["file"]["ok"] is False and "line 4" in out.report["file"]["problem"]
        assert out.report["file"]["not_in_redis"] == [1, 2, 3]

    async def test_edited_file_fails(
        self, operator_keys: OperatorKeys, redis: Redis, node: str, tmp_path: Path
    ) -> None:
        """Changing one reason in the copy is named as an altered entry."""
        store = Store(redis, node)
        path = tmp_path / "audit.jsonl"
        await _changes(store, operator_keys)
        await AuditMirror(store, str(path), structlog.get_logger()).sync()
        lines = path.read_text().splitlines()
        obj = json.loads(lines[1])
        obj["fields"] = [[k, "edited" if k == "reason" else v] for k, v in obj["fields"]]
        lines[1] = json.dumps(obj)
        path.write_text("\n".join(lines) + "\n")
        verdict, _ = ops_audit.verify_file(str(path))
        assert not verdict.ok and verdict.bad_index == 1 and "altered" in verdict.problem


class TestAggregatorProcess:
    """The real aggregator process writes the copy given by --audit-log."""

    def test_aggregator_writes_and_cli_verifies(
        self, redis_url: str, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """The roster entry appears in the file; `audit --verify --file` exits 0 on it."""
        path = tmp_path / "agg-audit.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
        proc = subprocess.Popen(
            [sys.executable, "-m", "killswitch", "aggregator", "--node", node, "--redis",
             redis_url, "--hosts", "h1,h2", "--audit-log", str(path),
             "--operators", str(operator_keys.file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        try:
            wait_until(lambda: path.exists() and "roster" in path.read_text(), 30, 0.05, "copy")
        finally:
            proc.terminate()
            proc.wait(10)
        res = cli("audit", "--verify", "--file", str(path), "--node", node, "--redis", redis_url)
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"file {path}: chain whole, 1 entries" in res.stdout


class TestChainOkMetric:
    """A live aggregator exports whether its copy and Redis agree."""

    def test_rewritten_entry_turns_the_metric_to_0(
        self, redis_url: str, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """killswitch_audit_chain_ok is 1 once the roster entry is copied, and 0 after that
        entry is rewritten in Redis with its hash recomputed (AUDIT_CHAIN_DISAGREES logged)."""
        path, port = tmp_path / "agg-audit.jsonl", free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
        agg = Proc("aggregator", [
            sys.executable, "-m", "killswitch", "aggregator", "--node", node, "--redis",
            redis_url, "--hosts", "h1,h2", "--audit-log", str(path), "--operators",
            str(operator_keys.file), "--metrics-port", str(port), "--log-format", "json",
        ], tmp_path / "agg.log")  # fmt: skip
        agg.start(env)
        r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
        try:
            wait_until(lambda: path.exists() and "roster" in path.read_text(), 30, 0.05, "copy")
            wait_until(lambda: metric(port, "killswitch_audit_chain_ok", node=node) == 1.0, 30)
            audit = NodeKeys(node).audit
            [(entry_id, fields)] = r.xrange(audit)
            forged = {**fields, "actor": "mallory"}
            own = [(k, v) for k, v in forged.items() if k not in auditchain.CHAIN_FIELDS]
            forged["hash"] = auditchain.entry_hash(forged["seq"], forged["prev"], own)
            r.delete(audit)
            r.xadd(audit, forged, id=entry_id)
            r.hset(NodeKeys(node).audit_head, "hash", forged["hash"])
            wait_until(lambda: metric(port, "killswitch_audit_chain_ok", node=node) == 0.0, 30)
            assert agg.logged("AUDIT_CHAIN_DISAGREES")
        finally:
            r.close()
            agg.stop()
