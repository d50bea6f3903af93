"""`killswitch watch`: the pure frame renderer on hand-made and real status reports, and the
command itself (once, Ctrl-C, and `q` on a real pseudo-terminal) against an eight-host fleet.
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis as redis_sync
from rich.console import Console

from killswitch.cli.watch import render_error, render_status
from kstest import Fleet, wait_until

HOSTS = [f"or-{i:02d}" for i in range(1, 9)]


def text(report: dict[str, Any], styles: bool = False) -> str:
    console = Console(record=True, width=120, file=open(os.devnull, "w"))  # noqa: SIM115
    try:
        console.print(render_status(report))
        return console.export_text(styles=styles)
    finally:
        console.file.close()


def host(
    alive: bool = True, view: str = "ARMED", epoch: int = 3, rate: float = 20.0
) -> dict[str, Any]:
    return {"alive": alive, "age_s": 0.05 if alive else 4.2, "gate": "open" if view == "ARMED" else "closed",
            "epoch": epoch, "orders_per_s": rate, "view": view if alive else "", "regression": ""}  # fmt: skip


def report(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "node": "smars", "state": "ARMED", "epoch": 3, "reason": "open",
        "roster": ["or-01", "or-02", "or-03"], "confirmed": ["or-01", "or-02", "or-03"],
        "missing": [], "stale_hosts": [], "actor": "alice+bob", "cause": "",
        "changed_at": "2012-08-01T13:30:00.000+00:00", "server_time": "2012-08-01T13:34:00.000+00:00",
        "hosts": {"or-01": host(), "or-02": host(), "or-03": host()},
        "aggregator": {"instance": "agg-a", "tick_ms": "1343828040000", "window_s": "10",
                       "node_orders": "1800", "max_orders": "2400", "expected": "1600.0", "warm": "1"},
    }  # fmt: skip
    base.update(kw)
    return base


class TestRenderStatus:
    """The frame, from status reports built by hand: what an operator must see at a glance."""

    def test_state_epoch_volume_limit_and_baseline(self) -> None:
        """The headline has state and epoch; the volume line has total, limit, percentage, baseline."""
        out = text(report())
        assert "node smars" in out and " ARMED " in out and "epoch 3" in out
        assert "node orders 1800 in 10s / limit 2400 (75%)" in out
        assert "baseline 1600" in out
        assert "confirmed 3/3 roster hosts" in out
        assert "last tick 0.0s ago" in out

    def test_stale_and_missing_hosts_are_named_and_highlighted(self) -> None:
        """A host that stopped reporting is listed as STALE and MISSING, and its row is red."""
        rep = report(
            state="KILLED", epoch=4, confirmed=["or-01", "or-02"], missing=["or-03"],
            stale_hosts=["or-03"],
            hosts={"or-01": host(view="KILLED", epoch=4), "or-02": host(view="KILLED", epoch=4),
                   "or-03": host(alive=False)},
        )  # fmt: skip
        out = text(rep)
        assert " KILLED " in out and "confirmed 2/3" in out
        assert "MISSING: or-03" in out and "STALE (blocking): or-03" in out
        (row,) = [ln for ln in text(rep, styles=True).splitlines() if "or-03" in ln and "NO" in ln]
        assert "\x1b[1;31m" in row  # bold red
        (plain,) = [ln for ln in out.splitlines() if ln.startswith("or-03")]
        assert "STALE" in plain

    def test_scoped_kills_and_flat_are_shown(self) -> None:
        """Active scoped kills are named; on a killed node the flat count is shown."""
        scopes = [{"kind": "host", "value": "or-02"}, {"kind": "symbol", "value": "KCG"}]
        out = text(report(scopes=scopes))
        assert "SCOPED KILLS: host or-02, symbol KCG" in out
        assert "flat 1/3" in text(report(state="KILLED", flat=["or-01"]))

    def test_release_split_is_named_and_the_odd_row_is_red(self) -> None:
        """A split release names the odd host in the confirmations line and marks its row."""
        hosts = {h: {**host(), "release": "a" * 64} for h in ("or-01", "or-02")}
        hosts["or-03"] = {**host(), "release": "b" * 64}
        rep = report(hosts=hosts, release_split={"majority": "a" * 64, "odd": {"or-03": "b" * 64}})
        out = text(rep)
        assert "RELEASE SPLIT: or-03" in out
        (row,) = [ln for ln in out.splitlines() if ln.startswith("or-03")]
        assert "bbbbbbbbbbbb" in row and "SPLIT" in row
        (styled,) = [ln for ln in text(rep, styles=True).splitlines() if "bbbbbbbbbbbb" in ln]
        assert "\x1b[1;31m" in styled
        assert "RELEASE SPLIT" not in text(report())

    def test_without_an_aggregator_view_says_so(self) -> None:
        """No aggregator view means nothing sums the node's volume: the frame says it in words."""
        rep = report()
        del rep["aggregator"]
        assert "no aggregator view" in text(rep)

    def test_old_aggregator_view_is_flagged(self) -> None:
        """An aggregator whose last tick is older than 2 s is called out as a stale view."""
        rep = report()
        rep["aggregator"] = {**rep["aggregator"], "tick_ms": "1343828030000"}
        assert "last tick 10.0s ago  VIEW STALE" in text(rep)

    def test_rules_and_haunted_hosts(self) -> None:
        """Rule warning levels and a haunted host (from the aggregator's view) are shown."""
        rep = report()
        rep["aggregator"] = {
            **rep["aggregator"],
            "rules": [{"rule": "max_orders", "level": 75, "shadow": False},
                      {"rule": "host_share", "level": 90, "shadow": True}],
            "haunted": '[{"host":"or-02","orders":900,"share":0.5,"peer_ratio":8.0}]',
        }  # fmt: skip
        out = text(rep)
        assert "max_orders 75%" in out and "host_share 90% (shadow)" in out
        assert "HAUNTED x8.0 peers" in next(ln for ln in out.splitlines() if ln.startswith("or-02"))

    def test_error_frame(self) -> None:
        """When Redis cannot be read, the frame says the status is unknown and why."""
        console = Console(record=True, width=80, file=open(os.devnull, "w"))  # noqa: SIM115
        with contextlib.closing(console.file):
            console.print(render_error("smars", "cannot reach Redis at redis://x"))
            out = console.export_text()
        assert "status unknown" in out and "cannot reach Redis" in out


@pytest.fixture(scope="module")
def eight(redis_server: Any) -> Iterator[Fleet]:
    """Eight sidecar processes and their aggregator, armed."""
    f = Fleet(redis_server.url, f"watch{os.getpid()}", HOSTS)
    try:
        f.start()
        f.start_aggregator("--tick", "0.05", "--max-orders", "5000")

        f.wait_ready(20)
        f.arm()
        yield f
    finally:
        f.stop()


def watch_cmd(fleet: Fleet, *args: str) -> list[str]:
    return [sys.executable, "-m", "killswitch", "watch", "--interval", "0.2", *args]


class TestWatchOnAFleet:
    """Real status reports of eight sidecars, and the `watch` command as an operator runs it."""

    def test_shows_eight_hosts_and_flips_to_killed(self, eight: Fleet) -> None:
        """The frame lists all eight hosts while ARMED, then reads KILLED with 8/8 confirmed after a kill."""
        code, armed = eight.cli_json("status")
        assert code == 0 and armed["state"] == "ARMED"
        out = text(armed)
        assert " ARMED " in out and " KILLED " not in out
        assert all(any(ln.startswith(h) for ln in out.splitlines()) for h in HOSTS)
        code, killed = eight.cli_json("kill", "--reason", "watch drill", "--operator", "sre")
        assert code == 0, killed
        out = text(eight.cli_json("status")[1])
        assert " KILLED " in out and "reason: watch drill" in out
        assert "confirmed 8/8 roster hosts" in out
        rows = [ln for ln in out.splitlines() if ln[:5] in HOSTS]
        assert len(rows) == 8 and all("KILLED" in r and "closed" in r for r in rows)
        eight.arm()

    def test_once_prints_one_frame_and_exits_0(self, eight: Fleet) -> None:
        """`killswitch watch --once` prints the node and its eight hosts, then exits 0."""
        done = eight.cli("watch", "--once", timeout=30)
        assert done.returncode == 0, done.stderr
        assert f"node {eight.node}" in done.stdout
        assert all(h in done.stdout for h in HOSTS)

    def test_once_piped_is_not_wrapped_at_80_columns(self, eight: Fleet) -> None:
        """Piped (stdout not a terminal, no COLUMNS), a frame wider than 80 columns keeps each
        host on one line."""
        env = {k: v for k, v in eight.env().items() if k != "COLUMNS"}
        done = subprocess.run(
            [sys.executable, "-m", "killswitch", "watch", "--once"],
            capture_output=True, text=True, env=env, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        rows = [ln for ln in done.stdout.splitlines() if ln.lstrip("│ ").startswith("or-0")]
        assert len(rows) == 8, done.stdout
        assert max(len(ln) for ln in done.stdout.splitlines()) > 80, done.stdout

    def test_once_without_redis_exits_1(self, eight: Fleet) -> None:
        """With Redis unreachable, `watch --once` says so on stderr and exits 1."""
        done = eight.cli("watch", "--once", "--redis", "redis://127.0.0.1:1/0", timeout=30)
        assert done.returncode == 1
        assert "cannot reach Redis" in done.stderr

    def test_ctrl_c_quits_with_exit_0(self, eight: Fleet) -> None:
        """SIGINT stops a running `watch` cleanly: exit 0 and the last frame on stdout."""
        proc = subprocess.Popen(
            watch_cmd(eight), env=eight.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            client = redis_sync.Redis.from_url(eight.redis_url, decode_responses=True)
            with contextlib.closing(client):
                wait_until(
                    lambda: any(c["name"] == f"ks-watch-{eight.node}" for c in client.client_list()),
                    20, 0.05, "watch connected to Redis",
                )  # fmt: skip
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        assert all(h in out for h in HOSTS)

    def test_q_quits_in_a_terminal(self, eight: Fleet) -> None:
        """On a real pseudo-terminal the live view draws the hosts, and pressing q exits 0."""
        master, slave = pty.openpty()
        env = {**eight.env(), "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"}
        proc = subprocess.Popen(watch_cmd(eight), env=env, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        seen = b""
        try:
            deadline = time.monotonic() + 20
            while not all(h.encode() in seen for h in HOSTS):
                assert time.monotonic() < deadline, f"no frame with every host: {seen[-2000:]!r}"
                if select.select([master], [], [], 0.1)[0]:
                    seen += os.read(master, 65536)
            os.write(master, b"q")
            deadline = time.monotonic() + 10
            while proc.poll() is None and time.monotonic() < deadline:
                if select.select([master], [], [], 0.1)[0]:
                    with contextlib.suppress(OSError):
                        os.read(master, 65536)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            os.close(master)
        assert proc.returncode == 0
