"""Roster and quorum logic: which hosts are alive, which confirmed, which are missing.

Pure: it takes the host reports and confirmations already read from Redis (as plain
dicts) and the server time, and returns decisions. Containment is always judged against
the roster, never against whoever happens to be reporting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_ALIVE_MS = 1000
MAX_ALIVE_MS = 10_000  # the largest --stale-after a sidecar accepts


@dataclass(frozen=True, slots=True)
class HostStatus:
    """One roster host as the operator sees it."""

    host: str
    alive: bool
    age_s: float | None  # seconds since its last report (None: never reported)
    gate: str  # "open" | "closed" | "unknown"
    epoch: int  # the highest epoch the host has seen
    view: str  # the state the host enforces: ARMED/KILLED/UNARMED/STALE, or "" if unknown
    orders_per_s: float
    allowed: int
    blocked: int
    confirmed_epoch: int
    confirmed_ver: int
    confirmed_ms: int
    regression: str

    def to_json(self) -> dict[str, object]:
        return {
            "alive": self.alive,
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "gate": self.gate,
            "epoch": self.epoch,
            "orders_per_s": round(self.orders_per_s, 2),
            "view": self.view,
            "allowed": self.allowed,
            "blocked": self.blocked,
            "confirmed_epoch": self.confirmed_epoch,
            "regression": self.regression,
        }


@dataclass(frozen=True, slots=True)
class Quorum:
    """Who confirmed the node's current (epoch, ver), who did not."""

    roster: tuple[str, ...]
    confirmed: tuple[str, ...]
    missing: tuple[str, ...]
    last_confirm_ms: int = 0  # server time of the latest confirmation among `confirmed`
    hosts: Mapping[str, HostStatus] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return bool(self.roster) and not self.missing


def alive_bound_ms(claimed_ms: int, bound_ms: int) -> int:
    """How old a host's last report may be for it to count as alive.

    The node's configured bound decides; a host that says it goes stale sooner is held to
    its own, shorter claim. A longer claim (a misconfigured or lying host) never widens it.
    """
    return min(claimed_ms, bound_ms) if claimed_ms > 0 else bound_ms


def host_status(
    host: str,
    report: Mapping[str, str],
    confirm: Mapping[str, str],
    now_ms: int,
    bound_ms: int = MAX_ALIVE_MS,
) -> HostStatus:
    """Judge one host from its report and confirmation hashes at server time `now_ms`."""
    ts = _int(report.get("ts_ms"))
    alive_ms = alive_bound_ms(_int(report.get("stale_after_ms")) or DEFAULT_ALIVE_MS, bound_ms)
    age_ms = now_ms - ts if ts else None
    alive = age_ms is not None and age_ms <= alive_ms
    gate = report.get("gate", "unknown") if alive else "unknown"
    return HostStatus(
        host=host,
        alive=alive,
        age_s=None if age_ms is None else max(age_ms, 0) / 1000.0,
        gate=gate,
        epoch=_int(report.get("max_epoch")),
        view=report.get("view", "") if alive else "",
        orders_per_s=_float(report.get("orders_per_s")),
        allowed=_int(report.get("allowed")),
        blocked=_int(report.get("blocked")),
        confirmed_epoch=_int(confirm.get("epoch")),
        confirmed_ver=_int(confirm.get("ver")),
        confirmed_ms=_int(confirm.get("applied_ms")),
        regression=report.get("regression", "") if alive else "",
    )


def quorum(
    roster: Sequence[str],
    epoch: int,
    ver: int,
    reports: Mapping[str, Mapping[str, str]],
    confirms: Mapping[str, Mapping[str, str]],
    now_ms: int,
    bound_ms: int = MAX_ALIVE_MS,
) -> Quorum:
    """Which roster hosts confirmed (epoch, ver). Hosts not on the roster never count.

    `bound_ms` is the node's liveness bound (see `alive_bound_ms`).
    """
    hosts = {
        h: host_status(h, reports.get(h, {}), confirms.get(h, {}), now_ms, bound_ms) for h in roster
    }
    confirmed = tuple(
        h
        for h in roster
        if epoch > 0 and hosts[h].confirmed_epoch == epoch and hosts[h].confirmed_ver == ver
    )
    missing = tuple(h for h in roster if h not in confirmed)
    last = max((hosts[h].confirmed_ms for h in confirmed), default=0)
    return Quorum(tuple(roster), confirmed, missing, last, hosts)


def not_ready_for_arm(statuses: Mapping[str, HostStatus]) -> dict[str, str]:
    """Roster hosts that must block an arm, each with the reason (empty: safe to arm)."""
    problems: dict[str, str] = {}
    for h, s in statuses.items():
        if s.age_s is None:
            problems[h] = "has never reported"
        elif not s.alive:
            problems[h] = f"not reporting (last report {s.age_s:.1f}s ago)"
    return problems


def epoch_floor(statuses: Mapping[str, HostStatus]) -> int:
    """The highest epoch any host reports: a new epoch must be above it (lost-data safety)."""
    return max((s.epoch for s in statuses.values()), default=0)


def _int(v: str | None) -> int:
    try:
        return int(v or 0)
    except ValueError:
        return 0


def _float(v: str | None) -> float:
    try:
        return float(v or 0.0)
    except ValueError:
        return 0.0
