"""The kill fence on the kill notice's path: the sidecar's notice handler puts the kill rules
into the fenced namespace before it returns (no await, no other thread, no round trip), and
a change already handed to the nftables thread is never overtaken. The sidecar runs
in-process against the real redis-server; the rules are real nftables rules in a network
namespace the test creates. Needs root (CI runs as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from redis.asyncio import Redis
from structlog.testing import CapturingLogger

from killswitch.core.enforce.fence import FenceSpec, kill_fence, lift, parse_endpoint, standing
from killswitch.sidecar.fence import Fence
from killswitch.sidecar.nftables import Tools
from killswitch.sidecar.service import Sidecar
from killswitch.sidecar.settings import SidecarSettings
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.store import Store
from kstest import wait_until_async
from kstest.netns import VENUE_ADDR, VENUE_PORT, NetPair, is_root, net_pair

pytestmark = pytest.mark.skipif(
    not is_root(), reason="the fence tests create network namespaces: they need root (CI is root)"
)

HOST = "or-01"
KILL_RULE = "reject with tcp reset"
SPEC = FenceSpec((parse_endpoint(f"{VENUE_ADDR}:{VENUE_PORT}"),), (0,))


@pytest.fixture
def pair() -> Iterator[NetPair]:
    """A venue and a trading namespace, deleted after the test whatever happens."""
    with net_pair() as p:
        yield p


def kill_rules(pair: NetPair) -> int:
    """How many rules the kill chains of the trading namespace hold, read with `nft` itself."""
    chain, n = "", 0
    for line in pair.nft_list().splitlines():
        words = line.split()
        if words[:1] == ["chain"]:
            chain = words[1]
        elif chain in ("kill", "killin") and KILL_RULE in line:
            n += 1
    return n


LOGS: defaultdict[str, CapturingLogger] = defaultdict(CapturingLogger)  # node -> its log


def logged(node: str, event: str) -> list[dict[str, object]]:
    return [c.kwargs for c in LOGS[node].calls if c.kwargs.get("event") == event]


@contextlib.asynccontextmanager
async def occupied(tools: Tools) -> AsyncIterator[None]:
    """The nftables thread busy with something else (as with `ss -K` under way) until exit."""
    busy, release = threading.Event(), threading.Event()

    def occupy() -> None:
        busy.set()
        release.wait(10)

    done = asyncio.get_running_loop().run_in_executor(tools._pool, occupy)
    await asyncio.to_thread(busy.wait, 10)
    try:
        yield
    finally:
        release.set()
        await done


async def fenced_sidecar(
    redis: Redis, node: str, tmp_path: Path, keys: OperatorKeys, pair: NetPair, on_kill: bool
) -> Sidecar:
    """A sidecar of a node armed at epoch 1 (gate open) fencing the trading namespace; its
    lease is long so that only the notices decide here."""
    settings = SidecarSettings(
        node=node, host=HOST, redis_url="", flush_interval=30.0, stale_after=60.0,
        state_dir=str(tmp_path), operators=str(keys.file), fence=SPEC,
        fence_netns=pair.trading, fence_on_kill=on_kill,
    )  # fmt: skip
    sc = Sidecar(settings, redis, logger=structlog.wrap_logger(LOGS[node], processors=[]))
    assert isinstance(sc.fence, Fence)
    await sc.fence.start()
    await signed_store_arm(
        Store(redis, node), keys, reason="open", roster=[HOST], boots={HOST: sc.boot_id}
    )
    assert await sc.sync_once()
    assert sc.gate.is_open
    assert kill_rules(pair) == 0
    return sc


@pytest.fixture
async def sidecar(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys, pair: NetPair
) -> AsyncIterator[Sidecar]:
    sc = await fenced_sidecar(redis, node, tmp_path, operator_keys, pair, on_kill=False)
    try:
        yield sc
    finally:
        await sc.stop()
        await sc.fence.close()


@pytest.fixture
async def on_kill_sidecar(
    redis: Redis, node: str, tmp_path: Path, operator_keys: OperatorKeys, pair: NetPair
) -> AsyncIterator[Sidecar]:
    sc = await fenced_sidecar(redis, node, tmp_path, operator_keys, pair, on_kill=True)
    try:
        yield sc
    finally:
        await sc.stop()
        await sc.fence.close()


class TestRaisedByTheNotice:
    """The notice handler raises the kill fence itself; proof follows."""

    async def test_fence_notice_puts_the_rules_in_before_the_handler_returns(
        self, redis: Redis, node: str, sidecar: Sidecar, pair: NetPair
    ) -> None:
        """`FENCE <epoch>`: the kill rules are in the fenced namespace when the handler returns,
        the nftables thread busy meanwhile (nothing awaited, no round trip); then the read-back
        proves them for that kill."""
        fence = sidecar.fence
        assert isinstance(fence, Fence)
        res = await Store(redis, node).kill(
            actor="op", reason="r", cause="manual", floor=1, net_fence=True
        )
        async with occupied(fence.tools):
            sidecar.notices.notice(f"FENCE {res.epoch}")
            assert kill_rules(pair) == 2  # out and in
            assert [e["epoch"] for e in logged(node, "FENCE_RAISED")] == [res.epoch]
        await wait_until_async(lambda: fence.fenced_epoch == res.epoch, 10.0, 0.02, "proven")
        assert fence.state == "killed" and fence.problem == ""

    async def test_kill_notice_raises_it_with_fence_on_kill(
        self, redis: Redis, node: str, on_kill_sidecar: Sidecar, pair: NetPair
    ) -> None:
        """With `--fence-on-kill`, a plain `KILLED <epoch> <ver>` notice raises the kill fence
        in its handler, before the round trip that reads the kill."""
        res = await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
        on_kill_sidecar.notices.notice(f"KILLED {res.epoch} {res.ver}")
        assert kill_rules(pair) == 2
        assert on_kill_sidecar.gate.check("o") == (False, res.epoch, "killed")

    async def test_kill_notice_leaves_it_down_without_fence_on_kill(
        self, redis: Redis, node: str, sidecar: Sidecar, pair: NetPair
    ) -> None:
        """Without `--fence-on-kill` a plain kill's notice closes the gate and raises no fence."""
        res = await Store(redis, node).kill(actor="op", reason="r", cause="manual", floor=1)
        sidecar.notices.notice(f"KILLED {res.epoch} {res.ver}")
        assert sidecar.gate.check("o") == (False, res.epoch, "killed")
        assert kill_rules(pair) == 0


class TestApplyNow:
    """`Tools.apply_now`, the event loop's direct call into the namespaced context."""

    async def test_never_overtakes_a_change_handed_to_the_nftables_thread(
        self, pair: NetPair
    ) -> None:
        """A lift handed to the busy nftables thread, then a kill fence raised at once: the kill
        waits its turn, so the fence ends up raised, not lifted."""
        tools = Tools(pair.trading)
        try:
            await tools.apply(standing(SPEC, await tools.listing()))
            async with occupied(tools):
                lifted = tools.apply_soon(lift())
                raised = tools.apply_now(json.dumps(kill_fence()).encode())
                assert not raised.done()  # queued behind the lift, not run on this thread
            await asyncio.gather(lifted, raised)
            assert (await tools.listing()).killed
        finally:
            tools.close()
