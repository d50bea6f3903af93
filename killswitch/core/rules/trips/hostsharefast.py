"""`host_share_fast`: `host_share` on the fast window, at or above `fast_min_orders`, for
`fast_breach_ms` (on with `max_host_share` unless `fast_host_share` is off)."""

from __future__ import annotations

from killswitch.core.rules.config import HOST_SHARE_FAST, MonitorConfig
from killswitch.core.rules.rule import SHARE, Instant, Reading, Rule, fast_hold
from killswitch.core.rules.trips import hostshare


class HostShareFast(Rule):
    cause = HOST_SHARE_FAST
    options = ("max-host-share", "fast-host-share", "fast-window", "fast-min-orders",
               "fast-breach")  # fmt: skip
    unit = SHARE
    fast = True

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        assert cfg.max_host_share is not None  # enabled only with a share
        return hostshare.condition(cfg, at.fast_total, at.fast_hosts, cfg.max_host_share, fast=True)

    def hold(self, cfg: MonitorConfig) -> tuple[int, int]:
        return fast_hold(cfg)


RULE = HostShareFast()
