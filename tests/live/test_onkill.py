"""The `--on-kill` command's lifecycle: a stop or its timeout ends its whole process group.

Real shell commands that record their pids in a marker file; the in-process sidecar runs
against the suite's real redis-server, the last test on a real `killswitch sidecar` process.
Waits are on marker files and states, with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from redis.asyncio import Redis
from structlog.testing import CapturingLogger

from killswitch.sidecar.onkill import ON_KILL_STOP_GRACE_S, OnKill
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.embedded import EmbeddedRedis
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.store import Store
from kstest import Fleet, wait_until, wait_until_async

HOST = "or-01"


def slow_cmd(marker: Path, *, deaf_child: bool = False) -> str:
    """A shell that starts a child `sleep`, writes "<shell pid> <child pid>" to `marker` and
    waits on it; a deaf child ignores SIGTERM (only SIGKILL ends it) from the moment it
    creates `<marker>.deaf`."""
    m = shlex.quote(str(marker))
    deaf = shlex.quote(f"{marker}.deaf")
    child = f"(trap '' TERM; touch {deaf}; exec sleep 1000) &" if deaf_child else "sleep 1000 &"
    return f'{child} echo "$$ $!" > {m}.tmp && mv {m}.tmp {m}; wait'


def gated_cmd(marker: Path, go: Path) -> str:
    """A command that records its pid in `marker`, then exits 0 once `go` exists."""
    m, g = shlex.quote(str(marker)), shlex.quote(str(go))
    return f'echo "$$" > {m}.tmp && mv {m}.tmp {m}; while [ ! -e {g} ]; do sleep 0.01; done'


def pids(marker: Path) -> list[int]:
    return [int(x) for x in marker.read_text().split()]


def live(pid: int) -> bool:
    """Whether `pid` is a running process (a zombie is dead, only not yet reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def exists(pid: int) -> bool:
    """Whether `pid` exists at all, running or a zombie its parent has not reaped."""
    return Path(f"/proc/{pid}").exists()


def group_members(pgid: int) -> list[int]:
    """The live processes of process group `pgid`."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            out.append(int(name))
    return out


def events(log: CapturingLogger, name: str) -> list[dict[str, Any]]:
    """The kwargs of every `name` event logged through `log` (bound or not)."""
    return [
        {k: v for k, v in c.kwargs.items() if k != "event"}
        for c in log.calls
        if c.args == (name,) or c.kwargs.get("event") == name
    ]


class TestOnKill:
    """`OnKill` on its own: stop within and past the grace, a deaf child, the timeout."""

    async def test_stop_past_the_grace_ends_the_whole_group(self, tmp_path: Path) -> None:
        """Stopped while the command and its child run, both are ended and the shell reaped;
        the outcome is `interrupted`, logged as ON_KILL."""
        marker, log = tmp_path / "pids", CapturingLogger()
        ok = OnKill(slow_cmd(marker), os.environ, log, grace=0.0)
        assert ok.start(7)
        await wait_until_async(marker.exists, 30, what="the command started its child")
        shell, child = pids(marker)
        assert shell == ok.pid and group_members(shell) == sorted([shell, child])
        assert ok.status == "running"
        assert await ok.close() is True
        assert (ok.epoch, ok.status) == (7, "interrupted")
        assert group_members(shell) == []
        assert not live(child)
        assert not exists(shell)  # reaped: no zombie left
        assert events(log, "ON_KILL") == [{"epoch": 7, "status": "interrupted", "pid": shell}]
        assert not ok.start(8)  # nothing new starts once stopping

    async def test_a_command_that_cannot_start_is_tried_again(self, tmp_path: Path) -> None:
        """With every file descriptor taken (EMFILE) the command cannot start: it is retried,
        and runs once descriptors are free again (outcome `exit 0`)."""
        marker, log = tmp_path / "ran", CapturingLogger()
        ok = OnKill(f"echo $KILLSWITCH_EPOCH > {shlex.quote(str(marker))}", os.environ, log)
        held = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 4096), hard))
        try:
            with contextlib.suppress(OSError):
                while True:
                    held.append(os.open(os.devnull, os.O_RDONLY))
            assert ok.start(5)
            await wait_until_async(
                lambda: events(log, "ON_KILL_RETRY"), 30, what="a retry after EMFILE"
            )
            assert ok.status.startswith("retrying") and not marker.exists()
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        await wait_until_async(lambda: ok.status == "exit 0", 30, what="the command ran")
        assert marker.read_text().strip() == "5"
        await ok.close()

    async def test_a_child_deaf_to_sigterm_gets_sigkill(self, tmp_path: Path) -> None:
        """A child that ignores SIGTERM is SIGKILLed after the term wait, and that is logged."""
        marker, log = tmp_path / "pids", CapturingLogger()
        ok = OnKill(slow_cmd(marker, deaf_child=True), os.environ, log, grace=0.0, term_wait=1.0)
        ok.start(3)
        deaf = marker.with_name("pids.deaf")
        await wait_until_async(
            lambda: marker.exists() and deaf.exists(), 30, what="the deaf child ignores SIGTERM"
        )
        shell, child = pids(marker)
        await ok.close()
        assert ok.status == "interrupted"
        assert group_members(shell) == [] and not live(child)
        assert events(log, "ON_KILL_SIGKILL") == [{"pid": shell, "after_s": 1.0}]

    async def test_stop_within_the_grace_lets_the_command_finish(self, tmp_path: Path) -> None:
        """A command that finishes during the grace is not ended: its outcome is `exit 0`."""
        marker, go, log = tmp_path / "pid", tmp_path / "go", CapturingLogger()
        ok = OnKill(gated_cmd(marker, go), os.environ, log)
        assert ok.grace == ON_KILL_STOP_GRACE_S
        ok.start(2)
        await wait_until_async(marker.exists, 30, what="the command started")
        closing = asyncio.create_task(ok.close())
        await wait_until_async(lambda: ok.stopping, what="the stop began")
        assert ok.running and ok.status == "running"
        go.touch()
        assert await closing is True
        assert ok.status == "exit 0"
        assert events(log, "ON_KILL") == [{"epoch": 2, "status": "exit 0", "pid": ok.pid}]
        assert events(log, "ON_KILL_SIGKILL") == []

    async def test_timeout_ends_the_whole_group(self, tmp_path: Path) -> None:
        """Past its timeout the command's whole group is ended, outcome `timeout`; closing
        afterwards has nothing left to wait for."""
        marker, log = tmp_path / "pids", CapturingLogger()
        ok = OnKill(slow_cmd(marker), os.environ, log, timeout=1.0)
        ok.start(4)
        await wait_until_async(lambda: ok.status == "timeout", 30, what="the timeout")
        assert ok.pid is not None and group_members(ok.pid) == []
        if marker.exists():  # the shell got as far as starting its child
            assert not any(live(p) for p in pids(marker))
        assert await ok.close() is False

    async def test_the_grace_never_runs_past_the_timeout(self, tmp_path: Path) -> None:
        """Stopped with a grace longer than what is left of its timeout, the command is ended
        at its timeout, and the outcome says `timeout`."""
        marker, log = tmp_path / "pids", CapturingLogger()
        ok = OnKill(slow_cmd(marker), os.environ, log, grace=30.0, timeout=1.0)
        ok.start(9)
        await wait_until_async(marker.exists, 30, what="the command started its child")
        await ok.close()
        assert ok.status == "timeout"
        assert not any(live(p) for p in pids(marker))
        assert [e["grace_s"] <= 1.0 for e in events(log, "ON_KILL_GRACE")] in ([], [True])

    async def test_a_later_kill_runs_again_and_an_earlier_one_does_not(
        self, tmp_path: Path
    ) -> None:
        """Once per kill epoch: the same or an older epoch does not start it again."""
        ran = tmp_path / "ran"
        cmd = f'echo "$KILLSWITCH_EPOCH" >> {shlex.quote(str(ran))}'
        ok = OnKill(cmd, os.environ, CapturingLogger())
        assert ok.start(5)
        assert not ok.start(5) and not ok.start(4)
        await wait_until_async(lambda: ok.status == "exit 0", 30, what="epoch 5 ran")
        assert ok.start(6)
        await wait_until_async(lambda: ran.read_text() == "5\n6\n", 30, what="epoch 6 ran")
        await ok.close()
        assert (ok.epoch, ok.status) == (6, "exit 0")


@pytest.fixture
async def armed(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys
) -> AsyncIterator[Store]:
    """The store of a node armed at epoch 1 with HOST on its roster."""
    store = Store(redis, node)
    await signed_store_arm(store, operator_keys, reason="open", roster=[HOST])
    yield store


async def started(
    node: str, tmp_path: Path, operator_keys: OperatorKeys, redis: Redis, cmd: str, **kw: Any
) -> tuple[Sidecar, CapturingLogger]:
    settings = SidecarSettings(
        node=node, host=HOST, redis_url="", flush_interval=0.1, stale_after=5.0,
        state_dir=str(tmp_path), operators=str(operator_keys.file), on_kill=cmd, **kw,
    )  # fmt: skip
    log = CapturingLogger()
    sc = Sidecar(settings, redis, logger=structlog.wrap_logger(log, processors=[]))
    await sc.start()
    return sc, log


class TestSidecarStop:
    """`Sidecar.stop()` with the on-kill command running, in-process against real Redis."""

    async def test_stop_interrupts_ends_the_group_and_reports(
        self,
        redis: Redis,
        node: str,
        tmp_path: Path,
        operator_keys: OperatorKeys,
        armed: Store,
    ) -> None:
        """Stopped during a kill's on-kill command, the sidecar ends its group, logs ON_KILL
        `interrupted` and leaves that, not `running`, in its last report."""
        store = armed
        marker = tmp_path / "pids"
        sc, log = await started(
            node, tmp_path, operator_keys, redis, slow_cmd(marker), on_kill_grace=0.0
        )
        try:
            res = await store.kill(actor="op", reason="r", cause="manual", floor=1)
            await wait_until_async(marker.exists, 30, what="the on-kill command started")
            report = store.keys.host(HOST).report
            await wait_until_async(
                lambda: _field(redis, report, "on_kill_status", "running"), 30,
                what="`running` reported",
            )  # fmt: skip
        finally:
            await sc.stop()
        shell, child = pids(marker)
        assert group_members(shell) == [] and not live(child)
        assert not exists(shell)  # reaped: no zombie left
        assert sc.notify.on_kill_status == "interrupted"
        assert events(log, "ON_KILL") == [
            {"node": node, "host": HOST, "epoch": res.epoch, "status": "interrupted", "pid": shell}
        ]
        fields = await redis.hmget(report, "on_kill_epoch", "on_kill_status")
        assert fields == [str(res.epoch), "interrupted"]

    async def test_stop_within_the_grace_reports_exit_0(
        self,
        redis: Redis,
        node: str,
        tmp_path: Path,
        operator_keys: OperatorKeys,
        armed: Store,
    ) -> None:
        """A command that finishes within the grace of a stop reports `exit 0`."""
        store = armed
        marker, go = tmp_path / "pid", tmp_path / "go"
        sc, log = await started(node, tmp_path, operator_keys, redis, gated_cmd(marker, go))
        try:
            res = await store.kill(actor="op", reason="r", cause="manual", floor=1)
            await wait_until_async(marker.exists, 30, what="the on-kill command started")
            stopping = asyncio.create_task(sc.stop())
            await wait_until_async(lambda: sc.notify.on_kill.stopping, what="the stop began")
            go.touch()
        finally:
            await sc.stop()
        await stopping
        assert sc.notify.on_kill_status == "exit 0"
        assert [e["status"] for e in events(log, "ON_KILL")] == ["exit 0"]
        report = store.keys.host(HOST).report
        fields = await redis.hmget(report, "on_kill_epoch", "on_kill_status")
        assert fields == [str(res.epoch), "exit 0"]

    async def test_stop_ends_with_redis_gone(
        self, own_redis: EmbeddedRedis, node: str, tmp_path: Path, operator_keys: OperatorKeys
    ) -> None:
        """With Redis gone the stop still ends the command and the sidecar, and logs that the
        outcome could not be reported."""
        redis = Redis.from_url(own_redis.url, decode_responses=True)
        try:
            store = Store(redis, node)
            await signed_store_arm(store, operator_keys, reason="open", roster=[HOST])
            marker = tmp_path / "pids"
            sc, log = await started(
                node, tmp_path, operator_keys, redis, slow_cmd(marker), on_kill_grace=0.0
            )
            try:
                await store.kill(actor="op", reason="r", cause="manual", floor=1)
                await wait_until_async(marker.exists, 30, what="the on-kill command started")
                own_redis.stop()
            finally:
                await sc.stop()
        finally:
            await redis.aclose()
        shell, child = pids(marker)
        assert group_members(shell) == [] and not live(child)
        assert sc.notify.on_kill_status == "interrupted"
        assert len(events(log, "ON_KILL_NOT_REPORTED")) == 1
        assert len(events(log, "SIDECAR_STOPPED")) == 1


async def _field(redis: Redis, key: str, name: str, want: str) -> bool:
    return bool(await redis.hget(key, name) == want)


def test_sigterm_to_a_real_sidecar_ends_its_on_kill_command(
    redis_url: str, node: str, tmp_path: Path
) -> None:
    """SIGTERM to a `killswitch sidecar` process running its on-kill command ends the command's
    group within `--on-kill-grace`, and `status --json` shows it `interrupted`."""
    marker = tmp_path / "pids"
    f = Fleet(
        redis_url, node, [HOST],
        extra_sidecar_args=("--on-kill", slow_cmd(marker), "--on-kill-grace", "0.5"),
    )  # fmt: skip
    try:
        f.start()
        f.start_aggregator("--tick", "0.05")
        f.wait_ready(30)
        f.arm()
        code, rep = f.cli_json("kill", "--reason", "runaway", "--operator", "sre")
        assert code == 0, rep
        wait_until(marker.exists, 30, 0.02, "the on-kill command started")
        shell, child = pids(marker)
        assert group_members(shell) == sorted([shell, child])
        proc = f.sidecars[HOST]
        proc.stop(timeout=60)
        assert group_members(shell) == [] and not live(child)
        assert [(e["epoch"], e["status"]) for e in proc.events("ON_KILL")] == [
            (rep["epoch"], "interrupted")
        ]
        hosts = f.cli_json("status")[1]["hosts"]
        assert hosts[HOST]["on_kill"] == {"epoch": rep["epoch"], "status": "interrupted"}
    finally:
        f.stop()
