"""Each rule's condition at one instant, and its breach hold, by the rule's name: for a
caller that judges one rule by hand rather than through a `Monitor` (the unit tests do).

The conditions live in the rules' own modules (`core.rules.trips`); this module only names
them. Nothing here keeps state, reads a clock, touches Redis or logs.
"""

from __future__ import annotations

from killswitch.core.rules.breach import Span, Streak
from killswitch.core.rules.config import MonitorConfig
from killswitch.core.rules.registry import by_cause
from killswitch.core.rules.rule import Reading, secs
from killswitch.core.rules.trips.baseline import condition as baseline
from killswitch.core.rules.trips.baselinefast import condition as baseline_fast
from killswitch.core.rules.trips.hostshare import condition as host_share
from killswitch.core.rules.trips.maxorders import condition as max_orders
from killswitch.core.rules.trips.maxrate import condition as max_rate
from killswitch.core.rules.trips.runaway import condition as runaway
from killswitch.core.rules.trips.runaway import floor as runaway_floor

__all__ = [
    "Reading", "Span", "Streak", "baseline", "baseline_fast", "hold", "host_share",
    "max_orders", "max_rate", "runaway", "runaway_floor", "secs",
]  # fmt: skip

_RULES = by_cause()


def hold(cfg: MonitorConfig, cause: str) -> tuple[int, int]:
    """(step_ms, steps needed) for a registered rule's breach to trip (`Rule.hold`).

    Caps trip at once. The slow rules must hold for `breach_windows` windows: the breach
    must survive every evaluation from its first until (breach_windows - 1) x window later.
    The fast rules must hold for `fast_breach_ms`.
    """
    return _RULES[cause].hold(cfg)
