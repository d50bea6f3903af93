"""The version vector: which release each host runs, and whether the roster is split.

Pure: it takes the per-file digests a host computed and the releases hosts reported, and
returns digests and decisions. It never reads a file or Redis (the sidecar hashes, the
aggregator and `arm` read the reports).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

VERSION_SPLIT = "version_split"  # the trip cause, and the word `arm` refuses with
UNATTESTED = "none"  # what `releases` calls the release of a host that attests no file


def release_digest(files: Mapping[str, str]) -> str:
    """SHA-256 over the sorted `path digest` lines: the same files with the same bytes give
    the same release; a renamed, added, removed or changed file gives another one."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(f"{path}\0{files[path]}\n".encode())
    return h.hexdigest()


def releases(by_host: Mapping[str, str]) -> dict[str, list[str]]:
    """Release -> sorted hosts running it ("" is shown as `UNATTESTED`)."""
    out: dict[str, list[str]] = {}
    for host in sorted(by_host):
        out.setdefault(by_host[host] or UNATTESTED, []).append(host)
    return dict(sorted(out.items()))


@dataclass(frozen=True, slots=True)
class Split:
    """A roster running more than one release: the majority's release and the odd hosts."""

    majority: str
    odd: Mapping[str, str]  # host -> the release it runs instead

    def describe(self) -> str:
        odd = ", ".join(f"{h} runs {short(r)}" for h, r in sorted(self.odd.items()))
        return f"release split: {odd}; the rest run {short(self.majority)}"


def short(release: str) -> str:
    return (release or UNATTESTED)[:12]


def split(roster: Sequence[str], by_host: Mapping[str, str]) -> Split | None:
    """None when every roster host that reported runs one release, else the split.

    A host that never reported is left out (it is refused or blocked for that already); a
    host that reports no attested file runs the release "" and splits a roster that attests.
    The majority is the most common release (ties: the smallest digest), so the same reports
    always name the same odd hosts.
    """
    known = {h: by_host[h] for h in roster if h in by_host}
    if len(set(known.values())) <= 1:
        return None
    counts: dict[str, int] = {}
    for r in known.values():
        counts[r] = counts.get(r, 0) + 1
    majority = min(counts, key=lambda r: (-counts[r], r))
    return Split(majority, {h: r for h, r in sorted(known.items()) if r != majority})
