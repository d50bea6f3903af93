"""Scoped kills: one host, or one symbol on every host, blocked while the node trades on.

Pure: it reads the scopes hash as plain strings and returns what one host must enforce.
The hash holds `_ver` (grows with every scoped kill and every scoped arm, so a host can
prove it applied a given change) and one field per active scope, `host:<H>` or
`symbol:<S>`, whose value is a JSON object (ver, ts_ms, actor, reason), and for each scope
lifted by two operators `lift:<kind>:<value>`, the signed proof of that lift. A host never
lifts a scope because the hash went backwards (a lower `_ver` than it has seen is ignored),
nor because a field vanished: only a verified lift proof removes a scope it enforces.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

KINDS = ("host", "symbol")
_SYMBOL = re.compile(r"[\x21-\x7e]{1,64}")  # as the gate protocol accepts a symbol
VER = "_ver"
LIFT = "lift:"  # prefix of the field holding the signed proof of a scope's lift
UNSIGNED_LIFT = "unsigned"  # a scope gone from the hash with no proof of its lift
REPLAYED_LIFT = "replayed"  # a proof that lifts an older kill of the scope than the host saw


@dataclass(frozen=True, slots=True)
class Scope:
    kind: str  # "host" | "symbol"
    value: str
    ver: int = 0
    ts_ms: int = 0
    actor: str = ""
    reason: str = ""
    cause: str = ""  # "" an operator's; "bypass": the host's network fence caught a connection

    @property
    def field(self) -> str:
        return f"{self.kind}:{self.value}"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind, "value": self.value, "ver": self.ver, "ts_ms": self.ts_ms,
            "actor": self.actor, "reason": self.reason, **({"cause": self.cause} if self.cause else {}),
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Scopes:
    ver: int = 0
    active: tuple[Scope, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)
    symbols: frozenset[str] = field(default_factory=frozenset)
    lifts: Mapping[str, str] = field(default_factory=dict)  # scope field -> proof text

    def for_host(self, host: str) -> tuple[bool, frozenset[str]]:
        """What `host` enforces: (the host itself is killed, the symbols blocked on it)."""
        return host in self.hosts, self.symbols


def parse_scopes(h: Mapping[str, str]) -> Scopes:
    """The scopes hash as read from Redis; unreadable entries still block (closing is safe)."""
    try:
        ver = int(h.get(VER) or 0)
    except ValueError:
        ver = 0
    active = []
    lifts: dict[str, str] = {}
    for key, raw in sorted(h.items()):
        if key.startswith(LIFT):
            lifts[key.removeprefix(LIFT)] = raw
            continue
        kind, sep, value = key.partition(":")
        if not sep or kind not in KINDS or not value:
            continue
        try:
            d = json.loads(raw)
            if not isinstance(d, dict):
                d = {}
        except ValueError:
            d = {}
        active.append(
            Scope(
                kind, value, _int(d.get("ver")), _int(d.get("ts_ms")),
                str(d.get("actor", "")), str(d.get("reason", "")), str(d.get("cause", ""))[:32],
            )
        )  # fmt: skip
    return _scopes(ver, active, lifts)


def _scopes(ver: int, active: list[Scope], lifts: Mapping[str, str]) -> Scopes:
    active = sorted(active, key=lambda s: s.field)
    return Scopes(
        ver,
        tuple(active),
        frozenset(s.value for s in active if s.kind == "host"),
        frozenset(canonical_symbol(s.value) for s in active if s.kind == "symbol"),
        dict(lifts),
    )


def valid_symbol(s: str) -> bool:
    return _SYMBOL.fullmatch(s) is not None


def canonical_symbol(s: str) -> str:
    """The one form symbols are compared in: ASCII upper case (`kill --symbol msft` stops
    `MSFT`, `msft` and `Msft`; a `[symbols."msft"]` limit applies to `MSFT`). Symbols are
    printable ASCII, so no Unicode case rule can make two look alike."""
    return s.upper()


def newer(seen: Scopes, read: Scopes) -> Scopes:
    """The scopes a host keeps after a read: never an older version than it has applied."""
    return read if read.ver >= seen.ver else seen


# (scope field, proof text) -> (the scopes `_ver` the proof lifts, "" when two operators
# signed the lift of exactly that field on this node; else why not, a refusal word)
LiftCheck = Callable[[str, str], tuple[int, str]]


@dataclass(frozen=True, slots=True)
class Held:
    """What a host enforces, with what it alone knows about each scope (never from Redis)."""

    scopes: Scopes = field(default_factory=Scopes)
    # scope field -> the highest `_ver` of a read that listed it: a lift signed against an
    # older version is a replay of an earlier lift, never the lift of this kill
    since: Mapping[str, int] = field(default_factory=dict)
    kept: Mapping[str, str] = field(default_factory=dict)  # field -> why its lift is refused


def enforce(held: Held, read: Scopes, check: LiftCheck) -> Held:
    """The scopes a host enforces after a read at least as new as the one it applied.

    Every scope the read lists, plus every scope held that the read lacks unless the read
    carries a proof, signed by two operators, of its lift at a `_ver` at least as new as any
    read that listed it. Closing needs no proof; opening does.
    """
    since = {s.field: max(held.since.get(s.field, 0), read.ver) for s in read.active}
    active = list(read.active)
    kept: dict[str, str] = {}
    for s in held.scopes.active:
        if s.field in since:
            continue
        floor = held.since.get(s.field, 0)
        proof = read.lifts.get(s.field)
        lifted, why = check(s.field, proof) if proof is not None else (0, UNSIGNED_LIFT)
        if not why and lifted < floor:
            why = REPLAYED_LIFT
        if why:
            active.append(s)
            since[s.field] = floor
            kept[s.field] = why
    return Held(_scopes(read.ver, active, read.lifts), since, kept)


def proven(
    kind: str,
    value: str,
    ver: int,
    roster: tuple[str, ...],
    applied: Mapping[str, int],
    stored_ver: int | None = None,
) -> tuple[list[str], list[str]]:
    """(hosts that applied scope version `ver`, hosts that must and have not yet).

    A host scope is proven by that host; a symbol scope by every roster host. A host that
    applied a version above `stored_ver` (the `_ver` Redis holds now) saw scopes Redis has
    since lost; it ignores the lower versions that follow, so its report proves none of them.
    """
    need = [value] if kind == "host" else list(roster)
    done = [
        h for h in need if ver <= applied.get(h, 0) and not ahead(applied.get(h, 0), stored_ver)
    ]
    return done, [h for h in need if h not in done]


def ahead(applied: int, stored_ver: int | None) -> bool:
    """True when a host applied a scopes version above the one Redis holds (Redis lost it)."""
    return stored_ver is not None and applied > stored_ver


def _int(v: object) -> int:
    try:
        return int(v)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return 0


def held_json(held: Held) -> dict[str, object]:
    """What a host writes to its local state file so a restart keeps enforcing its scoped
    kills (the lift proofs stay in Redis: a lift is verified when read, never remembered)."""
    return {
        "ver": held.scopes.ver,
        "active": [s.to_json() for s in held.scopes.active],
        "since": dict(held.since),
        "kept": dict(held.kept),
    }


def held_from_json(d: Mapping[str, object]) -> Held:
    """The scoped kills a host wrote down (junk entries are dropped; an empty dict: none)."""
    raw = d.get("active")
    active = [
        Scope(
            str(a["kind"]),
            str(a["value"]),
            _int(a.get("ver")),
            _int(a.get("ts_ms")),
            str(a.get("actor", "")),
            str(a.get("reason", "")),
        )
        for a in (raw if isinstance(raw, list) else [])
        if isinstance(a, dict) and a.get("kind") in KINDS and a.get("value")
    ]
    since, kept = d.get("since"), d.get("kept")
    return Held(
        _scopes(_int(d.get("ver")), active, {}),
        {str(k): _int(v) for k, v in since.items()} if isinstance(since, dict) else {},
        {str(k): str(v) for k, v in kept.items()} if isinstance(kept, dict) else {},
    )
