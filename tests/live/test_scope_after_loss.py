"""A scoped kill after Redis lost the scopes hash: the host that applied a higher scopes
version ignores the new one, so the kill must not be reported as proven by it."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from killswitch.core.node.scope import proven
from killswitch.ops.control import EXIT_OK, EXIT_UNCONFIRMED
from killswitch.ops.scope import kill_scope
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import OperatorKeys, two_person_arm
from killswitch.store.store import Store
from kstest import wait_until_async


class TestProvenAgainstTheStoredVersion:
    """The pure rule: a report above the stored version proves nothing."""

    @pytest.mark.parametrize(
        ("applied", "stored_ver", "done", "missing"),
        [
            ({"a": 7, "b": 7}, 7, ["a", "b"], []),
            ({"a": 7, "b": 9}, 9, ["a", "b"], []),
            ({"a": 7, "b": 9}, 7, ["a"], ["b"]),  # b saw version 9; Redis now holds 7
            ({"a": 7, "b": 9}, None, ["a", "b"], []),  # the stored version not given
            ({"a": 6, "b": 9}, 7, [], ["a", "b"]),
        ],
        ids=["both-at-ver", "ahead-of-ver-not-of-redis", "ahead-of-redis", "unknown", "neither"],
    )
    def test_symbol_scope_table(
        self, applied: dict[str, int], stored_ver: int | None, done: list[str], missing: list[str]
    ) -> None:
        """Only hosts whose applied version is at least the kill's and at most Redis's prove it."""
        assert proven("symbol", "X", 7, ("a", "b"), applied, stored_ver) == (done, missing)


class TestScopedKillAfterLoss:
    """A real sidecar (in-process) and a real Redis that loses the scopes hash."""

    async def test_scoped_kill_the_host_ignores_is_not_proven(
        self, redis: Redis, redis_url: str, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """Before the loss scoped kills are proven and enforced; after it, a new scoped kill
        the host does not enforce exits unconfirmed naming the host and the cause, and the
        scopes the host already enforced stay enforced."""
        store = Store(redis, node)
        await store.set_roster(["py-11"], "test")
        settings = SidecarSettings(
            node=node, host="py-11", redis_url=redis_url, state_dir=str(tmp_path),
            flush_interval=0.05, stale_after=0.5, operators=str(operator_keys.file),
        )  # fmt: skip
        with SidecarThread(settings) as sc:
            await wait_until_async(lambda: sc.gate.view.state.value == "UNARMED")
            armed = await two_person_arm(store, operator_keys, reason="t", timeout=5)
            assert armed.code == 0, armed.report
            await wait_until_async(lambda: sc.gate.is_open)
            for n, symbol in enumerate(["KCG", "MSFT"], 1):
                done = await kill_scope(store, kind="symbol", value=symbol, reason="t",
                                        operator="op", timeout=5)  # fmt: skip
                assert done.code == EXIT_OK, done.report
                assert done.report["scope"]["ver"] == n and done.report["confirmed"] == ["py-11"]
            assert not sc.gate.allow("o1", "MSFT", "BUY", 1)
            assert sc.gate.allow("o2", "AAPL", "BUY", 1)

            await redis.delete(store.keys.scopes)  # what a restart without AOF leaves of it
            lost = await kill_scope(store, kind="symbol", value="XYZ", reason="after the loss",
                                    operator="op", timeout=1)  # fmt: skip
            assert lost.report["scope"]["ver"] == 1
            assert sc.gate.scope_ver == 2  # the host kept what it had applied ...
            assert sc.gate.allow("o3", "XYZ", "BUY", 1)  # ... and so does not block XYZ:
            assert lost.code == EXIT_UNCONFIRMED, lost.report  # the kill must not claim it
            assert (lost.report["confirmed"], lost.report["missing"]) == ([], ["py-11"])
            assert "above the stored 1: Redis lost its scopes" in lost.message
            assert not sc.gate.allow("o4", "KCG", "BUY", 1)  # never lifted by the loss
            assert not sc.gate.allow("o5", "MSFT", "SELL", 1)
