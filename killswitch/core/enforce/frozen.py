"""Which hosts still owe a kill's flight recorder file: pure, over the hosts' report and
confirmation hashes as read from Redis (no I/O here).

A host confirms a kill on the round trip that applies it and starts freezing its ring then;
the frozen file's name and sha256 reach its confirmation a round trip after the file exists
(`sidecar.recording`). `kill` waits for them, within its timeout, so its report names each
host's file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def freezing(
    hosts: Iterable[str],
    epoch: int,
    reports: Mapping[str, Mapping[str, str]],
    confirms: Mapping[str, Mapping[str, str]],
) -> tuple[str, ...]:
    """The hosts that began freezing the kill of `epoch` (their report's `recorder_epoch`)
    and whose confirmation of that epoch names no frozen file yet. A host whose freeze
    failed (`recorder_failed`), or that runs no recorder, owes nothing."""
    e = str(epoch)
    owed = []
    for h in hosts:
        report, confirm = reports.get(h, {}), confirms.get(h, {})
        if report.get("recorder_epoch") != e or report.get("recorder_failed"):
            continue
        if confirm.get("epoch") == e and confirm.get("recorder_file"):
            continue
        owed.append(h)
    return tuple(owed)
