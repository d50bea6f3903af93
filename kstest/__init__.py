"""The real-process test kit: fleets, load, fault proxy, Prometheus and Sentinel harnesses.

Imported only by tests, benches and the test kit itself; nothing in the product imports it
(an import-linter contract in pyproject.toml keeps that true).
"""

from killswitch.sim.fleet import Fleet, GateClient, Proc, fleet, wait_until, wait_until_async
from kstest.hammer import Hammer, no_allow_after_first_block

__all__ = [
    "Fleet",
    "GateClient",
    "Hammer",
    "Proc",
    "fleet",
    "no_allow_after_first_block",
    "wait_until",
    "wait_until_async",
]
