"""Attestation: the SHA-256 of every file that makes up this host's release.

The scan is blocking file I/O and runs in a worker thread, never on the order path and never
inside a flush: the sync loop only ever reads the last finished `Attestation`. A scan runs
when the kernel reports a change to an attested file (inotify, through `watchfiles`: a deploy
is seen in milliseconds), every `--attest-interval` whatever was reported, every
`FULL_EVERY_S` in full, and when a re-hash is forced (SIGHUP). A scan hashes a file again
when its size, mtime, ctime, inode or device changed (a rewrite of the same size with its
mtime put back still moves the ctime, which no user can set), or in full whatever its
metadata says. Notifications only make a scan sooner: if they cannot be had (no inotify
watches left, a directory that does not exist yet, a symlink re-pointed above the watched
directory), the periodic scans still find every change. A path that cannot be read is a
problem that names the file: the host blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import glob
import hashlib
import os
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from killswitch.core.node.release import release_digest

CHUNK = 1 << 20  # bounded memory for any file size; big reads keep the GIL released
FULL_EVERY_S = 300.0  # every file read again this often, whatever its metadata says
WATCH_STEP_MS = 10  # a change is reported once nothing more changed for this long
WATCH_DEBOUNCE_MS = 200  # at most this long while changes keep coming (a big copy)


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


def watch_roots(patterns: Sequence[str]) -> tuple[list[str], bool]:
    """(the existing directories to watch for `patterns`, whether recursively): a file's own
    directory (so a rename over it is seen), a glob's directory above its first wildcard."""
    roots: set[str] = set()
    recursive = False
    for pattern in patterns:
        path = os.path.abspath(pattern)
        if glob.has_magic(path):
            parts = path.split(os.sep)
            first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
            recursive = recursive or first < len(parts) - 1
            root = os.sep.join(parts[:first]) or os.sep
        else:
            root = os.path.dirname(path)
        if os.path.isdir(root):
            roots.add(root)
    return sorted(roots), recursive


class Relevant:
    """The notification filter: a path an attested pattern names or matches (absolute)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        absolute = [os.path.abspath(p) for p in patterns]
        self.files = frozenset(p for p in absolute if not glob.has_magic(p))
        self.globs = tuple(p for p in absolute if glob.has_magic(p))

    def __call__(self, _change: object, path: str) -> bool:
        path = os.path.abspath(path)
        return path in self.files or any(fnmatch.fnmatchcase(path, g) for g in self.globs)


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
        self._wake = asyncio.Event()  # scan now: a change was reported, or a forced re-hash
        self._stop = threading.Event()  # read by the watcher's thread
        self.notifications = 0  # change reports that woke a scan
        self.watching = False  # True while change notifications are being received
        self.scanned = asyncio.Event()  # set after every finished scan (waiters clear it)

    def report_fields(self) -> tuple[tuple[str, str], ...]:
        return self.current.report_fields()

    def rehash(self) -> None:
        self._force.set()
        self._wake.set()

    async def run(self) -> None:
        if self.attestor is None:
            return
        watcher = asyncio.create_task(self._watch(self.attestor.patterns), name="attest-watch")
        try:
            await self._scans(self.attestor)
        finally:
            self._stop.set()  # the watcher's thread sees it within WATCH_STEP_MS
            watcher.cancel()

    async def _scans(self, attestor: Attestor) -> None:
        force = True
        loop = asyncio.get_running_loop()
        full_at = loop.time()
        while True:
            self._force.clear()
            self._wake.clear()
            if force or loop.time() - full_at >= self.full_every:
                force, full_at = True, loop.time()
            result = await asyncio.to_thread(attestor.scan, force)
            self.scans += 1
            self._publish(result, force)
            self.scanned.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            force = self._force.is_set()

    async def _watch(self, patterns: Sequence[str]) -> None:
        """Wake a scan on every reported change; on failure log it and try again later (the
        periodic scans go on meanwhile)."""
        from watchfiles import awatch  # noqa: PLC0415 - Rust watcher + anyio only where a host attests

        relevant = Relevant(patterns)
        while not self._stop.is_set():
            roots, recursive = watch_roots(patterns)
            try:
                if not roots:
                    raise FileNotFoundError("no directory of an attested file exists yet")
                self.watching = True
                async for _ in awatch(
                    *roots, watch_filter=relevant, recursive=recursive, stop_event=self._stop,
                    step=WATCH_STEP_MS, debounce=WATCH_DEBOUNCE_MS,
                ):  # fmt: skip
                    self.notifications += 1
                    self._wake.set()
            except Exception as e:  # inotify limits, a vanished directory
                self._log.warning(
                    "ATTEST_WATCH_FAILED", reason=f"{type(e).__name__}: {e}"[:300],
                    fallback=f"a scan every {self.interval}s",
                )  # fmt: skip
            finally:
                self.watching = False
            await asyncio.sleep(self.full_every)

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
