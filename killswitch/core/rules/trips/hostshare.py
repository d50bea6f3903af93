"""`host_share`: one host sent more than `max_host_share` of the node's window volume, with
the node at or above `min_orders`, for `breach_windows - 1` windows within `breach_span`."""

from __future__ import annotations

from collections.abc import Mapping
from statistics import median

from killswitch.core.rules.config import HOST_SHARE, HOST_SHARE_FAST, MonitorConfig
from killswitch.core.rules.rule import SHARE, Instant, Reading, Rule, secs


def condition(
    cfg: MonitorConfig,
    total: int | None,
    hosts: Mapping[str, int] | None,
    cap: float,
    *,
    fast: bool = False,
) -> Reading:
    """The top host's share of the window (`fast`: of the fast window, for host_share_fast)."""
    cause, window_ms, floor = (
        (HOST_SHARE_FAST, cfg.fast_window_ms, cfg.fast_min_orders)
        if fast
        else (HOST_SHARE, cfg.window_ms, cfg.min_orders)
    )
    if total is None or hosts is None or len(hosts) < 2 or total <= 0:
        # One host is always 100% of itself: the rule means nothing without peers.
        return Reading(cause, False, False, 0.0, cap)
    host, orders = min(hosts.items(), key=lambda kv: (-kv[1], kv[0]))
    share = orders / total
    active = total >= floor
    breach = active and share > cap
    reading = Reading(cause, active, breach, share, cap, host=host)
    if breach:
        peers = median(v for h, v in hosts.items() if h != host)
        reading.detail = (
            f"host {host} sent {share:.0%} of the node's {total} orders in "
            f"{secs(window_ms)} (limit {cap:.0%}), "
            f"{orders / max(peers, 1.0):.1f}x its peers' median of {peers:g}"
        )
    return reading


class HostShare(Rule):
    cause = HOST_SHARE
    options = ("max-host-share", "window", "min-orders", "breach-windows", "breach-span")
    unit = SHARE
    spans = True

    def read(self, cfg: MonitorConfig, at: Instant) -> Reading:
        assert cfg.max_host_share is not None  # enabled only with a share
        return condition(cfg, at.node_total, at.hosts, cfg.max_host_share)

    def hold(self, cfg: MonitorConfig) -> tuple[int, int]:
        return cfg.window_ms, cfg.breach_windows


RULE = HostShare()
