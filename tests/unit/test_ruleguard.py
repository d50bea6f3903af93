"""The rule guard and what `status` makes of it, with no server: a rule that raises is a
recorded fault (logged once per error), Redis being away is not, and junk in the view's
maps reads as nothing."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from killswitch.aggregator.ruleguard import RuleGuard, kills_on_fault
from killswitch.view.ruleview import decode_view, health_lines
from kstest.auditcopies import Recorder


def _guard() -> tuple[RuleGuard, Recorder, CollectorRegistry]:
    registry = CollectorRegistry()
    faults = Counter("killswitch_rule_faults", "", ["node", "rule"], registry=registry)
    log = Recorder()
    return RuleGuard("smars", log, faults), log, registry


async def _ok() -> None:
    return None


async def _raises() -> None:
    raise KeyError("fields")


class TestRuleGuard:
    """`RuleGuard.run`: last-evaluated times, faults, recovery."""

    async def test_evaluated_rules_get_their_time(self) -> None:
        """A rule that runs records the evaluation's server ms; an expected one starts at 0."""
        guard, _, _ = _guard()
        guard.expect(["version_split", "runaway"])
        assert await guard.run(["version_split"], 1_000, _ok) == ""
        assert guard.last_ms == {"version_split": 1_000, "runaway": 0}

    async def test_a_raising_rule_is_a_fault_logged_once_and_counted_each_time(self) -> None:
        """The error is returned and kept; RULE_FAULT once for the same error; the counter
        rises per evaluation; the time stays at the last good evaluation."""
        guard, log, registry = _guard()
        await guard.run(["version_split"], 1_000, _ok)
        for at in (1_100, 1_200, 1_300):
            assert await guard.run(["version_split"], at, _raises) == "KeyError: 'fields'"
        assert guard.faults == {"version_split": "KeyError: 'fields'"}
        assert guard.last_ms["version_split"] == 1_000
        assert len(log.named("RULE_FAULT")) == 1
        assert "_raises" in log.named("RULE_FAULT")[0]["where"]
        labels = {"node": "smars", "rule": "version_split"}
        assert registry.get_sample_value("killswitch_rule_faults_total", labels) == 3
        await guard.run(["version_split"], 1_400, _ok)
        assert guard.faults == {} and log.named("RULE_RECOVERED")

    async def test_redis_away_is_not_a_rule_fault(self) -> None:
        """A connection error propagates (the tick fails); a refused command is a fault."""
        guard, _, _ = _guard()

        async def away() -> None:
            raise RedisConnectionError("connection refused")

        async def wrongtype() -> None:
            raise ResponseError("WRONGTYPE Operation against a key")

        with pytest.raises(RedisConnectionError):
            await guard.run(["max_orders"], 1, away)
        assert guard.faults == {}
        assert await guard.run(["max_orders"], 1, wrongtype)

    def test_which_faults_kill(self) -> None:
        """Every rule kills on a fault, a future one too, except the fleet cap."""
        assert kills_on_fault("version_split") and kills_on_fault("runaway")
        assert not kills_on_fault("fleet_cap")


class TestStatusView:
    """The view's maps as `status` shows them."""

    @pytest.mark.parametrize("junk", ["", "[1]", "{", "null", '{"a": [1]}', "7"])
    def test_junk_maps_read_as_empty(self, junk: str) -> None:
        """Junk in either map decodes to an empty map and renders without error."""
        view = decode_view({"rules_last_evaluated": junk, "rule_faults": junk})
        assert view["rules_last_evaluated"] == {} and view["rule_faults"] == {}
        assert health_lines(view) == []

    def test_faults_are_loud_and_ages_are_shown(self) -> None:
        """Each fault gets its own line; ages count back from the aggregator's last tick."""
        guard, _, _ = _guard()
        guard.expect(["max_orders", "version_split"])
        guard.evaluated(["max_orders"], 9_500)
        guard.faults["version_split"] = "KeyError: 'fields'"
        view = decode_view({**guard.view(), "tick_ms": "10000"})
        lines = health_lines(view)
        assert lines[0].startswith("!!! RULE FAULT: version_split cannot be evaluated")
        assert lines[1].endswith("max_orders 0.5s, version_split NEVER")
        # read at a later server time (the aggregator stopped publishing): the age shows it
        assert health_lines(view, now_ms=70_000)[1].endswith(
            "max_orders 60.5s, version_split NEVER"
        )
