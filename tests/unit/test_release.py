"""The version vector (pure) and the attestor (files on disk, no Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from killswitch.core.node.release import UNATTESTED, release_digest, releases, split
from killswitch.core.node.roster import host_status, not_ready_for_arm, reported_releases
from killswitch.sidecar.attest import AttestLoop, Attestor

ROSTER = ["or-01", "or-02", "or-03"]


class TestSplit:
    """Which roster is split, and which hosts are named odd."""

    @pytest.mark.parametrize(
        ("by_host", "odd"),
        [
            ({}, None),
            ({"or-01": "a", "or-02": "a", "or-03": "a"}, None),
            ({"or-01": "a", "or-02": "a", "or-03": "b"}, {"or-03": "b"}),
            ({"or-01": "b", "or-02": "a", "or-03": "a"}, {"or-01": "b"}),
            ({"or-01": "a", "or-02": "b"}, {"or-02": "b"}),  # a tie: the smaller digest wins
            ({"or-01": "", "or-02": "", "or-03": ""}, None),  # nobody attests: one release
            ({"or-01": "a", "or-02": "a", "or-03": ""}, {"or-03": ""}),  # unattested is odd
            ({"or-01": "a", "or-02": "a", "or-09": "b"}, None),  # off the roster: not counted
            ({"or-01": "a", "or-02": "b", "or-03": "c"}, {"or-02": "b", "or-03": "c"}),
        ],
    )
    def test_table(self, by_host: dict[str, str], odd: dict[str, str] | None) -> None:
        """Each version vector gives the split (odd hosts and their releases) in the table."""
        cut = split(ROSTER, by_host)
        assert (None if cut is None else dict(cut.odd)) == odd

    @given(st.dictionaries(st.sampled_from(ROSTER), st.sampled_from(["a", "b", "c", ""])))
    def test_split_iff_more_than_one_release(self, by_host: dict[str, str]) -> None:
        """Split exactly when two releases are reported; the odd hosts never include the majority."""
        cut = split(ROSTER, by_host)
        assert (cut is not None) == (len(set(by_host.values())) > 1)
        if cut is not None:
            assert cut.majority not in cut.odd.values()
            assert set(cut.odd) < set(by_host)
            count = list(by_host.values()).count
            assert all(count(cut.majority) >= count(r) for r in cut.odd.values())

    @given(st.dictionaries(st.sampled_from(ROSTER), st.sampled_from(["a", "b", ""])))
    def test_releases_lists_every_host_once(self, by_host: dict[str, str]) -> None:
        """`releases` maps each reported release to its hosts, every host exactly once."""
        got = releases(by_host)
        assert sorted(h for hs in got.values() for h in hs) == sorted(by_host)
        assert all((r or UNATTESTED) in got for r in by_host.values())

    def test_describe_names_the_odd_host(self) -> None:
        """The trip reason names the odd host and the start of its release."""
        cut = split(ROSTER, {"or-01": "a" * 64, "or-02": "a" * 64, "or-03": "b" * 64})
        assert cut is not None and "or-03 runs bbbbbbbbbbbb" in cut.describe()


class TestDigest:
    """The release digest covers names and bytes of every file."""

    @given(st.dictionaries(st.text(min_size=1), st.text(min_size=1), min_size=1))
    def test_any_change_changes_the_release(self, files: dict[str, str]) -> None:
        """Changing one file's digest or dropping a file gives another release; order does not."""
        base = release_digest(files)
        assert release_digest(dict(reversed(list(files.items())))) == base
        name = next(iter(files))
        assert release_digest({**files, name: files[name] + "x"}) != base
        assert release_digest({k: v for k, v in files.items() if k != name}) != base


class TestVector:
    """The version vector leaves out hosts that cannot prove their release; arm names them."""

    def test_unreadable_host_is_not_in_the_vector_and_blocks_arm(self) -> None:
        """A host reporting an attest problem is left out of the split and refuses the arm."""
        now = 10_000
        rep = {"ts_ms": str(now), "stale_after_ms": "1000", "release": "a"}
        bad = {**rep, "release": "", "attest": "attest: cannot read bin: No such file"}
        statuses = {
            "or-01": host_status("or-01", rep, {}, now),
            "or-02": host_status("or-02", bad, {}, now),
        }
        assert reported_releases(statuses) == {"or-01": "a"}
        assert "cannot read bin" in not_ready_for_arm(statuses)["or-02"]


class TestAttestor:
    """Hashing files and globs, re-hashing only on change, naming what cannot be read."""

    def test_same_bytes_same_release_and_a_change_is_seen(self, tmp_path: Path) -> None:
        """Two hosts with the same files agree; a changed size is re-hashed without force."""
        for d in ("h1", "h2"):
            (tmp_path / d).mkdir()
            (tmp_path / d / "bin").write_bytes(b"code")
            (tmp_path / d / "flags.toml").write_text("power_peg = false\n")
        cwd = os.getcwd()
        try:
            os.chdir(tmp_path / "h1")
            a1 = Attestor(["bin", "*.toml"]).scan()
            os.chdir(tmp_path / "h2")
            at = Attestor(["bin", "*.toml"])
            a2 = at.scan()
            assert a1.release == a2.release and a1.problem == "" and len(a2.files) == 2
            assert at.scan().hashed_bytes == 0  # nothing changed: nothing read
            Path("flags.toml").write_text("power_peg = true\n")
            a3 = at.scan()
            assert a3.release != a2.release and a3.hashed_bytes > 0
            assert at.scan(force=True).hashed_bytes == len(b"code") + a3.hashed_bytes
        finally:
            os.chdir(cwd)

    def test_same_size_rewrite_with_mtime_restored_is_seen(self, tmp_path: Path) -> None:
        """Rewritten in place with the same size and its mtime put back: re-hashed (ctime)."""
        f = tmp_path / "flags.toml"
        f.write_text("power_peg = false\n")
        at = Attestor([str(f)])
        before = at.scan()
        st = f.stat()
        # the kernel stamps ctime from a coarse clock: wait until a new stamp differs
        probe, deadline = tmp_path / "probe", time.monotonic() + 5.0
        while probe.touch() or probe.stat().st_ctime_ns <= st.st_ctime_ns:
            assert time.monotonic() < deadline, "the ctime clock never moved"
            time.sleep(0.001)
        with f.open("r+b") as fh:
            fh.write(b"power_peg = truee\n"[: st.st_size])
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
        after = at.scan()
        assert after.release != before.release and after.hashed_bytes == st.st_size

    async def test_loop_reads_every_file_again_on_its_full_period(self, tmp_path: Path) -> None:
        """Unchanged metadata, no SIGHUP: the loop still reads every byte every `full_every`."""
        (tmp_path / "bin").write_bytes(b"code")
        loop = AttestLoop([str(tmp_path / "bin")], 0.01, structlog.get_logger(), lambda: None,
                          full_every=0.05)  # fmt: skip
        task = asyncio.create_task(loop.run())
        reads = 0
        try:
            async with asyncio.timeout(30):
                while reads < 3:  # the first scan, then two periodic full reads
                    loop.scanned.clear()
                    await loop.scanned.wait()
                    reads += loop.current.hashed_bytes > 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert loop.scans > reads  # scans in between read nothing

    @pytest.mark.parametrize("what", ["missing", "glob", "directory"])
    def test_unreadable_names_the_file(self, tmp_path: Path, what: str) -> None:
        """A missing file, a glob matching nothing or a directory is a problem naming the path."""
        (tmp_path / "bin").write_bytes(b"x")
        target = {
            "missing": str(tmp_path / "gone"),
            "glob": str(tmp_path / "*.flags"),
            "directory": str(tmp_path),
        }[what]
        got = Attestor([str(tmp_path / "bin"), target]).scan()
        assert got.release == "" and target in got.problem
