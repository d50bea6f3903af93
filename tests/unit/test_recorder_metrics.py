"""The flight recorder's metrics (`sidecar.recmetrics`, read at scrape time from the ring and
the recording's counters), why a freeze failed, and which hosts still owe a kill's frozen
file (`core.enforce.frozen`), on real ring files and a fresh registry."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from killswitch.core.enforce.frozen import freezing
from killswitch.core.enforce.recfmt import ALLOW, LINE
from killswitch.runtime import ring as ringmod
from killswitch.runtime.ring import Ring
from killswitch.sidecar.recmetrics import RecorderCollector
from killswitch.sidecar.recording import FREEZE_FAILURES, failure_reason

NS = 1_000_000_000
LABELS = {"node": "smars", "host": "or-01"}


def scrape(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **labels})


class TestCollector:
    def test_records_capacity_wraps_span_and_freezes(self, tmp_path: Path) -> None:
        """A ring of 4 records (5 slots) reopened at seq 3, then 12 decisions one second
        apart: 12 records, capacity 4, wrapped twice, 3 s of history; the recording's
        freeze counters as they are, every failure reason at 0 but the one counted."""
        clock = [0]

        def now() -> int:
            clock[0] += NS
            return clock[0]

        path = str(tmp_path / "r.rec")
        ring = Ring(path, 5, "smars", "or-01", clock_ns=now)
        for i in range(2):
            ring.record(LINE, f"o{i}", "KCG", "BUY", 1, 1.0, ALLOW, "", 1)
        ring.close()
        ring = Ring(path, 5, "smars", "or-01", clock_ns=now)
        assert ring.started == 3
        failures = dict.fromkeys(FREEZE_FAILURES, 0) | {"no_space": 2}
        rec = SimpleNamespace(ring=ring, freezes=3, failures=failures, frozen_bytes=4096)
        registry = CollectorRegistry()
        registry.register(RecorderCollector(rec, "smars", "or-01"))  # type: ignore[arg-type]
        for i in range(12):
            ring.record(LINE, f"p{i}", "KCG", "BUY", 1, 1.0, ALLOW, "", 1)
        assert scrape(registry, "killswitch_recorder_records_total") == 12
        assert scrape(registry, "killswitch_recorder_capacity_records") == 4
        assert scrape(registry, "killswitch_recorder_wraps_total") == 2  # seq 5 and seq 10
        assert scrape(registry, "killswitch_recorder_span_seconds") == 3
        assert scrape(registry, "killswitch_recorder_dropped_total") == 0
        assert scrape(registry, "killswitch_recorder_freezes_total") == 3
        assert scrape(registry, "killswitch_recorder_frozen_bytes") == 4096
        assert scrape(registry, "killswitch_recorder_writer_info", writer="python") == 1
        for reason in FREEZE_FAILURES:
            want = 2 if reason == "no_space" else 0
            assert (
                scrape(registry, "killswitch_recorder_freeze_failures_total", reason=reason) == want
            )
        ring.close()
        rec.ring = None  # a stopped recording: the ring's figures are gone, the counts stay
        assert scrape(registry, "killswitch_recorder_records_total") is None
        assert scrape(registry, "killswitch_recorder_freezes_total") == 3

    @pytest.mark.parametrize("writer", ["auto", "python"])
    def test_the_writer_info_names_the_writer_the_ring_runs(
        self, tmp_path: Path, writer: str
    ) -> None:
        """`killswitch_recorder_writer_info` is 1 under the writer the ring runs (native
        where the C writer is built, for "auto") and under no other."""
        ring = Ring(str(tmp_path / "r.rec"), 5, "smars", "or-01", writer=writer)
        rec = SimpleNamespace(ring=ring, freezes=0, failures={}, frozen_bytes=0)
        registry = CollectorRegistry()
        registry.register(RecorderCollector(rec, "smars", "or-01"))  # type: ignore[arg-type]
        want = ring.writer if writer == "auto" else "python"
        assert want == ("native" if writer == "auto" and ringmod.NATIVE else "python")
        for name in ("native", "python"):
            got = scrape(registry, "killswitch_recorder_writer_info", writer=name)
            assert got == (1 if name == want else None)
        ring.close()


class TestFailureReason:
    @pytest.mark.parametrize(
        ("error", "reason"),
        [(OSError(errno.ENOSPC, "full"), "no_space"), (OSError(errno.EDQUOT, "quota"), "no_space"),
         (PermissionError(errno.EACCES, "denied"), "permission"),
         (OSError(errno.EROFS, "read-only"), "permission"),
         (IsADirectoryError(errno.EISDIR, "dir"), "io"), (OSError("no errno"), "io"),
         (ValueError("bad bytes"), "other")],
    )  # fmt: skip
    def test_bounded_reasons(self, error: BaseException, reason: str) -> None:
        """Each failure maps to one of the four label values, never to its message."""
        assert failure_reason(error) == reason
        assert reason in FREEZE_FAILURES


class TestFreezing:
    @pytest.mark.parametrize(
        ("report", "confirm", "owed"),
        [({"recorder_epoch": "7"}, {"epoch": "7"}, True),
         ({"recorder_epoch": "7"}, {"epoch": "7", "recorder_file": ""}, True),
         ({"recorder_epoch": "7"}, {"epoch": "7", "recorder_file": "/s/a.7.rec"}, False),
         ({"recorder_epoch": "7"}, {"epoch": "6", "recorder_file": "/s/a.6.rec"}, True),
         ({"recorder_epoch": "7", "recorder_failed": "no_space"}, {"epoch": "7"}, False),
         ({"recorder_epoch": "6"}, {"epoch": "7"}, False),
         ({}, {"epoch": "7"}, False)],
        ids=["confirmed, no file yet", "empty file field", "file named", "file of another kill",
             "freeze failed", "not frozen this kill", "no recorder"],
    )  # fmt: skip
    def test_who_owes_a_frozen_file(
        self, report: dict[str, str], confirm: dict[str, str], owed: bool
    ) -> None:
        """Owed: the host froze this kill and its confirmation of it names no file yet."""
        got = freezing(["or-01", "or-02"], 7, {"or-01": report}, {"or-01": confirm})
        assert got == (("or-01",) if owed else ())
