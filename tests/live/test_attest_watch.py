"""Attested files re-hashed on a change notification (inotify), not only on the periodic check.

Each test runs the sidecar's real `AttestLoop` on real files with the periodic check and the
full re-hash set to an hour: a change seen within the test's deadline was seen because the
kernel reported it. No clock is asserted; the waits have deadlines far below the hour.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from killswitch.sidecar.attest import AttestLoop, Relevant, watch_roots
from kstest import wait_until_async

HOUR = 3600.0


@pytest.fixture
async def run_loop() -> AsyncIterator[Callable[[list[str]], AttestLoop]]:
    """Starts `AttestLoop`s on the given patterns (periodic check and full re-hash: one hour)
    and stops them after the test."""
    tasks: list[asyncio.Task[None]] = []

    def start(patterns: list[str]) -> AttestLoop:
        loop = AttestLoop(
            patterns, HOUR, structlog.get_logger("test"), changed=lambda: None, full_every=HOUR
        )
        tasks.append(asyncio.create_task(loop.run()))
        return loop

    yield start
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def first_release(loop: AttestLoop) -> str:
    await wait_until_async(lambda: loop.scans >= 1 and loop.watching, what="first scan, watching")
    assert not loop.current.problem, loop.current.problem
    return loop.current.release


class TestNotified:
    async def test_rewrite_in_place_is_hashed_again(
        self, tmp_path: Path, run_loop: Callable[[list[str]], AttestLoop]
    ) -> None:
        """The binary rewritten in place (same size) changes the release with no SIGHUP and no
        periodic check due for an hour."""
        binary = tmp_path / "smars-router"
        binary.write_bytes(b"power peg v1")
        loop = run_loop([str(binary)])
        before = await first_release(loop)
        binary.write_bytes(b"power peg v2")
        await wait_until_async(lambda: loop.current.release != before, what="new release")
        assert loop.notifications >= 1

    async def test_atomic_replace_is_hashed_again(
        self, tmp_path: Path, run_loop: Callable[[list[str]], AttestLoop]
    ) -> None:
        """A deploy that renames a new file over the attested one is seen too."""
        flags = tmp_path / "flags.toml"
        flags.write_text("rlp = false\n")
        loop = run_loop([str(flags)])
        before = await first_release(loop)
        staged = tmp_path / ".flags.toml.new"
        staged.write_text("rlp = true\n")
        os.replace(staged, flags)
        await wait_until_async(lambda: loop.current.release != before, what="new release")

    async def test_new_file_matching_a_glob_joins_the_release(
        self, tmp_path: Path, run_loop: Callable[[list[str]], AttestLoop]
    ) -> None:
        """A flag file created in a subdirectory a recursive glob covers joins the release."""
        (tmp_path / "flags" / "eu").mkdir(parents=True)
        (tmp_path / "flags" / "base.toml").write_text("a = 1\n")
        loop = run_loop([str(tmp_path / "flags" / "**" / "*.toml")])
        await first_release(loop)
        assert len(loop.current.files) == 1
        (tmp_path / "flags" / "eu" / "power_peg.toml").write_text("enabled = true\n")
        await wait_until_async(lambda: len(loop.current.files) == 2, what="the new flag file")

    async def test_unrelated_file_wakes_nothing(
        self, tmp_path: Path, run_loop: Callable[[list[str]], AttestLoop]
    ) -> None:
        """Writes beside the attested file (logs, temp files) are filtered out, then a write to
        the attested file is still seen."""
        binary = tmp_path / "bin"
        binary.write_bytes(b"v1")
        loop = run_loop([str(binary)])
        before = await first_release(loop)
        for i in range(20):
            (tmp_path / f"trading.{i}.log").write_text("x" * i)
        binary.write_bytes(b"v2")
        await wait_until_async(lambda: loop.current.release != before, what="new release")
        assert loop.notifications <= 2  # the binary's write, maybe split in two reports


class TestWithoutNotifications:
    async def test_missing_directory_is_logged_and_periodic_checks_go_on(
        self, tmp_path: Path
    ) -> None:
        """No directory to watch: ATTEST_WATCH_FAILED is logged, the host reports the missing
        file as its problem (it blocks), and the periodic check (here 0.1 s) still finds the
        file once it exists."""
        target = tmp_path / "later" / "bin"
        with capture_logs() as logs:
            loop = AttestLoop(
                [str(target)], 0.1, structlog.get_logger("t"), changed=lambda: None,
                full_every=HOUR,
            )  # fmt: skip
            task = asyncio.create_task(loop.run())
            try:
                await wait_until_async(lambda: loop.scans >= 1, what="first scan")
                assert "cannot read" in loop.current.problem
                await wait_until_async(
                    lambda: any(e["event"] == "ATTEST_WATCH_FAILED" for e in logs),
                    what="ATTEST_WATCH_FAILED",
                )
                target.parent.mkdir()
                target.write_bytes(b"v1")
                await wait_until_async(lambda: loop.current.release != "", what="attested")
                assert not loop.current.problem
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)


class TestWhatIsWatched:
    def test_roots(self, tmp_path: Path) -> None:
        """A file's directory; a glob's directory above its first wildcard, recursive only
        when the wildcard is not the last part; directories that do not exist are left out."""
        (tmp_path / "bin").mkdir()
        (tmp_path / "flags").mkdir()
        b, f = str(tmp_path / "bin"), str(tmp_path / "flags")
        assert watch_roots([f"{b}/router"]) == ([b], False)
        assert watch_roots([f"{f}/*.toml"]) == ([f], False)
        assert watch_roots([f"{f}/**/*.toml", f"{b}/router"]) == ([b, f], True)
        assert watch_roots([str(tmp_path / "nope" / "x")]) == ([], False)

    def test_relevant(self, tmp_path: Path) -> None:
        """The filter names attested files and glob matches only."""
        r = Relevant([f"{tmp_path}/bin/router", f"{tmp_path}/flags/*.toml"])
        assert r(None, f"{tmp_path}/bin/router")
        assert r(None, f"{tmp_path}/flags/a.toml")
        assert not r(None, f"{tmp_path}/bin/router.log")
        assert not r(None, f"{tmp_path}/flags/a.toml.swp")
