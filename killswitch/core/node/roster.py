"""Roster and quorum logic: which hosts are alive, which confirmed, which are missing.

Pure: it takes the host reports and confirmations already read from Redis (as plain
dicts) and the server time, and returns decisions. Containment is always judged against
the roster, never against whoever happens to be reporting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from killswitch.core.node.bounds import parse_float, parse_uint, plausible_epoch, uint_or
from killswitch.core.settings.options import bound, default_ms, to_ms

DEFAULT_ALIVE_MS = default_ms("stale-after")  # the node's liveness bound, `--stale-after`
MAX_REFUSAL = 64  # a host's arm refusal is a short name; junk written there stays short
MAX_ALIVE_MS = to_ms(bound("stale-after").hi)  # the largest --stale-after a sidecar accepts
MAX_RELEASE = 64  # a sha256 in hex
MAX_ATTEST = 512  # "attest: cannot read PATH: why"
MAX_FILES, MAX_FILES_TEXT = 256, 64 * 1024  # attested files shown per host


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
    cancels: int = 0
    limited: int = 0  # orders refused by a local pre-trade limit (part of `blocked`)
    subscribers: int = 0  # trading processes subscribed to its gate's state
    flat_epoch: int = 0  # the highest kill epoch its trading processes proved flat
    on_kill_epoch: int = 0
    on_kill_status: str = ""
    limits_digest: str = ""
    junk: tuple[str, ...] = ()  # report/confirmation fields that were not bounded integers
    reported_gate: str = ""  # the gate in the host's last report, alive or not
    proof: str = ""  # why the host refuses the current arm ("" none): unsigned, unlisted, ...
    release: str = ""  # the release the host last attested ("" none)
    files: str = ""  # `path digest` lines of its attested files
    attest: str = ""  # which attested file it cannot read ("" none)
    # scoped kills it still enforces though Redis no longer lists them (no verified lift)
    scope_kept: tuple[str, ...] = ()
    boot: str = ""  # the boot id it reports: an arm signs it, a new one needs `arm --host`
    wire: int = 0  # orders its FIX gateway forwarded to a venue
    fence: dict[str, object] | None = None  # its network fence (core.enforce.fence); None: none
    metrics: str = ""  # its metrics address (where `killswitch recorder --node` reads it)
    # the flight recorder's frozen file of the confirmed kill, its sha256, and whether the
    # records after the kill are in it yet ("" none)
    recorder_file: str = ""
    recorder_digest: str = ""
    recorder_complete: bool = False
    # why a host that is not alive cannot make its round trip: its Functions library is not
    # loaded ("" none, and never shown for a live host)
    functions: str = ""
    # why a host that is not alive cannot make its round trip: its Redis user lacks a
    # permission (NOPERM), and the ACL rule to add ("" none, never shown for a live host)
    acl: str = ""

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
            "cancels": self.cancels,
            "limited": self.limited,
            "subscribers": self.subscribers,
            "flat_epoch": self.flat_epoch,
            "on_kill": {"epoch": self.on_kill_epoch, "status": self.on_kill_status},
            "limits_digest": self.limits_digest,
            **({"junk": list(self.junk)} if self.junk else {}),
            "proof": self.proof,
            "release": self.release,
            "files": dict(line.rsplit(" ", 1) for line in self.files.splitlines() if " " in line),
            "attest": self.attest,
            "scope_kept": list(self.scope_kept),
            "boot": self.boot,
            "wire": self.wire,
            **({"fence": self.fence} if self.fence else {}),
            "metrics": self.metrics,
            **({"functions": self.functions} if self.functions else {}),
            **({"acl": self.acl} if self.acl else {}),
            "recorder": {
                "file": self.recorder_file,
                "digest": self.recorder_digest,
                "complete": self.recorder_complete,
            }
            if self.recorder_file
            else None,
        }


@dataclass(frozen=True, slots=True)
class Quorum:
    """Who confirmed the node's current (epoch, ver), who did not."""

    roster: tuple[str, ...]
    confirmed: tuple[str, ...]
    missing: tuple[str, ...]
    last_confirm_ms: int = 0  # server time of the latest confirmation among `confirmed`
    hosts: Mapping[str, HostStatus] = field(default_factory=dict)
    # confirmed (epoch, ver) in its confirmation hash, but the host's own report disagrees:
    # not counted, and named (a hand-written confirmation, or a host that changed its mind)
    contradicted: Mapping[str, str] = field(default_factory=dict)

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
    junk: list[str] = []

    def num(source: Mapping[str, str], name: str, label: str) -> int:
        raw = source.get(name)
        if raw in (None, ""):
            return 0
        value = parse_uint(raw)
        if value is None:
            junk.append(label)
            return 0
        return value

    ts = num(report, "ts_ms", "ts_ms")
    claimed_ms = num(report, "stale_after_ms", "stale_after_ms") or DEFAULT_ALIVE_MS
    alive_ms = alive_bound_ms(claimed_ms, bound_ms)
    age_ms = now_ms - ts if ts else None
    # a report stamped in the future (written by hand) is not a live host
    alive = age_ms is not None and -alive_ms <= age_ms <= alive_ms
    gate = report.get("gate", "unknown") if alive else "unknown"
    return HostStatus(
        host=host,
        alive=alive,
        age_s=None if age_ms is None else max(age_ms, 0) / 1000.0,
        gate=gate,
        epoch=num(report, "max_epoch", "max_epoch"),
        view=report.get("view", "") if alive else "",
        orders_per_s=parse_float(report.get("orders_per_s")),
        allowed=num(report, "allowed", "allowed"),
        blocked=num(report, "blocked", "blocked"),
        confirmed_epoch=num(confirm, "epoch", "confirm.epoch"),
        confirmed_ver=num(confirm, "ver", "confirm.ver"),
        confirmed_ms=num(confirm, "applied_ms", "confirm.applied_ms"),
        regression=report.get("regression", "") if alive else "",
        cancels=_int(report.get("cancels")),
        limited=_int(report.get("limited")),
        subscribers=_int(report.get("subscribers")),
        flat_epoch=_int(report.get("flat_epoch")),
        on_kill_epoch=_int(report.get("on_kill_epoch")),
        on_kill_status=report.get("on_kill_status", ""),
        limits_digest=report.get("limits_digest", ""),
        junk=tuple(junk),
        reported_gate=report.get("gate", ""),
        proof=report.get("proof", "")[:MAX_REFUSAL] if alive else "",
        release=report.get("release", "")[:MAX_RELEASE],
        files="\n".join(report.get("files", "")[:MAX_FILES_TEXT].splitlines()[:MAX_FILES]),
        attest=report.get("attest", "")[:MAX_ATTEST] if alive else "",
        scope_kept=tuple(report.get("scope_kept", "")[:MAX_FILES_TEXT].split()[:MAX_FILES]),
        boot=report.get("boot_id", "")[:MAX_RELEASE],
        wire=_int(report.get("wire")),
        fence=fence_report(report),
        metrics=report.get("metrics", "")[:MAX_ATTEST],
        recorder_file=confirm.get("recorder_file", "")[:MAX_ATTEST],
        recorder_digest=confirm.get("recorder_digest", "")[:MAX_RELEASE],
        recorder_complete=confirm.get("recorder_complete") == "1",
        functions="" if alive else report.get("functions", "")[:MAX_ATTEST],
        acl="" if alive else report.get("acl", "")[:MAX_ATTEST],
    )


def contradiction(s: HostStatus, state: str, epoch: int) -> str:
    """Why the host's own report contradicts its confirmation of `state` at `epoch` ("" when
    it agrees). A kill is confirmed by a closed gate at that epoch or later; an arm by a report
    at that epoch or later (its gate may be closed by a scoped kill, a limit or a stale
    lease: closing is always safe, so only a kill's proof needs the gate itself)."""
    if state == "KILLED":
        if s.reported_gate != "closed":
            return f"its report says gate {s.reported_gate or 'unknown'}"
        if s.epoch < epoch:
            return f"its report says epoch {s.epoch}, below {epoch}"
    elif state == "ARMED" and s.epoch < epoch:
        return f"its report says epoch {s.epoch}, below {epoch}"
    return ""


def quorum(
    roster: Sequence[str],
    epoch: int,
    ver: int,
    reports: Mapping[str, Mapping[str, str]],
    confirms: Mapping[str, Mapping[str, str]],
    now_ms: int,
    state: str = "KILLED",
    bound_ms: int = MAX_ALIVE_MS,
) -> Quorum:
    """Which roster hosts confirmed (epoch, ver) of `state`, cross-checked against each host's
    own report. Hosts not on the roster never count.

    `bound_ms` is the node's liveness bound (see `alive_bound_ms`).
    """
    hosts = {
        h: host_status(h, reports.get(h, {}), confirms.get(h, {}), now_ms, bound_ms) for h in roster
    }
    claimed = [
        h
        for h in roster
        if epoch > 0 and hosts[h].confirmed_epoch == epoch and hosts[h].confirmed_ver == ver
    ]
    contradicted = {h: why for h in claimed if (why := contradiction(hosts[h], state, epoch))}
    confirmed = tuple(h for h in claimed if h not in contradicted)
    missing = tuple(h for h in roster if h not in confirmed)
    last = max((hosts[h].confirmed_ms for h in confirmed), default=0)
    return Quorum(tuple(roster), confirmed, missing, last, hosts, contradicted)


def flat_hosts(
    roster: Sequence[str], state: str, epoch: int, hosts: Mapping[str, HostStatus]
) -> list[str]:
    """Roster hosts whose trading processes proved flat for the current kill (KILLED only)."""
    if state != "KILLED" or epoch <= 0:
        return []
    return [h for h in roster if h in hosts and hosts[h].flat_epoch == epoch]


def not_ready_for_arm(statuses: Mapping[str, HostStatus]) -> dict[str, str]:
    """Roster hosts that must block an arm, each with the reason (empty: safe to arm)."""
    problems: dict[str, str] = {}
    for h, s in statuses.items():
        if s.age_s is None:
            problems[h] = "has never reported"
        elif not s.alive:
            problems[h] = f"not reporting (last report {s.age_s:.1f}s ago)"
        elif s.attest:
            problems[h] = f"cannot prove its release ({s.attest})"
        elif not s.boot:
            problems[h] = "reports no boot id (a sidecar older than fresh proofs): upgrade it"
    return problems


def reported_releases(statuses: Mapping[str, HostStatus]) -> dict[str, str]:
    """host -> the release it last reported: the version vector.

    Hosts that never reported, or that cannot read an attested file right now, are left out:
    they block on their own, and a host whose file vanished must not kill its peers.
    """
    return {h: s.release for h, s in statuses.items() if s.age_s is not None and not s.attest}


def epoch_floor(statuses: Mapping[str, HostStatus], stored: int = 0) -> int:
    """The highest epoch any host reports: a new epoch must be above it (lost-data safety).

    With a stored epoch, a report more than MAX_EPOCH_JUMP above it is ignored (see
    `implausible_reports`): one host's forged report must not fling the node's epoch.
    """
    return max(
        (s.epoch for s in statuses.values() if not stored or plausible_epoch(s.epoch, stored)),
        default=0,
    )


def implausible_reports(statuses: Mapping[str, HostStatus], stored: int) -> list[str]:
    """Hosts whose reported epoch is too far above the stored one to be believed."""
    return sorted(
        h
        for h, s in statuses.items()
        if stored and s.epoch and not plausible_epoch(s.epoch, stored)
    )


def _int(v: str | None) -> int:
    return uint_or(v)


def fence_report(report: Mapping[str, str]) -> dict[str, object] | None:
    """A host's fence as `status --json` shows it (`hosts[H].fence`); None: no `--fence`."""
    state = report.get("fence", "")
    if state not in ("standing", "killed", "failed"):
        return None
    return {
        "state": state,
        "epoch": uint_or(report.get("fence_epoch")),  # the kill the kill fence was proven for
        "refused": uint_or(report.get("fence_refused")),
        "problem": report.get("fence_problem", "")[:300],
        "bypass": report.get("bypass", "")[:100],
    }
