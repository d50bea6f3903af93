"""The flags of guarded learning, breach span and the runaway rule, for `rulecli`.

Declared here, beside the rule flags they join, so `rulecli` stays one job per module: it
adds these to its argument group and merges their resolved values into `MonitorConfig`.
Parses and converts only; the decisions are in `core.anomaly`.
"""

from __future__ import annotations

import argparse
from typing import Any

from killswitch.core.anomaly import MonitorConfig
from killswitch.core.backtest import FlowEvent
from killswitch.runtime.config import ConfigError, Resolver
from killswitch.runtime.validate import bounded, bounded_int, seconds_ms

# MonitorConfig field -> the flag that sets it (validation errors name the flag).
FLAG_OF = {
    "baseline_band": "baseline-band",
    "baseline_doubling_ms": "baseline-doubling",
    "slow_half_life_ms": "baseline-slow-half-life",
    "breach_span": "breach-span",
    "runaway_growth": "runaway-growth",
    "runaway_step": "runaway-step",
    "runaway_steps": "runaway-steps",
}


def add_flags(g: argparse._ArgumentGroup, d: MonitorConfig) -> None:
    g.add_argument(
        "--breach-span", type=int, metavar="N",
        help="a baseline or host-share breach trips once it lasted --breach-windows - 1 windows in total within the last N windows, so a pulsing flood cannot reset it (default --breach-windows + 1; --breach-windows - 1 counts only an unbroken breach)",
    )  # fmt: skip
    g.add_argument(
        "--baseline-band", metavar="X",
        help=f"a window confirmed normal is learned as at most X times the baseline (default {d.baseline_band:g}); 'off' with --baseline-doubling off learns as earlier releases did",
    )  # fmt: skip
    g.add_argument(
        "--baseline-doubling", metavar="S",
        help=f"the learned baseline rises at most 2x in S seconds unless a re-arm accepts a level (default {(d.baseline_doubling_ms or 0) / 1000:g}; 'off' lifts the bound)",
    )  # fmt: skip
    g.add_argument(
        "--baseline-slow-half-life", metavar="S",
        help=f"half-life of the baseline's slow moving average, which remembers the level through a lull (default {(d.slow_half_life_ms or 0) / 1000:g}; 'off' for none)",
    )  # fmt: skip
    g.add_argument(
        "--runaway-growth", metavar="X",
        help=f"runaway: kill when the node's volume grew more than X times in each of --runaway-steps steps of --runaway-step windows, above the band of the baseline (default {d.runaway_growth:g}; 'off' disables the rule)",
    )  # fmt: skip
    g.add_argument(
        "--runaway-step", type=int, metavar="N",
        help=f"windows per step of the runaway rule (default {d.runaway_step})",
    )  # fmt: skip
    g.add_argument(
        "--runaway-steps", type=int, metavar="N",
        help=f"consecutive steps of growth the runaway rule needs (default {d.runaway_steps})",
    )  # fmt: skip


def _or_off(name: str, conv: Any) -> Any:
    """A bounded setting that 'off' turns off (None)."""

    def c(v: Any) -> Any:
        if v is None or (isinstance(v, str) and v.strip().lower() in ("off", "none")):
            return None
        return conv(name)(v)

    return c


def values(r: Resolver, d: MonitorConfig) -> dict[str, Any]:
    """The resolved settings, by `MonitorConfig` field."""
    return {
        "baseline_band": r.get("baseline-band", d.baseline_band, _or_off("baseline-band", bounded)),
        "baseline_doubling_ms": r.get(
            "baseline-doubling", d.baseline_doubling_ms, _or_off("baseline-doubling", seconds_ms)
        ),
        "slow_half_life_ms": r.get(
            "baseline-slow-half-life",
            d.slow_half_life_ms,
            _or_off("baseline-slow-half-life", seconds_ms),
        ),
        "breach_span": r.get("breach-span", None, bounded_int("breach-span")),
        "runaway_growth": r.get(
            "runaway-growth", d.runaway_growth, _or_off("runaway-growth", bounded)
        ),
        "runaway_step": r.get("runaway-step", d.runaway_step, bounded_int("runaway-step")),
        "runaway_steps": r.get("runaway-steps", d.runaway_steps, bounded_int("runaway-steps")),
    }


def scenario_flow(
    name: str, config: MonitorConfig, baseline: dict[str, str] | None
) -> tuple[list[FlowEvent], dict[str, str] | None]:
    """`backtest --scenario NAME`: its flow, and the baseline it starts from unless one was
    given (`--baseline`)."""
    from killswitch.core import scenarios

    try:
        scenario = scenarios.named(name)
    except ValueError as e:
        raise ConfigError(f"scenario: {e}") from None
    if baseline is None:
        baseline = scenarios.start_baseline(scenario, config)
    return scenarios.events(scenario), baseline
