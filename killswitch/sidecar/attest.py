"""Attestation: the SHA-256 of every file that makes up this host's release.

The scan is blocking file I/O and runs in a worker thread, never on the order path and never
inside a flush: the sync loop only ever reads the last finished `Attestation`. A file is
hashed again when its size, mtime, ctime, inode or device changed (a rewrite of the same size
with its mtime put back still moves the ctime, which no user can set), every `FULL_EVERY_S`
in full whatever its metadata says, and when a re-hash is forced (SIGHUP). A path that cannot
be read is a problem that names the file: the host blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from killswitch.core.node.release import release_digest

CHUNK = 1 << 20  # bounded memory for any file size; big reads keep the GIL released
FULL_EVERY_S = 300.0  # every file read again this often, whatever its metadata says


@dataclass(frozen=True, slots=True)
class Attestation:
    """The outcome of one scan: per-file digests, the release, or why there is none."""

    files: dict[str, str] = field(default_factory=dict)
    release: str = ""
    problem: str = ""  # "" attested; else what could not be read (names the file)
    hashed_bytes: int = 0  # bytes read by this scan (0: every file unchanged since the last)

    def files_text(self) -> str:
        """`path digest` lines, sorted: what the host report carries."""
        return "\n".join(f"{p} {d}" for p, d in sorted(self.files.items()))

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        """The host report's release fields (written by the flush script as they are)."""
        return (("release", self.release), ("files", self.files_text()), ("attest", self.problem))


PENDING = Attestation(problem="attestation: the first hash is not done yet")


class Attestor:
    """Scans `patterns` (files or globs). Call `scan()` from one thread at a time."""

    def __init__(self, patterns: Sequence[str], fixed: Mapping[str, str] | None = None) -> None:
        self.patterns = tuple(patterns)
        self.fixed = dict(fixed or {})  # digests computed elsewhere (the parsed --limits file)
        self._cache: dict[str, tuple[tuple[int, ...], str]] = {}

    def scan(self, force: bool = False) -> Attestation:
        files: dict[str, str] = dict(self.fixed)
        hashed = 0
        try:
            for path in self._expand():
                digest, n = self._digest(path, force)
                files[path] = digest
                hashed += n
        except _Unreadable as e:
            return Attestation(files, "", str(e), hashed)
        self._cache = {p: v for p, v in self._cache.items() if p in files}
        if not self.patterns and not self.fixed:
            return Attestation()
        return Attestation(files, release_digest(files), "", hashed)

    def _expand(self) -> list[str]:
        paths: list[str] = []
        for pattern in self.patterns:
            if glob.has_magic(pattern):
                found = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
                if not found:
                    raise _Unreadable(f"attest: {pattern!r} matches no file")
                paths.extend(found)
            else:
                paths.append(pattern)
        return sorted(set(paths))

    def _digest(self, path: str, force: bool) -> tuple[str, int]:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise _Unreadable(f"attest: cannot read {path}: not a regular file")
                key = _meta(st)
                cached = self._cache.get(path)
                if cached is not None and cached[0] == key and not force:
                    return cached[1], 0
                h = hashlib.sha256()
                n = 0
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
        except OSError as e:
            raise _Unreadable(f"attest: cannot read {path}: {e.strerror or e}") from None
        digest = h.hexdigest()
        try:
            same = _meta(os.stat(path)) == key
        except OSError:
            same = False
        if same:  # changed while being read: not cached, so the next scan reads it again
            self._cache[path] = (key, digest)
        return digest, n


def _meta(st: os.stat_result) -> tuple[int, ...]:
    """What a change of the file's bytes moves (ctime too: `utime` cannot put it back)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class _Unreadable(Exception):
    pass


class AttestLoop:
    """Keeps `current` up to date: a scan at start, every `interval` seconds (cheap: a stat
    per file unless one changed), every file read again every `full_every` seconds, and at
    once on `rehash()` (SIGHUP: every file read again).

    Without patterns the host attests nothing: `current` is the empty release, no problem.
    """

    def __init__(
        self,
        patterns: Sequence[str],
        interval: float,
        log: Any,
        changed: Callable[[], None],
        fixed: Mapping[str, str] | None = None,
        full_every: float = FULL_EVERY_S,
    ) -> None:
        self.attestor = Attestor(patterns, fixed) if patterns or fixed else None
        self.interval = interval
        self.full_every = full_every
        self.current = PENDING if self.attestor else Attestation()
        self.scans = 0
        self._log = log
        self._changed = changed
        self._force = asyncio.Event()
        self.scanned = asyncio.Event()  # set after every finished scan (waiters clear it)

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        return self.current.report_fields()

    def rehash(self) -> None:
        self._force.set()

    async def run(self) -> None:
        if self.attestor is None:
            return
        force = True
        loop = asyncio.get_running_loop()
        full_at = loop.time()
        while True:
            self._force.clear()
            if force or loop.time() - full_at >= self.full_every:
                force, full_at = True, loop.time()
            result = await asyncio.to_thread(self.attestor.scan, force)
            self.scans += 1
            self._publish(result, force)
            self.scanned.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._force.wait(), self.interval)
            force = self._force.is_set()

    def _publish(self, new: Attestation, forced: bool) -> None:
        old, self.current = self.current, new
        if (new.release, new.problem) == (old.release, old.problem):
            return
        if new.problem:
            self._log.error("ATTEST_FAILED", reason=new.problem, forced=forced)
        else:
            self._log.info(
                "ATTESTED", release=new.release, files=len(new.files),
                previous=old.release or None, forced=forced,
            )  # fmt: skip
        self._changed()  # report the new release on the very next round trip
