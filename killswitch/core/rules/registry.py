"""The registry of trip rules: every rule the `Monitor` evaluates, in evaluation order.

A new rule is a module in `core.rules.trips` exposing one `Rule`, and one line here. The
order is the order the rules are evaluated and reported in; the slow rules come first so a
tick where both windows trip names the cause the node was killed for before the fast rules
existed. `Monitor(rules=...)` takes another registry (a test's, with a rule of its own).
"""

from __future__ import annotations

from killswitch.core.rules.rule import Rule
from killswitch.core.rules.trips import (
    baseline,
    baselinefast,
    hostshare,
    hostsharefast,
    maxorders,
    maxrate,
    runaway,
)

RULES: tuple[Rule, ...] = (
    maxorders.RULE,
    baseline.RULE,
    hostshare.RULE,
    maxrate.RULE,
    baselinefast.RULE,
    hostsharefast.RULE,
    runaway.RULE,
)


def by_cause(rules: tuple[Rule, ...] = RULES) -> dict[str, Rule]:
    """The rules by their cause; a registry naming one cause twice is refused."""
    out = {r.cause: r for r in rules}
    if len(out) != len(rules):
        raise ValueError(f"two rules share a cause: {[r.cause for r in rules]}")
    return out
