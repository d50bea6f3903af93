"""libnftables, in-process, in the fenced network namespace: the JSON commands of `nft -j`
(libnftables-json(5)) run through the library the `nft` binary is a shell around, plus
`ss -K` to cut established connections.

Why the library and not a process per call: the kill fence is on the kill's critical path,
and on a loaded machine starting `nft` took 5 to 80 ms per call where the library call takes
well under one (docs/PERFORMANCE.md#the-network-fence). The calls run on one dedicated
thread that entered the namespace once (`setns` moves only the calling thread); `ss` is
started from that thread, so it runs in the namespace too. The one exception is the kill
fence (`apply_now`): handing it to that thread cost up to 100 ms on a loaded machine (the
thread waits to be scheduled and for the interpreter lock), so the event loop's thread runs
it itself, through the same context. That context's netlink socket was opened on the
namespaced thread, and a socket stays in the namespace it was created in, whichever thread
uses it (libnftables opens it once, in `nft_ctx_new`). A context is not thread-safe: a lock
makes its users take turns.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import subprocess
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from killswitch.core.enforce import fence as rules
from killswitch.core.enforce.fence import Listing

LIBNFTABLES = "libnftables.so.1"
_CLONE_NEWNET = 0x40000000
_NFT_CTX_OUTPUT_JSON = 1 << 4
SS_TIMEOUT_S = 5.0  # an `ss -K` that takes longer has failed
NOW_WAIT_S = 0.02  # `apply_now` waits this long for a call under way, then hands it over


class FenceFailed(RuntimeError):
    """A tool failed; the message says which and why (one line)."""


def load_library() -> Any:
    """libnftables with its signatures declared; OSError when it is not installed."""
    lib = ctypes.CDLL(LIBNFTABLES, use_errno=True)
    p, s = ctypes.c_void_p, ctypes.c_char_p
    for name, res, args in (
        ("nft_ctx_new", p, [ctypes.c_uint32]),
        ("nft_ctx_output_set_flags", None, [p, ctypes.c_uint]),
        ("nft_ctx_buffer_output", ctypes.c_int, [p]),
        ("nft_ctx_buffer_error", ctypes.c_int, [p]),
        ("nft_run_cmd_from_buffer", ctypes.c_int, [p, s]),
        ("nft_ctx_get_output_buffer", s, [p]),
        ("nft_ctx_get_error_buffer", s, [p]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


class Tools:
    """nftables and `ss`, in the namespace `netns` ("" the sidecar's own)."""

    def __init__(self, netns: str = "") -> None:
        self.netns = netns
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft")
        self._lib: Any = None
        self._ctx: Any = None
        self._turn = threading.Lock()  # one user of the context at a time
        self._writes = 0  # changes handed to the nftables thread and not done yet

    def _enter(self) -> None:
        """On the worker thread, once: the namespace, then a JSON context."""
        if self._ctx is not None:
            return
        try:
            lib = load_library()
        except OSError as e:
            raise FenceFailed(f"cannot load {LIBNFTABLES} (install nftables): {e}") from None
        if self.netns:
            path = f"/run/netns/{self.netns}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise FenceFailed(f"cannot open {path}: {e.strerror}") from None
            try:
                # the type named, never 0: systemd's RestrictNamespaces=net allows only this
                if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    why = f" ({rules.NETNS_HINT})" if err == errno.EPERM else ""
                    raise FenceFailed(f"cannot enter {path}: {os.strerror(err)}{why}")
            finally:
                os.close(fd)
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise FenceFailed("nft_ctx_new failed")
        lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        self._lib, self._ctx = lib, ctx

    def _nft(self, cmd: str | bytes) -> str:
        self._enter()
        with self._turn:
            return self._run(cmd)

    def _run(self, cmd: str | bytes) -> str:
        """One command through the context; the caller holds `_turn`."""
        rc = self._lib.nft_run_cmd_from_buffer(
            self._ctx, cmd if isinstance(cmd, bytes) else cmd.encode()
        )
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode(errors="replace")
        if rc != 0:
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            raise FenceFailed(f"nftables refused the command: {' '.join(err.split())[:300]}")
        return out

    def apply_now(self, cmd: bytes) -> asyncio.Future[str]:
        """Run `cmd` (libnftables JSON) on the calling thread, the event loop's, through the
        context the nftables thread opened in the namespace: no hop to another thread. If
        the context is not open yet, or a call on the nftables thread still holds it after
        `NOW_WAIT_S`, it is handed to that thread instead. Returns the outcome as a future."""
        loop = asyncio.get_running_loop()
        # never ahead of a change already handed over (a lift must not land after this)
        if self._ctx is not None and not self._writes and self._turn.acquire(timeout=NOW_WAIT_S):
            done: asyncio.Future[str] = loop.create_future()
            try:
                done.set_result(self._run(cmd))
            except FenceFailed as e:
                done.set_exception(e)
            finally:
                self._turn.release()
            return done
        return self.apply_soon(cmd)

    def _ss(self, argv: Sequence[str]) -> None:
        self._enter()  # the child inherits this thread's namespace
        try:
            res = subprocess.run(
                argv, capture_output=True, text=True, timeout=SS_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise FenceFailed(f"ss -K failed: {e}") from None
        if res.returncode:
            raise FenceFailed(f"ss -K failed (exit {res.returncode}): {res.stderr.strip()[:300]}")

    async def _call(self, fn: Any, arg: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)

    async def apply(self, doc: dict[str, Any]) -> None:
        await self.apply_soon(doc)

    def apply_soon(self, doc: dict[str, Any] | bytes) -> asyncio.Future[str]:
        """Hand `doc` to the nftables thread now (not when a task gets to run); await the
        result for its outcome."""
        loop = asyncio.get_running_loop()
        cmd = doc if isinstance(doc, bytes) else json.dumps(doc)
        done = loop.run_in_executor(self._pool, self._nft, cmd)
        self._writes += 1
        done.add_done_callback(self._written)
        return done

    def _written(self, _: asyncio.Future[str]) -> None:
        self._writes -= 1

    async def listing(self) -> Listing:
        try:
            out = await self._call(self._nft, f"list table {rules.FAMILY} {rules.TABLE}")
        except FenceFailed as e:
            if "No such file or directory" in str(e):
                return Listing()
            raise
        try:
            return rules.parse_listing(json.loads(out))
        except (ValueError, TypeError, KeyError) as e:
            raise FenceFailed(f"nft list: unreadable output: {e}") from None

    async def cut(self, endpoints: Sequence[rules.Endpoint]) -> None:
        await self._call(self._ss, ["ss", "-K", "-t", "-n", rules.cut_filter(endpoints)])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
