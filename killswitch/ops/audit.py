"""The `audit` command: the node's audit chain oldest first, and its verification.

`verify` walks the chain in Redis (and, given one, the aggregator's local JSONL copy) and
names the first entry that was altered, removed or inserted, or a tail that was cut off.
Plain async functions returning an `Outcome`; the CLI only parses and prints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from killswitch.core.node.bounds import parse_uint
from killswitch.core.proof import auditchain
from killswitch.ops.control import EXIT_OK, EXIT_REFUSED, Outcome
from killswitch.store.store import Store

# Fields shown as their own columns/keys; every other field is kept under "fields".
_KNOWN = ("seq", "action", "actor", "reason", "epoch", "prev_epoch", "cause", "approvers",
          "prev_state", "attempt", "refused", "scope", "scope_ver", "actor_kind", "key",
          "host")  # fmt: skip


def row(entry_id: str, f: Mapping[str, str]) -> dict[str, Any]:
    """One entry as the JSON output gives it (text exactly as stored)."""
    ts = parse_uint(f.get("ts_ms")) or parse_uint(entry_id.split("-", 1)[0]) or 0
    out: dict[str, Any] = {"id": entry_id, "time": _iso(ts), "action": f.get("action", "")}
    out["actor"] = f.get("actor", "")
    out["reason"] = f.get("reason", "")
    for k in ("seq", "epoch", "prev_epoch", "scope_ver"):
        value = parse_uint(f.get(k))
        if value is not None:
            out[k] = value
    out["actor_kind"] = f.get("actor_kind") or auditchain.actor_kind(f)
    for k in ("cause", "prev_state", "attempt", "refused", "scope", "key", "host"):
        if f.get(k):
            out[k] = f[k]
    if f.get("approvers"):
        out["approvers"] = f["approvers"].split(",")
    extra = {k: v for k, v in f.items() if k not in _KNOWN and k not in ("ts_ms", "prev", "hash")}
    if extra:
        out["fields"] = extra
    if f.get("hash"):
        out["hash"] = f["hash"]
    return out


async def audit(store: Store, limit: int | None) -> Outcome:
    entries = await store.audit(limit)
    return Outcome(EXIT_OK, {"node": store.node, "entries": [row(i, f) for i, f in entries]})


async def verify(store: Store, file: str | None = None) -> Outcome:
    """Exit 0 when the chain in Redis (and the file, if given) is whole; 4 naming the first
    bad entry otherwise."""
    entries, raw_head = await store.audit_chain()
    head = auditchain.parse_head(raw_head)
    if head is None and entries:
        verdict = auditchain.Verdict(
            False, len(entries), "", -1, "the chain head is gone: entries cannot be counted"
        )
    else:
        verdict = auditchain.verify(entries, head or auditchain.Head(0, ""))
    report: dict[str, Any] = {"node": store.node, "redis": _verdict_json(verdict)}
    ok = verdict.ok
    lines = [_verdict_line("redis", verdict)]
    if file is not None:
        fv, file_entries = verify_file(file)
        report["file"] = {"path": file, **_verdict_json(fv)}
        lines.append(_verdict_line(f"file {file}", fv))
        ok = ok and fv.ok
        missing = _missing_from_redis(file_entries, entries)
        if missing:
            report["file"]["not_in_redis"] = missing
            lines.append(
                f"FAILED: {len(missing)} entries of the file are not in Redis as written "
                f"(first: seq {missing[0]}): Redis lost or rewrote its trail"
            )
            ok = False
    report["ok"] = ok
    return Outcome(EXIT_OK if ok else EXIT_REFUSED, report, "\n".join(lines))


def read_file(path: str) -> list[tuple[str, dict[str, str]] | str]:
    """The entries of an aggregator's JSONL copy; a chain break it recorded is a str."""
    out: list[tuple[str, dict[str, str]] | str] = []
    for n, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if "break" in obj:
                out.append(f"line {n}: {obj['break']}")
                continue
            fields = {str(k): str(v) for k, v in obj["fields"]}
            out.append((str(obj["id"]), fields))
        except (ValueError, KeyError, TypeError):
            out.append(f"line {n}: not an audit entry")
    return out


def verify_file(path: str) -> tuple[auditchain.Verdict, list[tuple[str, dict[str, str]]]]:
    try:
        items = read_file(path)
    except (OSError, UnicodeDecodeError) as e:
        return auditchain.Verdict(False, 0, "", -1, f"cannot read: {e}"), []
    entries: list[tuple[str, dict[str, str]]] = []
    for item in items:
        if isinstance(item, str):
            return auditchain.Verdict(False, len(entries), "", len(entries), item), entries
        entries.append(item)
    first = parse_uint(entries[0][1].get("seq")) if entries else 1
    return auditchain.verify(entries, None, start_seq=first or 1), entries


def _missing_from_redis(
    file_entries: list[tuple[str, dict[str, str]]], redis_entries: list[tuple[str, dict[str, str]]]
) -> list[int]:
    in_redis = {f.get("seq"): f.get("hash") for _, f in redis_entries}
    return [
        parse_uint(f.get("seq")) or 0
        for _, f in file_entries
        if in_redis.get(f.get("seq")) != f.get("hash")
    ]


def _verdict_json(v: auditchain.Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": v.ok, "entries": v.entries}
    if not v.ok:
        out["bad_id"] = v.bad_id
        out["bad_index"] = v.bad_index
        out["problem"] = v.problem
    return out


def _verdict_line(what: str, v: auditchain.Verdict) -> str:
    if v.ok:
        return f"{what}: chain whole, {v.entries} entries"
    where = f"entry {v.bad_id} (#{v.bad_index + 1})" if v.bad_id else "the end of the chain"
    return f"{what}: FAILED at {where}: {v.problem}"


def _iso(ms: int) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000.0, UTC).isoformat(timespec="milliseconds")
