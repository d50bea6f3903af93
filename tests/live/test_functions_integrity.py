"""A Functions library replaced under the sidecars' library name (function names are global in
Redis: any credential allowed FUNCTION LOAD can do it) is found and fails closed: sidecars
stop calling it and block with the reason named (log, `/healthz`, `status`), the aggregator
loads the right code back (logged, counted), and sidecars reopen only on a proven state. The
genuine library, reloaded by a restarted aggregator, never trips the check."""

from __future__ import annotations

import urllib.request
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
from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.scripts import code_digest, library_codes, load_library, sidecar_library
from killswitch.store.store import FlushReport, Store
from kstest import Fleet, wait_until, wait_until_async

HOST = "or-01"
HOSTS = ["or-01", "or-02"]
_XADD = "redis.call('XADD', KEYS[2],"


def blinding_code() -> str:
    """The real library's code, same name, whose flush drops the flow delta (the XADD becomes
    a call of a function that does nothing): every volume rule of the node goes blind."""
    code = sidecar_library().code
    assert code.count(_XADD) == 1
    return code.replace(_XADD, "(function(...) end)(KEYS[2],")


def lists(client: redis_sync.Redis) -> int:
    """FUNCTION LIST calls (the library checks) since the server's stats were reset."""
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_function|list", {}).get("calls", 0))


def fcalls(client: redis_sync.Redis) -> int:
    """FCALL and FCALL_RO calls the server has served since its stats were reset."""
    stats: Any = client.info("commandstats")
    return sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_fcall", "cmdstat_fcall_ro")
    )


async def flow_entries(client: Redis, node: str, host: str) -> int:
    """A direct call of the loaded flush for `host` (no check: a plain store) reporting 5
    allowed orders; how many entries the host's flow stream holds afterwards."""
    report = FlushReport(
        boot="b", allowed=5, blocked=0, acked_allowed=0, acked_blocked=0, max_epoch=0,
        view="UNKNOWN", gate="closed", orders_per_s=0.0, stale_after_ms=1000, regression="",
    )  # fmt: skip
    store = Store(client, node)
    await store.flush(host, report, "test")
    return int(await client.xlen(store.keys.host(host).flow))


@pytest.fixture
async def server_client(own_redis: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = Redis.from_url(own_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


class TestSidecarInProcess:
    """A real sidecar's sync loop on a real redis-server whose library is replaced."""

    async def test_the_blinding_variant_really_drops_the_flow(
        self, server_client: Redis, node: str
    ) -> None:
        """The variant the other tests load is a real attack: its flush writes no flow entry
        where the genuine library's does."""
        await load_library(server_client, sidecar_library())
        assert await flow_entries(server_client, node, "genuine") == 1
        await server_client.function_load(blinding_code(), replace=True)
        assert await flow_entries(server_client, node, "blinded") == 0

    async def test_the_check_reads_exactly_its_library(
        self, server_client: Redis, own_redis: EmbeddedRedis
    ) -> None:
        """`library_codes` returns the code under its exact name, over RESP2 and RESP3, and
        nothing of a library whose name merely starts the same."""
        lib = sidecar_library()
        near = lib.name + "0"
        await load_library(server_client, lib)
        await server_client.function_load(lib.code.replace(lib.name, near), replace=True)
        resp3 = Redis.from_url(own_redis.url, decode_responses=True, protocol=3)
        try:
            for client in (server_client, resp3):
                assert await library_codes(client, lib.name) == [lib.code]
            await server_client.function_delete(lib.name)
            assert await library_codes(resp3, lib.name) == []
        finally:
            await resp3.aclose()

    async def test_replaced_library_blocks_and_is_not_called(
        self, server_client: Redis, own_redis: EmbeddedRedis, node: str, tmp_path: Path,
        operator_keys: OperatorKeys,
    ) -> None:  # fmt: skip
        """Replaced under its name: the gate closes, FUNCTIONS_TAMPERED names the code's
        digest, /healthz and the report name it, and no FCALL is made while it stays; with
        the right code back the armed, proven node's gate reopens without a re-arm."""
        lib, bad = sidecar_library(), blinding_code()
        settings = SidecarSettings(
            node=node, host=HOST, redis_url="", flush_interval=0.05, stale_after=1.0,
            state_dir=str(tmp_path), operators=str(operator_keys.file),
        )  # fmt: skip
        admin = redis_sync.Redis(port=own_redis.port, decode_responses=True)
        with capture_logs() as logs:
            sc = Sidecar(settings, server_client)
            await signed_store_arm(Store(server_client, node), operator_keys, reason="open",
                                   roster=[HOST], boots={HOST: sc.boot_id})  # fmt: skip
            await sc.start()
            try:
                await wait_until_async(lambda: sc.gate.is_open, 10)
                admin.function_load(bad, replace=True)
                await wait_until_async(lambda: not sc.gate.is_open, 10)
                assert "holds code that is not this version's" in sc.problem()
                tampered = [e for e in logs if e["event"] == "FUNCTIONS_TAMPERED"]
                assert tampered and tampered[0]["found_sha1"] == code_digest(bad)
                assert tampered[0]["library"] == lib.name
                report = admin.hgetall(sc.store.keys.host(HOST).report)
                assert lib.name in report[FIELD] and "holds code" in report[FIELD]
                admin.config_resetstat()
                rounds = sc.functions.rounds
                await wait_until_async(lambda: sc.functions.rounds >= rounds + 3, 10)
                assert fcalls(admin) == 0  # checked every round, never called
                assert not sc.gate.is_open

                await load_library(server_client, lib)  # what the aggregator does
                await wait_until_async(lambda: sc.gate.is_open, 10)
                assert sc.problem() == ""
                assert [e for e in logs if e["event"] == "FUNCTIONS_FOUND"]
                await wait_until_async(
                    lambda: admin.hget(sc.store.keys.host(HOST).report, FIELD) == "", 10
                )
            finally:
                await sc.stop()
                admin.close()

    async def test_killed_while_replaced_stays_closed(
        self, server_client: Redis, own_redis: EmbeddedRedis, node: str, tmp_path: Path,
        operator_keys: OperatorKeys,
    ) -> None:  # fmt: skip
        """A node killed while its library was replaced does not reopen when the code is
        back: the gate follows the node's state, never the library's return."""
        settings = SidecarSettings(
            node=node, host=HOST, redis_url="", flush_interval=0.05, stale_after=1.0,
            state_dir=str(tmp_path), operators=str(operator_keys.file),
        )  # fmt: skip
        admin = redis_sync.Redis(port=own_redis.port, decode_responses=True)
        sc = Sidecar(settings, server_client)
        store = Store(server_client, node)
        await signed_store_arm(store, operator_keys, reason="open", roster=[HOST],
                               boots={HOST: sc.boot_id})  # fmt: skip
        await sc.start()
        try:
            await wait_until_async(lambda: sc.gate.is_open, 10)
            admin.function_load(blinding_code(), replace=True)
            await wait_until_async(lambda: "holds code" in sc.problem(), 10)
            await store.kill(actor="carol", reason="replaced library", cause="operator", floor=0)
            await load_library(server_client, sidecar_library())
            await wait_until_async(lambda: sc.problem() == "", 10)
            await wait_until_async(lambda: sc.gate.view.state.value == "KILLED", 10)
            assert not sc.gate.is_open
        finally:
            await sc.stop()
            admin.close()

    async def test_genuine_library_reloaded_is_no_alarm(
        self, server_client: Redis, own_redis: EmbeddedRedis, node: str, tmp_path: Path,
        operator_keys: OperatorKeys,
    ) -> None:  # fmt: skip
        """The genuine code loaded again (REPLACE, as every aggregator start does) over many
        checks: never FUNCTIONS_TAMPERED nor MISSING, and the gate stays open."""
        settings = SidecarSettings(
            node=node, host=HOST, redis_url="", flush_interval=0.05, stale_after=1.0,
            state_dir=str(tmp_path), operators=str(operator_keys.file),
        )  # fmt: skip
        with capture_logs() as logs:
            sc = Sidecar(settings, server_client)
            sc.functions.every = 0.05  # a check every round: many chances for a false alarm
            await signed_store_arm(Store(server_client, node), operator_keys, reason="open",
                                   roster=[HOST], boots={HOST: sc.boot_id})  # fmt: skip
            await sc.start()
            try:
                await wait_until_async(lambda: sc.gate.is_open, 10)
                for _ in range(20):
                    checks = sc.functions.checks
                    await load_library(server_client, sidecar_library())
                    await wait_until_async(lambda c=checks: sc.functions.checks > c + 1, 10)
                assert sc.gate.is_open and sc.problem() == ""
                alarms = [e for e in logs if e["event"] in ("FUNCTIONS_TAMPERED",
                                                            "FUNCTIONS_MISSING")]  # fmt: skip
                assert alarms == []
            finally:
                await sc.stop()


def replaced_total(port: int) -> float:
    """killswitch_functions_replaced_total as the aggregator exports it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("killswitch_functions_replaced_total{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class TestProcesses:
    """Real sidecar and aggregator processes."""

    def test_aggregator_restores_and_sidecars_reopen(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """Replaced while no aggregator runs: sidecars block and `status` names it; the
        aggregator finds it at start (FUNCTIONS_REPLACED, counted) and loads it back; the
        armed node trades again without a re-arm. Replaced again while it runs: its 5 s
        check finds and restores it."""
        lib, bad = sidecar_library(), blinding_code()
        admin = redis_sync.Redis(port=own_redis.port, decode_responses=True)
        port = free_port()
        f = Fleet(own_redis.url, node, HOSTS)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            armed = f.arm()
            assert f.order("or-01", "a1") == f"ALLOW a1 {armed['epoch']}"
            assert f.aggregator is not None
            f.aggregator.stop()

            admin.function_load(bad, replace=True)
            for h in HOSTS:
                ev = f.sidecars[h].logged("FUNCTIONS_TAMPERED")
                assert ev and ev[0]["found_sha1"] == code_digest(bad)
                wait_until(lambda h=h: f.order(h, "b1").startswith("BLOCK b1"), 10)

            def named() -> bool:
                _, rep = f.cli_json("status")
                hosts = rep.get("hosts", {})
                return all("holds code" in hosts.get(h, {}).get(FIELD, "") for h in HOSTS)

            wait_until(named, 15, what="status names the replaced library")
            assert lib.name in f.cli("status").stdout

            agg = f.start_aggregator("--tick", "0.05", "--metrics-port", str(port))
            assert agg.logged("FUNCTIONS_REPLACED")[0]["found_sha1"] == code_digest(bad)
            wait_until(lambda: admin.function_list(library=lib.name, withcode=True)[0][-1]
                       == lib.code, 10, what="the right code back")  # fmt: skip
            for h in HOSTS:
                assert f.sidecars[h].logged("FUNCTIONS_FOUND")
                wait_until(lambda h=h: f.order(h, "c1") == f"ALLOW c1 {armed['epoch']}", 15,
                           what="reopened on the proven arm")  # fmt: skip
            wait_until(lambda: replaced_total(port) == 1.0, 10, what="counted")

            admin.function_load(bad, replace=True)  # while it runs: its 5 s check
            wait_until(lambda: len(agg.events("FUNCTIONS_REPLACED")) == 2, 15,
                       what="the running aggregator restores it")  # fmt: skip
            wait_until(lambda: replaced_total(port) == 2.0, 10, what="counted again")
            wait_until(lambda: f.order("or-02", "d1") == f"ALLOW d1 {armed['epoch']}", 15)
        finally:
            f.stop()
            admin.close()

    def test_no_alarm_across_an_aggregator_restart(
        self, own_redis: EmbeddedRedis, node: str
    ) -> None:
        """An aggregator restart reloads the genuine library: past several sidecar checks
        after it, no sidecar logs TAMPERED or MISSING, the aggregator logs no REPLACED, and
        orders are allowed throughout."""
        admin = redis_sync.Redis(port=own_redis.port, decode_responses=True)
        f = Fleet(own_redis.url, node, HOSTS)
        try:
            f.start()
            agg = f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            armed = f.arm()
            agg.stop()
            agg = f.start_aggregator("--tick", "0.05")
            assert agg.logged("FUNCTIONS_LOADED")
            admin.config_resetstat()
            for h in HOSTS:
                assert f.order(h, "o1") == f"ALLOW o1 {armed['epoch']}"
            # every sidecar checks every 2 s (and the aggregator every 5 s): a few rounds of
            # checks of the reloaded code
            wait_until(lambda: lists(admin) >= 3 * len(HOSTS) + 1, 30, what="checks ran")
            for h in HOSTS:
                assert f.order(h, "o2") == f"ALLOW o2 {armed['epoch']}"
                assert f.sidecars[h].events("FUNCTIONS_TAMPERED") == []
                assert f.sidecars[h].events("FUNCTIONS_MISSING") == []
            assert agg.events("FUNCTIONS_REPLACED") == []
            # both instances write the fleet's one aggregator log: each loaded it at its start
            assert [e["reason"] for e in agg.events("FUNCTIONS_LOADED")] == ["start", "start"]
        finally:
            f.stop()
            admin.close()
