"""The pure halves of aggregator high availability and the durability check: no Redis here."""

from __future__ import annotations

import pytest

from killswitch.core.node.leader import (
    SAFETY,
    Leadership,
    LeaseReply,
    holder_doubt,
    instance_of,
    make_token,
    on_fenced,
    on_reply,
    silent_bound_ms,
)
from killswitch.store import durability

ME = make_token("agg-a", "n1")
OTHER = make_token("agg-b", "n2")


class TestLeadership:
    @pytest.mark.parametrize(
        ("held_until", "acquired", "reply", "leader_after", "change"),
        [
            (0.0, False, LeaseReply(True, ME, 2000), True, "LEADER_ACQUIRED"),
            (11.0, True, LeaseReply(True, ME, 2000), True, ""),
            (11.0, True, LeaseReply(False, OTHER, 1500), False, "LEADER_LOST"),
            (0.0, False, LeaseReply(False, OTHER, 1500), False, ""),
            (11.0, True, LeaseReply(True, OTHER, 2000), False, "LEADER_LOST"),
            # frozen past its belief: the lease was still free, so it is taken again
            (5.0, True, LeaseReply(True, ME, 2000), True, "LEADER_ACQUIRED"),
            # frozen past its belief while a standby took over: it still says it lost
            (5.0, True, LeaseReply(False, OTHER, 1500), False, "LEADER_LOST"),
        ],
    )
    def test_reply_table(
        self,
        held_until: float,
        acquired: bool,
        reply: LeaseReply,
        leader_after: bool,
        change: str,
    ) -> None:
        """A renewal sent at t=10 moves the belief as the table says, and names the transition."""
        lead = Leadership(ME, 2.0, held_until=held_until, acquired=acquired)
        new, what = on_reply(lead, 10.0, reply)
        assert new.is_leader(10.0) is leader_after
        assert what == change
        assert new.holder == reply.holder

    def test_belief_ends_before_the_redis_lease(self) -> None:
        """The local belief runs out at send time + ttl * SAFETY, before Redis would expire it."""
        new, _ = on_reply(Leadership(ME, 2.0), 100.0, LeaseReply(True, ME, 2000))
        assert new.is_leader(100.0 + 2.0 * SAFETY - 1e-6)
        assert not new.is_leader(100.0 + 2.0 * SAFETY)
        assert SAFETY < 1.0

    def test_a_frozen_leader_wakes_up_as_a_follower(self) -> None:
        """After a pause longer than the lease, the monotonic clock alone says it no longer leads."""
        new, _ = on_reply(Leadership(ME, 2.0), 100.0, LeaseReply(True, ME, 2000))
        assert not new.is_leader(100.0 + 30.0)

    def test_fenced_trip_drops_the_belief(self) -> None:
        """A trip refused by the fence ends leadership at once."""
        new, _ = on_reply(Leadership(ME, 2.0), 100.0, LeaseReply(True, ME, 2000))
        assert not on_fenced(new).is_leader(100.1)

    @pytest.mark.parametrize(
        ("token", "instance"),
        [(make_token("host-1-42", "ab12"), "host-1-42"), (make_token("a b", "x"), "a b"), ("", "")],
    )
    def test_instance_of(self, token: str, instance: str) -> None:
        """The instance name is everything before the nonce."""
        assert instance_of(token) == instance


class TestHolderDoubt:
    @pytest.mark.parametrize(
        ("holder", "view_token", "view_ms", "doubt"),
        [
            ("", "", -1, ""),  # nobody leads: the standby takes the lease itself
            (OTHER, OTHER, 9_500, ""),  # a live leader publishing under its own token
            (OTHER, ME, 9_500, "unknown"),  # the view is someone else's: a ghost lease
            ("ghost 0", "", -1, "unknown"),  # a lease no aggregator ever published under
            (OTHER, OTHER, 7_000, "silent"),  # its view is older than its lease
            (OTHER, OTHER, -1, "silent"),
        ],
    )
    def test_doubt(self, holder: str, view_token: str, view_ms: int, doubt: str) -> None:
        """An unknown or silent lease holder is named; a live one, or none, is not."""
        assert holder_doubt(holder, view_token, view_ms, 10_000, 2_000) == doubt

    def test_bounds_outlast_a_takeover(self) -> None:
        """Every silence bound is above one lease TTL: a dead leader is taken over first."""
        for doubt in ("", "unknown", "silent"):
            assert silent_bound_ms(doubt, 2_000) > 2_000
        assert silent_bound_ms("unknown", 2_000) < silent_bound_ms("", 2_000)


class TestDurability:
    @pytest.mark.parametrize(
        ("reply", "enabled"),
        [
            ({"appendonly": "yes"}, True),
            ({"appendonly": "no"}, False),
            ({"appendonly": "YES "}, True),
            ({}, None),
            ({"appendonly": "maybe"}, None),
        ],
    )
    def test_config_reply(self, reply: dict[str, str], enabled: bool | None) -> None:
        """`CONFIG GET appendonly` reads as yes/no, anything else as unknown."""
        assert durability.from_config(reply) is enabled

    @pytest.mark.parametrize(
        ("info", "enabled"),
        [({"aof_enabled": 1}, True), ({"aof_enabled": 0}, False), ({"aof_enabled": "0"}, False),
         ({"rdb_changes_since_last_save": 3}, None)],
    )  # fmt: skip
    def test_info_reply(self, info: dict[str, object], enabled: bool | None) -> None:
        """`INFO persistence` reads `aof_enabled`; without it, unknown."""
        assert durability.from_info(info) is enabled
