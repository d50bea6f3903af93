"""`killswitch recorder`: several hosts' flight recorder files merged into one timeline.

Files given on the command line, or (`--node N` without files) every host's ring pulled from
its sidecar's `GET /recorder`. A file of another format version is refused in one line
(exit 2); a file that cannot be read, or a host that cannot be reached, exits 1.
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from killswitch.cli.exits import fail
from killswitch.core.enforce.recfmt import Decoded, Entry, FormatError, decode
from killswitch.core.enforce.timeline import NS, Span, select
from killswitch.ops.control import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from killswitch.runtime.config import ConfigError, Resolver

COLUMNS = ("time", "host", "source", "decision", "reason", "epoch", "order_id", "symbol",
           "side", "qty", "price", "release", "limits")  # fmt: skip
DEFAULT_SPAN_S = 60  # --around on a ring whose header names no freeze span


def run(r: Resolver, redis_url: str, files: Sequence[str]) -> int:
    """The verb (flags from the table of options, `core.settings.options`; FILE... positional)."""
    epoch: int | None = r.get("around")
    if r.get("json") and r.get("csv"):
        raise ConfigError("recorder: --json and --csv exclude each other")
    span = Span(
        since_ns=_time(r, "since"),
        until_ns=_time(r, "until"),
        hosts=frozenset(r.get("host") or ()),  # flag only: KILLSWITCH_HOST is a sidecar's own
    )
    decoded: list[Decoded] = []
    code = EXIT_OK
    if files:
        for path in files:
            try:
                with open(path, "rb") as f:
                    decoded.append(decode(f.read()))
            except FormatError as e:
                return fail("recorder", f"{path}: {e}", EXIT_USAGE)
            except OSError as e:
                return fail("recorder", f"{path}: cannot read: {e.strerror or e}", EXIT_FAILED)
    else:
        node = r.get("node")
        if node is None:
            raise ConfigError("recorder: give FILE... or --node N (every host's ring, pulled)")
        code = _pull(node, redis_url, epoch, decoded)
        if not decoded:
            return code or EXIT_FAILED
    entries = select(decoded, span, epoch, DEFAULT_SPAN_S)
    skipped = {d.header.host: d.skipped for d in decoded if d.skipped}
    if r.get("json"):
        print(json.dumps({"records": [_row(e) for e in entries], "skipped": skipped}))
    elif r.get("csv"):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        w.writerows([_row(e)[c] for c in COLUMNS] for e in entries)
        sys.stdout.write(buf.getvalue())
    else:
        sys.stdout.write(table(entries))
        for host, n in sorted(skipped.items()):
            print(f"({host}: {n} torn or overwritten record(s) skipped)", file=sys.stderr)
    return code


def _pull(node: str, redis_url: str, epoch: int | None, out: list[Decoded]) -> int:
    import asyncio

    from redis.exceptions import RedisError

    from killswitch.ops import recorderpull

    try:
        addresses = asyncio.run(recorderpull.metrics_addresses(redis_url, node))
    except (RedisError, OSError) as e:
        from killswitch.store.redisconn import classify

        return fail("recorder", classify(e).line(redis_url), EXIT_FAILED)
    if not addresses:
        return fail("recorder", f"node {node}: no host reports to pull from", EXIT_FAILED)
    code = EXIT_OK
    for host, got in asyncio.run(recorderpull.pull(addresses, epoch)).items():
        try:
            if isinstance(got, str):
                raise OSError(got)
            out.append(decode(got))
        except (FormatError, OSError) as e:
            print(f"killswitch recorder: {node}/{host}: {e}", file=sys.stderr)
            code = EXIT_FAILED
    return code


def _time(r: Resolver, name: str) -> int | None:
    raw = r.get(name)
    if raw is None:
        return None
    try:
        return when_ns(raw)
    except ValueError as e:
        raise ConfigError(f"{name}: bad value {raw!r}: {e}") from None


def when_ns(v: Any) -> int:
    """ISO 8601 (UTC when no zone is given) or unix seconds, as wall ns."""
    text = str(v).strip()
    try:
        return round(float(text) * NS)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("an ISO 8601 time (2026-12-07T08:30:00Z) or unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return calendar.timegm(t.utctimetuple()) * NS + t.microsecond * 1000


def iso_ns(t_ns: int) -> str:
    s, ns = divmod(t_ns, NS)
    return datetime.fromtimestamp(s, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ns:09d}Z"


def _row(e: Entry) -> dict[str, Any]:
    return {"time": iso_ns(e.t_ns), **e.to_json()}


_FMT: dict[str, Callable[[Any], str]] = {"price": lambda p: f"{p:g}" if p else "-"}


def table(entries: Sequence[Entry]) -> str:
    """The text table: one line per record, oldest first, columns sized to fit."""
    rows = [[c.upper() for c in COLUMNS]]
    for e in entries:
        d = _row(e)
        rows.append([_FMT.get(c, _cell)(d[c]) for c in COLUMNS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]  # fmt: skip
    return "\n".join(lines) + "\n"


def _cell(v: Any) -> str:
    text = str(v) if v not in ("", None) else "-"
    return text.encode("ascii", "backslashreplace").decode("ascii")
