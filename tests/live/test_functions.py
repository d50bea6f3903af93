"""The sidecar's round trip is a pre-loaded Redis Function (FCALL), never EVAL: with its library
missing, or loaded only in another version, a sidecar blocks with the reason named (log,
`/healthz`, `status`), tries again every round and recovers once an aggregator loads it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_sync
from redis.asyncio import Redis
from structlog.testing import capture_logs

from killswitch.sidecar.functions import FIELD
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.keys import NodeKeys
from killswitch.store.redisconn import connect
from killswitch.store.scripts import Library, library_loaded, load_library, sidecar_library
from killswitch.store.store import Store
from kstest import Fleet, wait_until, wait_until_async
from kstest.sentinel import SentinelCluster

HOST = "or-01"
HOSTS = ["or-01", "or-02"]
OTHER = "killswitch_0123456789abcdef"  # a library of another version


def other_version() -> Library:
    """The same functions under another version's names (what an older or newer release of
    killswitch would have loaded)."""
    lib = sidecar_library()
    return Library(OTHER, lib.code.replace(lib.name, OTHER))


def eval_calls(client: redis_sync.Redis) -> int:
    """EVAL, EVALSHA and SCRIPT calls the server has served since its stats were reset."""
    stats: Any = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.split("|")[0] in (
        "cmdstat_eval", "cmdstat_evalsha", "cmdstat_eval_ro", "cmdstat_evalsha_ro",
        "cmdstat_script"))  # fmt: skip


@pytest.fixture
async def server_client(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def armed_sidecar(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
) -> Sidecar:
    """A started, armed sidecar whose gate is open (its logger captured by the caller)."""
    settings = SidecarSettings(
        node=node, host=HOST, redis_url="", flush_interval=0.05, stale_after=1.0,
        state_dir=str(tmp_path), operators=str(operator_keys.file),
    )  # fmt: skip
    sc = Sidecar(settings, redis)
    await signed_store_arm(
        Store(redis, node), operator_keys, reason="open", roster=[HOST], boots={HOST: sc.boot_id}
    )
    await sc.start()
    await wait_until_async(lambda: sc.gate.is_open, 10)
    return sc


class TestSidecarInProcess:
    """A real sidecar's sync loop on a real redis-server that loses its library."""

    async def test_missing_library_blocks_with_its_name_and_no_eval(
        self, server_client: Redis, own_redis: EmbeddedRedis, node: str, tmp_path: Path,
        operator_keys: OperatorKeys,
    ) -> None:  # fmt: skip
        """Library deleted: the gate closes, the log, /healthz and the report name the library,
        no EVAL is sent; loaded again: the gate reopens and the reason is cleared."""
        lib = sidecar_library()
        with capture_logs() as logs:
            sc = await armed_sidecar(server_client, node, tmp_path, operator_keys)
            try:
                admin = redis_sync.Redis(port=own_redis.port, decode_responses=True)
                admin.config_resetstat()
                admin.function_delete(lib.name)
                await wait_until_async(lambda: not sc.gate.is_open, 10)
                await wait_until_async(lambda: sc.functions.rounds >= 3, 10)  # retried
                assert lib.name in sc.problem()
                report = await server_client.hgetall(
                    Store(server_client, node).keys.host(HOST).report
                )
                assert lib.name in report[FIELD]
                assert eval_calls(admin) == 0
                missing = [e for e in logs if e["event"] == "FUNCTIONS_MISSING"]
                assert missing and missing[0]["library"] == lib.name

                await load_library(server_client, lib)
                await wait_until_async(lambda: sc.gate.is_open, 10)
                assert sc.problem() == "" and sc.functions.rounds == 0
                await wait_until_async(
                    lambda: admin.hget(Store(server_client, node).keys.host(HOST).report, FIELD)
                    == "", 10)  # fmt: skip
                assert [e for e in logs if e["event"] == "FUNCTIONS_FOUND"]
                assert eval_calls(admin) == 0
                admin.close()
            finally:
                await sc.stop()

    async def test_a_library_of_another_version_is_not_used(
        self, server_client: Redis, own_redis: EmbeddedRedis, node: str, tmp_path: Path,
        operator_keys: OperatorKeys,
    ) -> None:  # fmt: skip
        """With only another version's library loaded, the sidecar blocks naming its own
        version, and nothing runs its round trip (the host's report is never written)."""
        lib = sidecar_library()
        admin = redis_sync.Redis(port=own_redis.port, decode_responses=True)
        try:
            admin.function_delete(lib.name)
            await load_library(server_client, other_version())
            settings = SidecarSettings(
                node=node, host=HOST, redis_url="", flush_interval=0.05, stale_after=1.0,
                state_dir=str(tmp_path), operators=str(operator_keys.file),
            )  # fmt: skip
            sc = Sidecar(settings, server_client)
            assert await sc.sync_once() is False
            assert not sc.gate.is_open
            assert lib.name in sc.functions.problem and OTHER not in sc.functions.problem
            assert await library_loaded(server_client, other_version(), sc.store.keys.state)
            assert not await library_loaded(server_client, lib, sc.store.keys.state)
            report = admin.hgetall(sc.store.keys.host(HOST).report)
            assert "ts_ms" not in report and lib.name in report[FIELD]
        finally:
            admin.close()


class TestProcesses:
    """Real sidecar and aggregator processes on a Redis without the library."""

    def test_sidecars_block_until_the_aggregator_loads_it(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """Sidecars started first block and `status` names the library (the roster stored by an
        earlier aggregator); the aggregator loads it at start and again after Redis loses it;
        then arm, trade and kill work."""
        lib = sidecar_library()
        admin = redis_sync.Redis(port=own_redis.port, decode_responses=True)
        admin.function_flush()
        admin.sadd(NodeKeys(node).roster, *HOSTS)  # stored by an earlier aggregator
        f = Fleet(own_redis.url, node, HOSTS)
        try:
            f.start()
            for h in HOSTS:
                assert f.sidecars[h].logged("FUNCTIONS_MISSING")[0]["library"] == lib.name
                assert f.order(h, "m1").startswith("BLOCK m1")

            def named() -> bool:
                code, rep = f.cli_json("status")
                hosts = rep.get("hosts", {})
                return code == 3 and all(lib.name in hosts[h].get(FIELD, "") for h in HOSTS)

            wait_until(named, 15, what="status names the missing library")
            assert lib.name in f.cli("status").stdout  # on each host's line
            agg = f.start_aggregator("--tick", "0.05")
            assert agg.logged("FUNCTIONS_LOADED")[0]["library"] == lib.name
            f.wait_ready(30)
            for h in HOSTS:
                assert f.sidecars[h].logged("FUNCTIONS_FOUND")
            armed = f.arm()
            assert f.order("or-01", "a1") == f"ALLOW a1 {armed['epoch']}"

            admin.function_delete(lib.name)  # Redis lost it: the aggregator puts it back
            wait_until(
                lambda: any(e["reason"] == "missing" for e in agg.events("FUNCTIONS_LOADED")),
                20, what="the aggregator reloads the library",
            )  # fmt: skip
            code, rep = f.cli_json("kill", "--reason", "functions")
            assert code == 0 and rep["confirmed"] == HOSTS, json.dumps(rep)
            assert f.order("or-02", "k1").startswith("BLOCK k1")
        finally:
            f.stop()
            admin.close()


@pytest.mark.slow
class TestSentinel:
    """Over Sentinel the library is loaded on the primary and replicated to its replica."""

    async def test_loaded_through_sentinel_survives_a_failover(self, node: str) -> None:
        """Loaded through a `redis+sentinel://` client, the replica holds it too; after the
        primary dies, the promoted replica answers the sidecars' functions."""
        lib = sidecar_library()
        key = NodeKeys(node).state
        with SentinelCluster("ks-functions") as cluster:
            client = connect(cluster.url)
            try:
                await client.function_delete(lib.name)
                (replica,) = cluster.replica_ports
                with redis_sync.Redis(port=replica, socket_timeout=2) as r:
                    wait_until(lambda: not r.function_list(library=lib.name), 10)
                    await load_library(client, lib)
                    wait_until(lambda: r.function_list(library=lib.name), 10,
                               what="the library on the replica")  # fmt: skip
                cluster.kill_primary()
                assert await asyncio.to_thread(cluster.wait_for_failover, 15.0) == replica
            finally:
                await client.aclose()
            client = connect(cluster.url)
            try:
                assert await library_loaded(client, lib, key)
            finally:
                await client.aclose()
