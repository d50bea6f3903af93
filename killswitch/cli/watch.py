"""`killswitch watch`: a live terminal view of one node, redrawn from `status` reports.

`render_status` is pure (a status report in, a rich renderable out: no Redis, no clock, no
terminal); `watch` is the thin loop that polls `control.status` and redraws. It only reads:
it must never change the node, and quitting it (Ctrl-C, q) never touches the fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import termios
import tty
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from killswitch.cli.rolloutcli import rollout_lines
from killswitch.core.settings.options import default
from killswitch.ops import control
from killswitch.store.redisconn import classify, connect
from killswitch.store.store import Store
from killswitch.view.text import escape

STATE_STYLE = {
    "ARMED": "bold green",
    "KILLED": "bold white on red",
    "UNARMED": "bold yellow",
    "STALE": "bold white on red",
}
STALE_ROW = "bold red"
VIEW_STALE_S = 2.0  # the aggregator's view is suspect when its last tick is older than this


def render_status(report: Mapping[str, Any]) -> RenderableType:
    """One frame of the view: state and epoch, volume vs limit, confirmations, every host."""
    agg: Mapping[str, Any] = report.get("aggregator") or {}
    return Group(
        _headline(report),
        _volume(report, agg),
        _confirmations(report),
        _hosts(report, agg),
    )


def render_error(node: str, message: str) -> RenderableType:
    """The frame shown while the node cannot be read (the last good frame would lie)."""
    return Panel(
        Text(message, style="bold red"),
        title=f"node {node}: status unknown",
        border_style="red",
    )


# --- pieces of a frame -----------------------------------------------------------------------


def _headline(rep: Mapping[str, Any]) -> RenderableType:
    state = str(rep.get("state") or "UNARMED")
    line = Text.assemble(
        ("node ", "dim"), (str(rep.get("node", "?")), "bold"), "  ",
        (f" {state} ", STATE_STYLE.get(state, "bold")), "  ",
        ("epoch ", "dim"), (str(rep.get("epoch", 0)), "bold"),
    )  # fmt: skip
    if rep.get("reason"):
        line.append(f"  reason: {escape(rep['reason'])}")
    detail = Text(style="dim")
    if rep.get("changed_at"):
        detail.append(f"last change {rep['changed_at']} by {escape(rep.get('actor') or '?')}")
        if rep.get("cause"):
            detail.append(f" ({rep['cause']})")
    if rep.get("server_time"):
        detail.append(f"   server time {rep['server_time']}")
    return Group(line, detail)


def _volume(rep: Mapping[str, Any], agg: Mapping[str, Any]) -> RenderableType:
    if not agg:
        return Text("no aggregator view: nothing sums this node's volume", style="bold red")
    window = agg.get("window_s", "?")
    orders = _int(agg.get("node_orders"))
    limit = _int(agg.get("max_orders")) or None
    line = Text.assemble(("node orders ", "dim"), (f"{orders}", "bold"), f" in {window}s")
    bar: RenderableType = Text("")
    if limit:
        pct = 100.0 * orders / limit
        style = "bold red" if pct >= 90 else "yellow" if pct >= 75 else "green"
        line.append(f" / limit {limit} ")
        line.append(f"({pct:.0f}%)", style=style)
        bar = Table.grid()  # a grid ends the bar's line (a bare ProgressBar does not)
        bar.add_row(ProgressBar(total=limit, completed=min(orders, limit), width=60,
                                complete_style=style, finished_style="bold red"))  # fmt: skip
    else:
        line.append(" (no static limit)", style="dim")
    baseline = _float(agg.get("expected"))
    if baseline is not None:
        line.append(f"  baseline {baseline:.0f}")
        if agg.get("warm") in (False, "0"):
            line.append(" (learning)", style="dim")
    rules = _rules(agg)
    if rules:
        line.append("  rules: ", style="dim")
        for i, rule in enumerate(rules):
            level = _int(rule.get("level"))
            style = "bold red" if level >= 90 else "yellow" if level >= 50 else ""
            shadow = " (shadow)" if rule.get("shadow") else ""
            line.append(("  " if i else "") + f"{rule.get('rule')} {level}%{shadow}", style=style)
    who = Text(style="dim")
    who.append(f"aggregator {rep.get('leader') or agg.get('instance') or '?'}")
    age = _age_s(rep.get("server_time"), agg.get("tick_ms"))
    if age is not None:
        who.append(f", last tick {age:.1f}s ago")
        if age > VIEW_STALE_S:
            who.append("  VIEW STALE: is the aggregator running?", style="bold red")
    if rep.get("redis_durable") is False:
        who.append("  Redis AOF OFF: a restart forgets kills", style="bold red")
    return Group(line, bar, who)


def _confirmations(rep: Mapping[str, Any]) -> RenderableType:
    roster: Sequence[str] = rep.get("roster") or []
    confirmed: Sequence[str] = rep.get("confirmed") or []
    missing: Sequence[str] = rep.get("missing") or []
    ok = bool(roster) and not missing
    line = Text.assemble(
        ("confirmed ", "dim"),
        (f"{len(confirmed)}/{len(roster)}", "bold green" if ok else "bold red"),
        " roster hosts",
    )
    if missing:
        line.append(f"   MISSING: {', '.join(missing)}", style="bold red")
    stale: Sequence[str] = rep.get("stale_hosts") or []
    if stale:
        line.append(f"   STALE (blocking): {', '.join(stale)}", style=STALE_ROW)
    scopes: Sequence[Mapping[str, Any]] = rep.get("scopes") or []
    if scopes:
        active = ", ".join(f"{s.get('kind')} {s.get('value')}" for s in scopes)
        line.append(f"   SCOPED KILLS: {active}", style="bold red")
    if rep.get("state") == "KILLED" and rep.get("flat") is not None:
        line.append(f"   flat {len(rep['flat'])}/{len(roster)}", style="dim")
    contradicted = rep.get("contradicted") or {}
    if isinstance(contradicted, dict) and contradicted:
        line.append(f"   CONTRADICTED (not counted): {', '.join(contradicted)}", style="bold red")
    junk = rep.get("junk") or []
    if junk:
        line.append(f"   JUNK IN REDIS: {escape('; '.join(map(str, junk)))}", style="bold red")
    odd: Mapping[str, str] = (rep.get("release_split") or {}).get("odd") or {}
    if odd:
        line.append(f"   RELEASE SPLIT: {', '.join(sorted(odd))}", style="bold red")
    for text in rollout_lines(rep):
        line.append(f"   {text}", style="bold yellow")
    return line


def _hosts(rep: Mapping[str, Any], agg: Mapping[str, Any]) -> RenderableType:
    table = Table(expand=False, pad_edge=False, box=None, header_style="bold dim")
    for name, justify in (
        ("host", "left"), ("alive", "left"), ("age", "right"), ("gate", "left"),
        ("view", "left"), ("epoch", "right"), ("orders/s", "right"), ("confirmed", "left"),
        ("release", "left"), ("", "left"),
    ):  # fmt: skip
        # fold, never cut: a host name (up to 63 characters) is what an operator acts on
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    confirmed = set(rep.get("confirmed") or [])
    stale = set(rep.get("stale_hosts") or [])
    haunted = {h.get("host"): h for h in _list(agg.get("haunted"))}
    odd: Mapping[str, str] = (rep.get("release_split") or {}).get("odd") or {}
    for host, s in (rep.get("hosts") or {}).items():
        age = s.get("age_s")
        note = []
        if s.get("regression"):
            note.append(f"! {escape(s['regression'])}")
        if host in odd:
            note.append("! SPLIT: runs another release")
        if s.get("attest"):
            note.append(f"! {escape(s['attest'])}")
        if host in haunted:
            note.append(f"HAUNTED x{_float(haunted[host].get('peer_ratio')) or 0:.1f} peers")
        view = s.get("view") or ("STALE" if host in stale else "?")
        table.add_row(
            host,
            "yes" if s.get("alive") else "NO",
            "-" if age is None else f"{age:.2f}s",
            str(s.get("gate", "?")),
            Text(view, style=STATE_STYLE.get(view, "")),
            str(s.get("epoch", 0)),
            f"{_float(s.get('orders_per_s')) or 0:.1f}",
            "yes" if host in confirmed else "NO",
            Text(escape(s.get("release") or "-")[:12], style="bold red" if host in odd else ""),
            " ".join(note),
            style=STALE_ROW
            if host in stale or host in odd
            else ("yellow" if host in haunted else None),
        )
    return table


# --- tolerant readers: the view hash is strings, and other versions may lack fields -----------


def _int(v: Any) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError, OverflowError):
        return 0


def _float(v: Any) -> float | None:
    try:
        return None if v in (None, "") else float(v)
    except (TypeError, ValueError):
        return None


def _list(v: Any) -> list[dict[str, Any]]:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return []
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def _rules(agg: Mapping[str, Any]) -> list[dict[str, Any]]:
    return _list(agg.get("rules"))


def _age_s(server_time: Any, tick_ms: Any) -> float | None:
    if not server_time or not _int(tick_ms):
        return None
    try:
        now = datetime.fromisoformat(str(server_time)).timestamp()
    except ValueError:
        return None
    return max(now - _int(tick_ms) / 1000.0, 0.0)


# --- the loop ----------------------------------------------------------------------------------


PIPED_WIDTH = 240  # columns of a frame written to a pipe or a file (rich would assume 80)


def output_console() -> Console:
    """A console for stdout: the terminal's width on a terminal; piped (`watch --once | ...`),
    wide enough that no row wraps, unless COLUMNS says otherwise."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=PIPED_WIDTH)


async def watch(
    redis_url: str,
    node: str,
    *,
    interval: float = default("interval"),
    once: bool = False,
    console: Console | None = None,
) -> int:
    """Poll the node's status every `interval` and redraw; returns the exit code (0 on quit)."""
    console = console or output_console()
    redis = connect(redis_url, socket_timeout=3.0, client_name=f"ks-watch-{node}")
    store = Store(redis, node)

    async def frame() -> tuple[bool, RenderableType]:
        try:
            outcome = await control.status(store)
        except (RedisError, OSError) as e:
            return False, render_error(node, f"cannot reach Redis: {classify(e).line(redis_url)}")
        return True, render_status(outcome.report)

    try:
        return await run_view(frame, interval=interval, once=once, console=console)
    finally:
        await redis.aclose()


async def run_view(
    frame: Callable[[], Awaitable[tuple[bool, RenderableType]]],
    *,
    interval: float,
    once: bool,
    console: Console,
) -> int:
    """Redraw `frame()` every `interval` until q, Ctrl-C or SIGTERM (exit 0); with `once`,
    print one frame (exit 1 when it could not be read)."""
    if once:
        ok, view = await frame()
        (console if ok else Console(stderr=True)).print(view)
        return 0 if ok else 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        with _keys_quit(loop, stop), Live(console=console, auto_refresh=False) as live:
            while not stop.is_set():
                live.update((await frame())[1], refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


@contextlib.contextmanager
def _keys_quit(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> Iterator[None]:
    """On a terminal, `q` sets `stop` (keys are read unbuffered; the terminal is restored)."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else -1
    if fd < 0:
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def on_key() -> None:
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():  # q, or the terminal went away
            stop.set()

    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
