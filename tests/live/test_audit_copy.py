"""The aggregator's local audit copy read whatever it holds (issue 27): other chains, break
markers, junk, a torn last line. Nothing in it raises, no entry is lost, and a copy of
another chain than Redis's is rotated aside, kept, and replaced by a fresh copy.

Parsing is pure (no server); the mirror runs against the suite's real redis-server.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from killswitch.aggregator.auditlog import AuditMirror, history
from killswitch.core.proof import auditcopy
from killswitch.ops import audit as ops_audit
from killswitch.store.store import Store
from kstest.auditcopies import (
    JUNK_LINES,
    Recorder,
    copies,
    leftover_copy,
    orphans_of,
)

_nodes = itertools.count(1)


class TestParse:
    """`core.proof.auditcopy.parse` never raises and keeps every entry, of every chain."""

    @given(st.text(max_size=400))
    def test_any_text_is_read(self, text: str) -> None:
        """Any text parses; every non-blank line is an entry, a marker or counted junk."""
        c = auditcopy.parse(text)
        lines = [ln for ln in text.split("\n") if ln.strip()]
        assert len(c.entries) + c.breaks + c.junk == len(lines)
        assert c.torn == (bool(text) and not text.endswith("\n"))

    @given(st.lists(st.sampled_from(JUNK_LINES), max_size=8), st.integers(0, 3))
    def test_entries_survive_any_junk_around_them(self, junk: list[str], at: int) -> None:
        """Every entry of both chains is kept, in order, whatever junk lies between them."""
        lines = leftover_copy().splitlines()
        lines[at:at] = junk
        c = auditcopy.parse("\n".join(lines))
        assert [e.fields["action"] for e in c.entries if "action" in e.fields] == [
            "roster", "arm", "rollout_complete", "roster",
        ]  # fmt: skip
        assert c.breaks >= 1 and c.current[-1].fields["actor"] == "aggregator:old"

    def test_torn_last_line_is_junk_and_said(self) -> None:
        """A last line cut short is counted as junk and marked torn; the lines before it stay."""
        text = leftover_copy()[:-20]
        c = auditcopy.parse(text)
        assert c.torn and c.junk == 1 and len(c.entries) == 3


async def _changes(store: Store) -> None:
    await store.set_roster(["h1"], "test")
    await store.kill(actor="alice", reason="one", cause="operator", floor=0)


class TestRotation:
    """A copy that Redis's chain does not continue is kept aside and a fresh copy started."""

    async def test_leftover_copy_is_rotated_and_the_fresh_copy_verifies(
        self, redis: Redis, node: str, tmp_path: Path
    ) -> None:
        """The old copy (two chains and a break) moves to `.orphaned-<time>` unchanged,
        AUDIT_COPY_ROTATED names both files, the new file holds Redis's chain and verifies."""
        store = Store(redis, node)
        await _changes(store)
        path = tmp_path / "audit.jsonl"
        path.write_text(leftover_copy())
        log = Recorder()
        mirror = AuditMirror(store, str(path), log)
        assert await mirror.sync() == 2
        [rotated] = log.named("AUDIT_COPY_ROTATED")
        [orphan] = orphans_of(path)
        assert rotated["moved_to"] == str(orphan) and rotated["file"] == str(path)
        assert orphan.read_text() == leftover_copy()
        assert mirror.rotations == 1 and mirror.breaks == 0
        verdict, entries = ops_audit.verify_file(str(path))
        assert verdict.ok and len(entries) == 2
        # the rotated copy's history is still the aggregator's: its finished rollout counts
        assert any(e.get("rollout") == "4" for e in history(str(path)))

    async def test_own_copy_with_junk_and_a_torn_line_is_kept(
        self, redis: Redis, node: str, tmp_path: Path
    ) -> None:
        """A copy of Redis's own chain with junk and a torn last line is not rotated; the next
        entry starts on its own line, so nothing copied later is lost to the torn one."""
        store = Store(redis, node)
        await _changes(store)
        path = tmp_path / "audit.jsonl"
        await AuditMirror(store, str(path), Recorder()).sync()
        with path.open("a") as fh:
            fh.write("junk line\n" + '{"id": "1-0", "fie')  # a crash mid-write
        await store.kill(actor="bob", reason="two", cause="operator", floor=0)
        log = Recorder()
        mirror = AuditMirror(store, str(path), log)
        assert await mirror.sync() == 1
        assert not log.named("AUDIT_COPY_ROTATED") and log.named("AUDIT_COPY_JUNK")
        c = auditcopy.parse(path.read_text())
        assert [e.fields["seq"] for e in c.entries] == ["1", "2", "3"] and c.junk == 2
        assert not orphans_of(path)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(copies())
    def test_any_leftover_copy_ends_in_a_copy_of_redis_chain(
        self, redis_url: str, tmp_path: Path, raw: bytes
    ) -> None:
        """Whatever the file holds: the mirror neither raises nor loses what the file held
        (the file or its rotated copy keeps every byte), and its current chain is Redis's."""
        node = f"junkcopy{next(_nodes)}"
        path = tmp_path / f"{node}.jsonl"
        path.write_bytes(raw)

        async def run() -> None:
            redis = Redis.from_url(redis_url, decode_responses=True)
            try:
                store = Store(redis, node)
                await _changes(store)
                mirror = AuditMirror(store, str(path), Recorder())
                await mirror.sync()
                orphans = orphans_of(path)
                kept = orphans[0].read_bytes() if orphans else path.read_bytes()
                assert kept.startswith(raw)
                c = auditcopy.parse(path.read_text("utf-8", errors="replace"))
                assert [e.fields["action"] for e in c.current] == ["roster", "kill"]
                history(str(path))  # reads whatever is there without raising
            finally:
                await redis.aclose()

        asyncio.run(run())


@pytest.mark.parametrize("junk", JUNK_LINES[:6])
def test_history_of_a_missing_or_junk_file_is_empty(tmp_path: Path, junk: str) -> None:
    """`history` of junk, a directory or nothing at all is no entries, never an error."""
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "junk.jsonl").write_text(junk)
    for name in ("dir.jsonl", "junk.jsonl", "absent.jsonl", ""):
        assert history(str(tmp_path / name) if name else "") == []
