"""The log writer under a stuck, broken or unrenderable output: per-order lines beyond the
queue's bound become exact counts, and the writer thread outlives every failure."""

from __future__ import annotations

import errno
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from structlog.typing import Processor

from killswitch.runtime import logs
from killswitch.runtime.logs import BLOCK_EVENT, QueuedWriter
from kstest import wait_until


class HeldStream(io.StringIO):
    """An stderr whose writes block until `release()`: a terminal nobody reads, a full pipe."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()  # the writer thread is inside write()
        self._open = threading.Event()

    def release(self) -> None:
        self._open.set()

    def hold(self) -> None:
        self.entered.clear()
        self._open.clear()

    def write(self, s: str) -> int:
        self.entered.set()
        self._open.wait()
        return super().write(s)


class FailingOnce(io.StringIO):
    """An stderr whose first write fails (a broken pipe, a closed file), then works again."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error: Exception | None = error

    def write(self, s: str) -> int:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return super().write(s)


class Unrenderable:
    """A value whose repr raises, as a buggy third-party object's might."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def pipeline(writer: QueuedWriter) -> Any:
    """A bound logger with the processors `logs.configure` installs, without touching the
    process-wide structlog configuration other tests rely on."""
    return structlog.wrap_logger(
        logs._QueueLogger(writer),
        processors=[
            writer.admit,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            logs._to_writer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.fixture
def held() -> Iterator[HeldStream]:
    stream = HeldStream()
    try:
        yield stream
    finally:
        stream.release()  # never leave a writer thread parked in write()


class TestStuckStream:
    """More BLOCK_ORDER lines than the bound while stderr is stuck."""

    def test_excess_block_lines_become_one_summary_with_exact_counts(
        self, held: HeldStream
    ) -> None:
        """Past the bound, BLOCK_ORDER lines are counted per reason and reported once, with
        the last dropped line's node, host and epoch; other events are never dropped."""
        writer = QueuedWriter(held, structlog.processors.JSONRenderer(), max_pending_blocks=3)
        log = pipeline(writer)
        log.info("started")
        wait_until(held.entered.is_set, what="the writer thread stuck in write()")
        for i in range(3):
            log.warning(BLOCK_EVENT, reason="limit", order=f"kept-{i}")
        assert writer.summarized == 0
        for i, reason in enumerate(["killed", "limit", "killed", "killed", "limit"]):
            log.warning(BLOCK_EVENT, reason=reason, order=f"x-{i}", node="n1", host="h1", epoch=i)
        log.info("still-logged")  # not a per-order line: queued whatever the backlog
        assert writer.summarized == 5
        held.release()
        writer.flush()
        out = lines(held)
        assert [e["event"] for e in out] == ["started", *[BLOCK_EVENT] * 3, "still-logged",
                                             BLOCK_EVENT]  # fmt: skip
        assert [e.get("order") for e in out[1:4]] == ["kept-0", "kept-1", "kept-2"]
        summary = out[-1]
        assert summary["summary"] is True
        assert summary["blocked"] == 5
        assert summary["counts"] == {"killed": 3, "limit": 2}
        assert (summary["node"], summary["host"], summary["epoch"]) == ("n1", "h1", 4)
        assert summary["level"] == "warning"
        writer.close()

    def test_every_round_of_overflow_is_reported_without_a_flush(self, held: HeldStream) -> None:
        """Two separate overflows each reach stderr as a summary on the writer's own schedule
        (no flush asked), and the counts add up to every line not written."""
        writer = QueuedWriter(held, structlog.processors.JSONRenderer(), max_pending_blocks=1)
        log = pipeline(writer)
        rounds = [["limit", "limit"], ["stale", "killed", "stale"]]
        for n, reasons in enumerate(rounds):
            log.info("round", n=n)
            wait_until(held.entered.is_set, what="the writer thread stuck in write()")
            log.warning(BLOCK_EVENT, reason="queued")
            for reason in reasons:
                log.warning(BLOCK_EVENT, reason=reason)  # no node: the summary names none
            held.release()
            wait_until(
                lambda n=n: sum(1 for e in lines(held) if e.get("summary")) == n + 1,
                what=f"summary {n + 1} written by the writer thread",
            )
            held.hold()
        held.release()
        summaries = [e for e in lines(held) if e.get("summary")]
        assert [s["counts"] for s in summaries] == [{"limit": 2}, {"killed": 1, "stale": 2}]
        assert all("node" not in s for s in summaries)
        assert writer.summarized == 5
        writer.close()

    def test_close_writes_the_backlog_and_its_summary_then_ends_the_thread(
        self, held: HeldStream
    ) -> None:
        """close() waits for a stuck stderr to drain, writes the held counts, and stops."""
        writer = QueuedWriter(held, structlog.processors.JSONRenderer(), max_pending_blocks=1)
        log = pipeline(writer)
        log.info("first")
        wait_until(held.entered.is_set, what="the writer thread stuck in write()")
        log.warning(BLOCK_EVENT, reason="queued")
        log.warning(BLOCK_EVENT, reason="limit")
        closing = threading.Thread(target=writer.close)
        closing.start()
        held.release()
        closing.join(30)
        assert not closing.is_alive()
        assert not writer._thread.is_alive()
        out = lines(held)
        assert [e.get("reason") for e in out] == [None, "queued", None]
        assert out[-1]["counts"] == {"limit": 1}


class CountingStream(io.StringIO):
    """Counts the writer thread's writes (an idle writer makes none)."""

    writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


class TestIdleFlush:
    """A flush with nothing to write does not set the writer thread spinning."""

    def test_flush_of_an_idle_writer_writes_nothing(self) -> None:
        """Flushing an idle writer returns without the writer thread writing (it used to loop,
        writing nothing, for as long as the flush waited, starving the flushing thread)."""
        stream = CountingStream()
        writer = QueuedWriter(stream, structlog.processors.JSONRenderer())
        log = pipeline(writer)
        log.info("one")
        writer.flush()
        assert stream.writes == 1
        for _ in range(20):
            writer.flush()
        assert stream.writes == 1
        assert [e["event"] for e in lines(stream)] == ["one"]
        writer.close()


class TestBrokenOutput:
    """Failures of the stream or of rendering never stop the writer thread."""

    @pytest.mark.parametrize(
        "error",
        [OSError(errno.EPIPE, "Broken pipe"), ValueError("I/O operation on closed file")],
        ids=["broken-pipe", "closed-file"],
    )
    def test_a_failed_write_loses_that_batch_only(self, error: Exception) -> None:
        """After stderr refuses a write, the next events are still written."""
        stream = FailingOnce(error)
        writer = QueuedWriter(stream, structlog.processors.JSONRenderer())
        log = pipeline(writer)
        log.info("lost")
        writer.flush()
        assert stream.error is None  # the failing write happened
        log.info("kept")
        writer.flush()
        assert [e["event"] for e in lines(stream)] == ["kept"]
        writer.close()

    @pytest.mark.parametrize(
        "renderer",
        [structlog.processors.JSONRenderer(), structlog.dev.ConsoleRenderer(colors=False)],
        ids=["json", "console"],
    )
    def test_an_unrenderable_value_keeps_the_event_name(self, renderer: Processor) -> None:
        """An event whose value cannot be rendered is written as its name and the error type,
        and the events after it render normally."""
        stream = io.StringIO()
        writer = QueuedWriter(stream, renderer)
        log = pipeline(writer)
        log.warning(BLOCK_EVENT, reason="killed", order=Unrenderable())
        log.info("after", n=1)
        writer.flush()
        first, second = stream.getvalue().splitlines()
        assert first == f"{BLOCK_EVENT} (unrenderable: RuntimeError)"
        assert "after" in second and "unrenderable" not in second
        writer.close()

    def test_a_renderer_that_returns_bytes_is_written_as_text(self) -> None:
        """A bytes-producing serializer (orjson style) yields the same UTF-8 text lines."""

        def dumps(obj: Any, **kw: Any) -> bytes:
            return json.dumps(obj, **kw).encode()

        stream = io.StringIO()
        writer = QueuedWriter(stream, structlog.processors.JSONRenderer(serializer=dumps))
        pipeline(writer).info("bytes", host="h-é")
        writer.flush()
        assert [(e["event"], e["host"]) for e in lines(stream)] == [("bytes", "h-é")]
        writer.close()


class TestConfigure:
    """The process-wide configuration: one writer at a time."""

    def test_reconfiguring_closes_the_previous_writer_after_it_wrote(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A second configure() drains and stops the first writer; the module's flush and
        summarized follow the new one."""
        saved = structlog.get_config()
        monkeypatch.setattr(logs, "_writer", None)
        first, second = io.StringIO(), io.StringIO()
        try:
            old = logs.configure(fmt="json", level="info", stream=first)
            structlog.get_logger("t").info("to-first")
            new = logs.configure(fmt="json", level="warning", stream=second)
            assert not old._thread.is_alive()
            structlog.get_logger("t").info("filtered-out")
            structlog.get_logger("t").warning("to-second")
            logs.flush()
            assert logs.summarized() == new.summarized == 0
            new.close()
        finally:
            structlog.configure(**saved)
        assert [e["event"] for e in lines(first)] == ["to-first"]
        assert [e["event"] for e in lines(second)] == ["to-second"]
