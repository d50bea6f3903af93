"""Every trip rule's evaluation, guarded: when each rule was last evaluated, and which cannot be.

A rule that cannot be evaluated must never be dropped while the tick carries on with the
others. `RuleGuard.run` evaluates one rule (or a group evaluated by one call, such as the
anomaly `Monitor`'s rules) and records, per rule name, the Redis server time of its last
evaluation, or the fault that stopped it: RULE_FAULT (logged once per distinct error),
`killswitch_rule_faults_total` and `killswitch_rule_fault`, the view `status` reads. What a
fault does (kill the node, or only show) is decided per rule by `kills_on_fault`; the
aggregator acts on it. Redis being unreachable is not a rule's fault: it propagates, the
tick fails, and every rule's last-evaluated time ages (alerted).

Names are whatever the caller passes, so a rule added later gets its time and its fault
handling without a change here.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from killswitch.aggregator import fleetrule

RULE_FAULT = "rule_fault"  # the trip cause of a node killed because a rule cannot be evaluated
# Rules whose fault does not kill the node (docs/RELIABILITY.md, "A rule that cannot be
# evaluated"): the fleet cap sums other nodes' views, and its failure is not this node's.
FAULT_ONLY = frozenset({fleetrule.CAUSE})
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError)


def kills_on_fault(rule: str) -> bool:
    """Whether a fault in `rule` kills the node (every rule unless named in FAULT_ONLY)."""
    return rule not in FAULT_ONLY


class RuleGuard:
    """Per rule: the last evaluation (server ms) and the current fault ("" none)."""

    def __init__(self, node: str, log: Any, faults_total: Counter) -> None:
        self.node = node
        self.log = log
        self.faults_total = faults_total
        self.last_ms: dict[str, int] = {}
        self.faults: dict[str, str] = {}

    def expect(self, rules: Iterable[str]) -> None:
        """Rules this aggregator runs: shown (never evaluated: 0) before their first run."""
        for r in rules:
            self.last_ms.setdefault(r, 0)

    async def run(
        self, rules: Sequence[str], at_ms: int, evaluate: Callable[[], Awaitable[None]]
    ) -> str:
        """Evaluate `rules` by `evaluate()`; "" when it ran, else the fault (never raised,
        except Redis being unreachable and cancellation)."""
        try:
            await evaluate()
        except asyncio.CancelledError:
            raise
        except UNREACHABLE:
            raise
        except Exception as e:
            return self.fault(rules, e)
        self.evaluated(rules, at_ms)
        return ""

    def evaluated(self, rules: Iterable[str], at_ms: int) -> None:
        for r in rules:
            self.last_ms[r] = max(self.last_ms.get(r, 0), at_ms)
            if self.faults.pop(r, None) is not None:
                self.log.warning("RULE_RECOVERED", rule=r, at_ms=at_ms)

    def fault(self, rules: Iterable[str], e: BaseException) -> str:
        error = f"{type(e).__name__}: {e}"[:300]
        frames = traceback.extract_tb(e.__traceback__)
        where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
        for r in rules:
            self.faults_total.labels(self.node, r).inc()
            if self.faults.get(r) != error:
                self.log.error(
                    "RULE_FAULT", rule=r, error=error, where=where,
                    action="node killed (cause rule_fault)" if kills_on_fault(r)
                    else "not evaluated: shown in status, alerted; the node's own rules go on",
                )  # fmt: skip
            self.faults[r] = error
        return error

    def view(self) -> dict[str, str]:
        """For the aggregator's view (`status`): JSON maps rule -> last ms, rule -> fault."""
        compact = (",", ":")
        return {
            "rules_last_evaluated": json.dumps(
                dict(sorted(self.last_ms.items())), separators=compact
            ),
            "rule_faults": json.dumps(dict(sorted(self.faults.items())), separators=compact),
        }


class Rotations(Protocol):
    @property
    def rotations(self) -> int: ...


def health_metrics(node: str, guard: RuleGuard, mirror: Rotations | None) -> Iterator[Metric]:
    """Each rule's last evaluation and fault, and the audit copy's rotations."""
    last = GaugeMetricFamily(
        "killswitch_rule_last_evaluated_seconds",
        "Redis server time (unix seconds) of each trip rule's last evaluation (0: never).",
        labels=["node", "rule"],
    )
    fault = GaugeMetricFamily(
        "killswitch_rule_fault",
        "1 while a trip rule cannot be evaluated (its evaluation raised; status names it).",
        labels=["node", "rule"],
    )
    for rule, ms in sorted(guard.last_ms.items()):
        last.add_metric([node, rule], ms / 1000.0)
        fault.add_metric([node, rule], float(rule in guard.faults))
    yield last
    yield fault
    rotated = CounterMetricFamily(
        "killswitch_audit_copy_rotations",
        "Local audit copies renamed aside since start because Redis holds another chain.",
        labels=["node"],
    )
    rotated.add_metric([node], mirror.rotations if mirror is not None else 0)
    yield rotated
