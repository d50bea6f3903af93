"""The `--on-kill` command (a venue mass-cancel): run once per kill epoch, bounded, never orphaned.

The command runs in a session (process group) of its own, so everything it starts can be
ended together: a shell's children are not left behind when the shell is. It never delays
the block: the gate is already closed when it starts.

A mass-cancel matters more than a fast shutdown, but a stop must end. On stop a running
command gets `grace` seconds (never past its own timeout) to finish; then its process group
gets SIGTERM, `ON_KILL_TERM_WAIT_S` to go, and SIGKILL, and it is reaped. Its timeout ends it
the same way. A command that cannot start (EMFILE under a connection flood) is tried again
until its timeout. Outcomes: `running`, `retrying: ...`, `exit N`, `timeout`, `interrupted`
(stopped with it still running), `error: ...` (it could not start within its timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from typing import Any

from killswitch.core.settings.options import default

ON_KILL_TIMEOUT_S = 30.0  # a venue mass-cancel that hangs longer is reported as a timeout
ON_KILL_STOP_GRACE_S: float = default("on-kill-grace")  # on stop, how long it may still run
ON_KILL_TERM_WAIT_S = 2.0  # after SIGTERM to its process group, before SIGKILL
START_RETRY_S = 0.05  # first pause before starting a command that could not start again
_POLL_S = 0.02  # how often a process group is checked for survivors while it is ended


class OnKill:
    """`start(epoch)` once per kill epoch; `close()` on stop. `epoch`/`status`: the last run."""

    def __init__(
        self,
        cmd: str,
        env: Mapping[str, str],
        log: Any,
        *,
        grace: float = ON_KILL_STOP_GRACE_S,
        timeout: float = ON_KILL_TIMEOUT_S,
        term_wait: float = ON_KILL_TERM_WAIT_S,
    ) -> None:
        self.cmd = cmd
        self.env = dict(env)
        self.log = log
        self.grace = grace
        self.timeout = timeout
        self.term_wait = term_wait
        self.epoch = 0  # the kill epoch the command last ran for
        self.status = ""  # its outcome (see the module docstring)
        self.pid: int | None = None  # pid (= process group) of the last command started
        self._runs: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    def start(self, epoch: int) -> bool:
        """Run the command for kill `epoch` unless it ran for it (or a later one) or we stop."""
        if not self.cmd or epoch <= self.epoch or self._stopping.is_set():
            return False
        self.epoch = epoch
        self.status = "running"
        task = asyncio.get_running_loop().create_task(self._run(epoch), name=f"on-kill-{epoch}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        return True

    @property
    def running(self) -> bool:
        return bool(self._runs)

    @property
    def stopping(self) -> bool:
        """`close()` began: running commands are in their grace and no new one starts."""
        return self._stopping.is_set()

    async def close(self) -> bool:
        """Let running commands finish within the grace, end the rest; True if any ran."""
        self._stopping.set()
        # a finished run whose done-callback has not yet removed it is not running
        runs = [t for t in self._runs if not t.done()]
        if runs:
            await asyncio.gather(*runs, return_exceptions=True)
        return bool(runs)

    async def _spawn(self, epoch: int) -> asyncio.subprocess.Process:
        """Start the command; one that cannot start (EMFILE, EAGAIN, ENOMEM: often brief under
        a connection flood) is tried again with a growing pause until its timeout or a stop."""
        env = {**self.env, "KILLSWITCH_EPOCH": str(epoch)}
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.timeout
        pause = START_RETRY_S
        while True:
            try:
                return await asyncio.create_subprocess_shell(
                    self.cmd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,  # its own process group: ended as one
                )
            except OSError as e:
                if self._stopping.is_set() or loop.time() + pause > give_up:
                    raise
                self.status = f"retrying: {e.strerror or e}"
                self.log.warning("ON_KILL_RETRY", epoch=epoch, error=str(e.strerror or e),
                                 retry_in_s=pause)  # fmt: skip
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                if self._stopping.is_set():
                    raise  # stopping: no new command starts (close() says it was not run)
                pause = min(pause * 2, 2.0)

    async def _run(self, epoch: int) -> None:
        try:
            proc = await self._spawn(epoch)
        except OSError as e:
            status, pid = f"error: {e.strerror or e}", None
        else:
            self.pid = pid = proc.pid
            self.log.info("ON_KILL_STARTED", epoch=epoch, pid=pid)
            try:
                status = await self._outcome(proc)
            except asyncio.CancelledError:
                _signal_group(pid, signal.SIGKILL)  # never leave it behind
                await self._reap(proc)
                raise
        if epoch == self.epoch:
            self.status = status
        self.log.info("ON_KILL", epoch=epoch, status=status, pid=pid)

    async def _outcome(self, proc: asyncio.subprocess.Process) -> str:
        loop = asyncio.get_running_loop()
        timeout_at = loop.time() + self.timeout
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait(
                {exited, stopping}, timeout=self.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if exited.done():
                return f"exit {exited.result()}"
            outcome = "timeout"
            if self._stopping.is_set():
                grace_end = min(timeout_at, loop.time() + self.grace)
                # Says why a stop waits, and for what: an operator may be watching it.
                self.log.warning(
                    "ON_KILL_GRACE", pid=proc.pid, grace_s=round(grace_end - loop.time(), 3)
                )
                await asyncio.wait({exited}, timeout=max(0.0, grace_end - loop.time()))
                if exited.done():
                    return f"exit {exited.result()}"
                outcome = "interrupted" if grace_end < timeout_at else "timeout"
            await self._end_group(proc)
            return outcome
        finally:
            stopping.cancel()
            exited.cancel()

    async def _end_group(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the command's process group, wait for all of it, SIGKILL what is left."""
        pgid = proc.pid
        _signal_group(pgid, signal.SIGTERM)
        if await self._gone(proc, pgid):
            return
        self.log.warning("ON_KILL_SIGKILL", pid=pgid, after_s=self.term_wait)
        _signal_group(pgid, signal.SIGKILL)
        if not await self._gone(proc, pgid):  # stuck in the kernel: a stop must still end
            self.log.error("ON_KILL_NOT_ENDED", pid=pgid, after_s=2 * self.term_wait)

    async def _gone(self, proc: asyncio.subprocess.Process, pgid: int) -> bool:
        """Whether, within the term wait, the command is reaped and its whole group gone."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.term_wait):
                await proc.wait()
                # The shell's children got the signal too; no event says when the last goes.
                while True:
                    if not _group_alive(pgid):
                        return True
                    await asyncio.sleep(_POLL_S)
        return False

    async def _reap(self, proc: asyncio.subprocess.Process) -> None:
        # Bounded: a process stuck in the kernel may not die even on SIGKILL; a stop must end.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.term_wait):
                await proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether any live process is in group `pgid`. Zombies do not count: a sidecar that is a
    container's PID 1 inherits the group's orphans and never reaps them."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel (a zombie then counts as alive)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return any(name.isdigit() and _live_member(name, pgid) for name in entries)


def _live_member(pid: str, pgid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # it went while we looked
        return False
    fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state ppid pgrp ...
    return len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X")
