"""The audit hash chain, as pure functions: the canonical bytes of an entry and the walk
that finds the first entry that was altered, removed, inserted or cut off.

Pure: no Redis, no files. `store/lua/prelude.lua` builds the same bytes when it appends, so
an entry hashed there verifies here. A chain proves order and completeness only against
someone who cannot also rewrite the head (and the aggregator's local copy): see SECURITY.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CHAIN_FIELDS = ("seq", "prev", "hash")


def canonical(fields: Sequence[tuple[str, str]]) -> bytes:
    """`<bytes>:<name><bytes>:<value>` for each pair in order: no two field lists collide."""
    out = bytearray()
    for name, value in fields:
        for part in (name.encode("utf-8"), value.encode("utf-8")):
            out += str(len(part)).encode("ascii") + b":" + part
    return bytes(out)


def entry_hash(seq: str, prev: str, fields: Sequence[tuple[str, str]]) -> str:
    """The sha256 an entry must carry: over seq, prev and its own fields in stored order."""
    return hashlib.sha256(canonical([("seq", seq), ("prev", prev), *fields])).hexdigest()


@dataclass(frozen=True, slots=True)
class Head:
    """Where the chain ends, kept apart from the stream (a deleted tail or stream shows)."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """`ok`, or the first bad entry (its id, 0-based position, or "" for the head) and why."""

    ok: bool
    entries: int
    bad_id: str = ""
    bad_index: int = -1
    problem: str = ""


def verify(
    entries: Sequence[tuple[str, Mapping[str, str]]], head: Head | None, *, start_seq: int = 1
) -> Verdict:
    """Walk the chain oldest first. `head` None: no head to compare with (a local file).

    Each entry must carry seq = previous + 1 (the first `start_seq`), prev = the previous
    entry's hash, and a hash that matches its own fields.
    """
    prev = ""
    want = start_seq
    for i, (entry_id, f) in enumerate(entries):
        seq, prev_field, digest = f.get("seq"), f.get("prev"), f.get("hash")
        if seq is None or prev_field is None or digest is None:
            return Verdict(False, len(entries), entry_id, i, "not a chained entry (forged?)")
        if seq != str(want):
            what = "removed before it" if seq.isdigit() and int(seq) > want else "inserted"
            return Verdict(
                False, len(entries), entry_id, i,
                f"sequence {seq!r} where {want} belongs: an entry was {what}",
            )  # fmt: skip
        if i > 0 and prev_field != prev:
            return Verdict(False, len(entries), entry_id, i, "does not link to the entry before")
        own = [(k, v) for k, v in f.items() if k not in CHAIN_FIELDS]
        if entry_hash(seq, prev_field, own) != digest:
            return Verdict(False, len(entries), entry_id, i, "altered: hash does not match")
        prev = digest
        want += 1
    if head is not None:
        last = want - 1
        if head.seq != last or (last and head.hash != prev):
            return Verdict(
                False, len(entries), "", len(entries),
                f"chain head says {head.seq} entries, the stream ends at {last}: "
                "entries were removed from the end (or the stream deleted)",
            )  # fmt: skip
    return Verdict(True, len(entries))


def parse_head(raw: Mapping[str, str]) -> Head | None:
    """The stored head hash, None when absent; junk makes a head that cannot match."""
    if not raw:
        return None
    seq = raw.get("seq", "")
    return Head(int(seq) if seq.isascii() and seq.isdigit() and len(seq) < 16 else -1,
                raw.get("hash", ""))  # fmt: skip


SERVICE_PREFIXES = ("aggregator:", "sidecar:")
SIGNED_ACTIONS = ("arm_request", "rollout_request", "forget_request", "forget_node")


def actor_kind(fields: Mapping[str, str]) -> str:
    """How an entry's actor is known, for an entry that does not record it (written before
    `actor_kind` was): `service` (an aggregator or sidecar), `signed` (verified operator
    signatures: an arm's approvers, a signed request) or `claimed` (free text)."""
    actor = fields.get("actor", "")
    if actor.startswith(SERVICE_PREFIXES):
        return "service"
    if fields.get("approvers") or fields.get("action") in SIGNED_ACTIONS:
        return "signed"
    return "claimed"
