"""`LocalState`: the sidecar's on-disk memory of the highest epoch, so restarts cannot forget a kill."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from killswitch.core.node.state import NodeState
from killswitch.store.localstate import LocalState, prepare_dir


class TestLocalState:
    @pytest.mark.parametrize(
        ("epoch", "state"),
        [(0, None), (1, NodeState.ARMED), (7, NodeState.KILLED), (2**53, NodeState.ARMED)],
    )
    def test_round_trip(self, tmp_path: Path, epoch: int, state: NodeState | None) -> None:
        """What save() wrote, load() reads back, with no problem reported."""
        ls = LocalState(tmp_path, "smars", "or-01")
        ls.save(epoch, state)
        assert LocalState(tmp_path, "smars", "or-01").load() == (epoch, state, "")

    def test_overwrite_keeps_latest(self, tmp_path: Path) -> None:
        """A later save replaces the earlier one."""
        ls = LocalState(tmp_path, "smars", "or-01")
        ls.save(3, NodeState.ARMED)
        ls.save(4, NodeState.KILLED)
        assert ls.load() == (4, NodeState.KILLED, "")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A host that never saved anything starts from epoch 0 with no problem."""
        assert LocalState(tmp_path / "nowhere", "smars", "or-01").load() == (0, None, "")

    def test_save_creates_directory(self, tmp_path: Path) -> None:
        """save() creates the state directory if needed."""
        ls = LocalState(tmp_path / "a" / "b", "smars", "or-01")
        ls.save(2, NodeState.ARMED)
        assert ls.path.parent.is_dir()
        assert ls.load() == (2, NodeState.ARMED, "")

    def test_atomic_write_leaves_no_tmp(self, tmp_path: Path) -> None:
        """After save() only the state file itself is left; a stranger's temp file is not used."""
        ls = LocalState(tmp_path, "smars", "or-01")
        leftover = ls.path.with_suffix(".tmp")
        leftover.write_text("half-written by a crashed run")
        ls.save(5, NodeState.KILLED)
        ls.save(6, NodeState.ARMED)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ls.path.name, leftover.name])
        assert leftover.read_text() == "half-written by a crashed run"
        assert json.loads(ls.path.read_text()) == {"max_epoch": 6, "max_state": "ARMED"}

    def test_file_mode_is_0600_whatever_the_umask(self, tmp_path: Path) -> None:
        """The state file is readable and writable by its owner only, even under umask 000."""
        old = os.umask(0)
        try:
            LocalState(tmp_path / "d", "smars", "or-01").save(3, NodeState.ARMED)
        finally:
            os.umask(old)
        path = tmp_path / "d" / "smars@or-01.json"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    def test_save_into_unwritable_place_raises_oserror_and_keeps_old(self, tmp_path: Path) -> None:
        """A directory in the file's place makes save() raise OSError and leaves no temp file."""
        ls = LocalState(tmp_path, "smars", "or-01")
        ls.path.mkdir()
        with pytest.raises(OSError):
            ls.save(4, NodeState.KILLED)
        assert sorted(p.name for p in tmp_path.iterdir()) == [ls.path.name]

    def test_prepare_dir_reports_unusable_directory(self, tmp_path: Path) -> None:
        """prepare_dir() says why a path under a regular file cannot hold state; '' when fine."""
        blocker = tmp_path / "file"
        blocker.write_text("x")
        problem = prepare_dir(blocker / "state")
        assert "cannot use" in problem and str(blocker) in problem
        assert prepare_dir(tmp_path / "ok") == ""
        assert list((tmp_path / "ok").iterdir()) == []  # the probe file is gone

    def test_temp_names_are_unique_per_save(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two writers in one directory never share a temporary file (a fixed name would)."""
        a = LocalState(tmp_path, "smars", "or-01")
        b = LocalState(tmp_path, "smars", "or-01")
        seen: set[str] = set()
        real_replace = os.replace

        def spy(src: str, dst: str) -> None:
            seen.add(os.path.basename(src))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", spy)
        for i in range(5):
            a.save(i, NodeState.ARMED)
            b.save(i, NodeState.KILLED)
        assert len(seen) == 10

    def test_files_are_per_node_and_host(self, tmp_path: Path) -> None:
        """Two hosts (or two nodes) sharing a directory keep separate epochs."""
        LocalState(tmp_path, "smars", "or-01").save(9, NodeState.KILLED)
        LocalState(tmp_path, "smars", "or-02").save(3, NodeState.ARMED)
        LocalState(tmp_path, "algo", "or-01").save(1, NodeState.ARMED)
        assert LocalState(tmp_path, "smars", "or-01").load() == (9, NodeState.KILLED, "")
        assert LocalState(tmp_path, "smars", "or-02").load() == (3, NodeState.ARMED, "")
        assert LocalState(tmp_path, "algo", "or-01").load() == (1, NodeState.ARMED, "")

    def test_dotted_names_do_not_collide(self, tmp_path: Path) -> None:
        """Names may contain dots, so node 'a.b'/host 'c' and node 'a'/host 'b.c' must not share a file."""
        LocalState(tmp_path, "smars.east", "or-01").save(9, NodeState.KILLED)
        other = LocalState(tmp_path, "smars", "east.or-01")
        assert other.load() == (0, None, "")

    @pytest.mark.parametrize(
        ("content", "why"),
        [
            pytest.param("{not json", "", id="not-json"),
            pytest.param("", "", id="empty"),
            pytest.param("[1, 2]", "", id="list"),
            pytest.param("null", "", id="null"),
            pytest.param('{"max_state": "KILLED"}', "max_epoch", id="no-epoch"),
            pytest.param('{"max_epoch": "seven", "max_state": null}', "seven", id="epoch-word"),
            pytest.param('{"max_epoch": -3, "max_state": "KILLED"}', "negative", id="negative"),
            pytest.param('{"max_epoch": 4, "max_state": "DEAD"}', "DEAD", id="bad-state"),
            pytest.param('{"max_epoch": NaN, "max_state": "KILLED"}', "", id="nan-epoch"),
        ],
    )
    def test_corrupt_file_is_a_problem(self, tmp_path: Path, content: str, why: str) -> None:
        """An unreadable file gives epoch 0 and a problem naming the file, never an exception."""
        ls = LocalState(tmp_path, "smars", "or-01")
        ls.path.write_text(content)
        epoch, state, problem = ls.load()
        assert (epoch, state) == (0, None)
        assert str(ls.path) in problem
        assert "unreadable" in problem
        assert why in problem

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(b'{"max_epoch": 5, "max_state": "KILL\xff\xfeED"}', id="invalid-utf8"),
            pytest.param(b'{"max_epoch": 1e400, "max_state": "KILLED"}', id="infinite-epoch"),
            pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested"),
        ],
    )
    def test_damaged_bytes_are_a_problem_not_a_crash(self, tmp_path: Path, content: bytes) -> None:
        """Disk damage (bad bytes, absurd numbers) is reported as a problem, not raised at boot."""
        ls = LocalState(tmp_path, "smars", "or-01")
        ls.path.write_bytes(content)
        epoch, state, problem = ls.load()
        assert (epoch, state) == (0, None)
        assert "unreadable" in problem
