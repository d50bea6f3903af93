"""A trip rule that cannot be evaluated (issue 27, must show 3): a test double for one RULE
raises in the aggregator's tick. The node is killed with cause `rule_fault` (audited,
counted), or, for the fleet cap, the fault is named and nothing is killed; `status` shows
the fault either way, the other rules keep being evaluated, and a rule that works again
recovers.

Real sidecar processes and a real redis-server; the aggregator runs in the test's event loop
(the same `Aggregator` as the process) so a rule of it can be replaced by a double.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from killswitch.aggregator.fleetrule import FleetRule
from killswitch.aggregator.rollouts import RolloutWatch
from killswitch.aggregator.service import Aggregator
from killswitch.aggregator.settings import AggregatorSettings
from killswitch.core.node.release import Split
from killswitch.core.rules.anomaly import Evaluation, Monitor
from kstest import Fleet, wait_until_async
from kstest.auditcopies import Recorder

HOSTS = ["or-01", "or-02"]


class FaultyRollouts(RolloutWatch):
    """The version-split rule's double: judging the version vector raises."""

    def check(self, roster: Sequence[str], by_host: Mapping[str, str]) -> Split | None:
        raise RuntimeError("injected: version vector unreadable")


class FaultyMonitor(Monitor):
    """The anomaly rules' double: the evaluation raises."""

    def observe(self, *args: Any, **kwargs: Any) -> Evaluation:
        raise ZeroDivisionError("injected: window arithmetic")


class FaultyFleet(FleetRule):
    """The fleet cap's double: summing the fleet raises."""

    async def tick(self, now_ms: int) -> None:
        raise ValueError("injected: fleet views unreadable")


def faulty_rollouts(agg: Aggregator) -> None:
    w = agg.rules.rollouts
    agg.rules.rollouts = FaultyRollouts(w.store, w.node, w.operators, w.log)


def faulty_monitor(agg: Aggregator) -> None:
    m = agg.rules.monitor
    agg.rules.monitor = FaultyMonitor(m.config, m.baseline, roster=m.roster)


def faulty_fleet(agg: Aggregator) -> None:
    f = agg.rules.fleet
    assert f is not None
    agg.rules.fleet = FaultyFleet(
        f.redis, cap=f.cap, window_ms=f.window_ms, instance=agg.s.instance,
        lease_ttl=f.lead.ttl_s, max_age_ms=f.max_age_ms, log=f.log, on_trip=f.on_trip,
    )  # fmt: skip


CASES: dict[str, tuple[Callable[[Aggregator], None], tuple[str, ...], bool]] = {
    # double, the rules at fault, whether the node is killed
    "version_split": (faulty_rollouts, ("version_split",), True),
    "anomaly rules": (faulty_monitor, ("max_orders",), True),
    "fleet_cap": (faulty_fleet, ("fleet_cap",), False),
}


@pytest.fixture
def two(redis_url: str, node: str) -> Iterator[Fleet]:
    f = Fleet(redis_url, node, HOSTS)
    try:
        yield f.start()
    finally:
        f.stop()


def status(f: Fleet) -> dict[str, Any]:
    code, rep = f.cli_json("status")
    assert code in (0, 3), rep
    return rep


@pytest.mark.parametrize("case", list(CASES))
async def test_a_rule_that_raises_kills_or_is_named(two: Fleet, redis: Redis, case: str) -> None:
    """An armed node whose rule double raises: killed with cause rule_fault (or, for the
    fleet cap, left armed), the fault in status text and JSON and in the metrics, logged
    once, the other rules still evaluated; the real rule back, the fault clears."""
    install, rules, kills = CASES[case]
    registry = CollectorRegistry()
    log = Recorder()
    settings = AggregatorSettings(
        node=two.node, redis_url=two.redis_url, hosts=tuple(HOSTS), tick=0.05,
        operators=str(two.ops.file), fleet_max_orders=10**9,
    )  # fmt: skip
    agg = Aggregator(settings, redis, registry=registry, logger=log)
    await agg.start()
    try:
        await asyncio.to_thread(two.wait_ready, 60)
        armed = await asyncio.to_thread(two.arm)
        await asyncio.to_thread(two.wait_all, "PONG ARMED")
        healthy = (agg.rules.rollouts, agg.rules.monitor, agg.rules.fleet)
        install(agg)

        def faulted() -> bool:
            return set(rules) <= set(agg.rules.rule_guard.faults)

        await wait_until_async(faulted, 20, 0.02, "the rule at fault")

        async def named() -> dict[str, Any] | None:
            rep = await asyncio.to_thread(status, two)
            return rep if set(rules) <= set(rep["aggregator"]["rule_faults"]) else None

        async def killed() -> dict[str, Any] | None:
            rep = await asyncio.to_thread(status, two)
            return rep if rep["state"] == "KILLED" else None

        rep = await wait_until_async(named, 20, 0.05, "status names the fault")
        for r in rules:
            assert "injected" in rep["aggregator"]["rule_faults"][r]
            assert (
                registry.get_sample_value("killswitch_rule_fault", {"node": two.node, "rule": r})
                == 1
            )
        human = (await asyncio.to_thread(two.cli, "status")).stdout
        assert f"RULE FAULT: {rules[0]} cannot be evaluated" in human
        trips = {"node": two.node, "cause": "rule_fault"}
        if kills:
            dead = await wait_until_async(killed, 20, 0.05, "node killed")
            assert dead["cause"] == "rule_fault" and rules[0] in dead["reason"]
            assert dead["epoch"] > armed["epoch"]
            assert registry.get_sample_value("killswitch_trips_total", trips) == 1.0
            audit = (await asyncio.to_thread(two.cli_json, "audit"))[1]["entries"]
            assert [e["cause"] for e in audit if e["action"] == "trip"] == ["rule_fault"]
        else:
            assert (await asyncio.to_thread(status, two))["state"] == "ARMED"
            assert registry.get_sample_value("killswitch_trips_total", trips) == 0.0
        # logged once for the fault, not once a tick
        assert len([e for e in log.named("RULE_FAULT") if e["rule"] == rules[0]]) == 1
        # every other rule goes on being evaluated
        others = [r for r in agg.rules.rule_guard.last_ms if r not in agg.rules.rule_guard.faults]
        assert others
        before = dict(agg.rules.rule_guard.last_ms)
        await wait_until_async(
            lambda: all(agg.rules.rule_guard.last_ms[r] > before[r] for r in others),
            20, 0.02, "the other rules evaluated again",
        )  # fmt: skip
        agg.rules.rollouts, agg.rules.monitor, agg.rules.fleet = healthy
        await wait_until_async(lambda: not agg.rules.rule_guard.faults, 20, 0.02, "recovered")
        assert {e["rule"] for e in log.named("RULE_RECOVERED")} >= set(rules)
    finally:
        await agg.stop()
