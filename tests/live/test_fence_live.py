"""The network fence on real sidecar processes and real nftables, in network namespaces the
suite creates: a venue namespace with an echo listener, a trading namespace joined to it by a
veth pair, fenced by the sidecar (`--fence-netns`). Needs root (CI runs as root).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from killswitch.core.enforce.fence import FenceSpec, parse_endpoint, problems, standing
from killswitch.sidecar.nftables import Tools
from killswitch.sim.embedded import free_port
from kstest import Fleet, wait_until
from kstest.netns import (
    CLIENT_PYTHON,
    VENUE_ADDR,
    VENUE_PORT,
    NetPair,
    is_root,
    net_pair,
)
from tests.live.test_containment import gauge
from tests.live.test_json_schemas import valid

pytestmark = pytest.mark.skipif(
    not is_root(), reason="the fence tests create network namespaces: they need root (CI is root)"
)

HOST = "or-01"
OTHER_UID = 4242  # any uid but the sidecar's own (root), which is the one allowed


@pytest.fixture
def pair() -> Iterator[NetPair]:
    """A venue and a trading namespace, deleted after the test whatever happens."""
    with net_pair() as p:
        yield p


@pytest.fixture
def fenced(redis_url: str, node: str, pair: NetPair, tmp_path: Path) -> Iterator[Fleet]:
    """One armed host whose sidecar fences the trading namespace, with its aggregator."""
    f = Fleet(
        redis_url, node, [HOST], workdir=tmp_path,
        extra_sidecar_args=("--fence", f"{VENUE_ADDR}:{VENUE_PORT}", "--fence-netns", pair.trading),
        metrics_ports={HOST: free_port()},
    )  # fmt: skip
    try:
        f.start_sidecar(HOST, wait=False)
        f.start_aggregator()  # both interpreters start at once
        f.wait_serving(HOST)
        f.wait_ready()
        f.arm()
        f.wait_all("PONG ARMED")
        yield f
    finally:
        f.stop()


def host_report(f: Fleet) -> dict[str, Any]:
    return f.cli_json("status")[1]["hosts"][HOST]


class TestStandingRule:
    def test_other_uid_is_refused_counted_and_kills_the_host(
        self, fenced: Fleet, pair: NetPair
    ) -> None:
        """While ARMED an allowed uid connects; another uid is refused, counted, and its host is
        killed on its own with cause bypass, the uid named and audited."""
        assert pair.connect(0) == "ok"
        assert pair.connect(OTHER_UID) == "ConnectionRefusedError"
        assert pair.connect(0) == "ok"  # the refusal is not a kill fence

        def killed() -> bool:
            scopes = fenced.cli_json("status")[1]["scopes"]
            return any(s["kind"] == "host" and s["value"] == HOST for s in scopes)

        wait_until(killed, 15.0, 0.05, "the bypassing host killed")
        rep = fenced.cli_json("status")[1]
        scope = next(s for s in rep["scopes"] if s["value"] == HOST)
        assert f"uid {OTHER_UID}" in scope["reason"] and scope["cause"] == "bypass"
        wait_until(lambda: fenced.ping(HOST).startswith("PONG KILLED"), 10.0, 0.02, "gate closed")
        assert fenced.order(HOST).startswith("BLOCK")
        entries = fenced.cli_json("audit")[1]["entries"]
        assert any(e.get("cause") == "bypass" and e.get("action") == "kill_host" for e in entries)
        port = fenced.metrics_ports[HOST]
        refused = gauge(port, "killswitch_fence_refused_total", node=fenced.node, host=HOST)
        assert refused is not None and refused >= 1
        assert fenced.sidecars[HOST].logged("FENCE_BYPASS")[0]["uid"] == str(OTHER_UID)

    def test_bypass_blocks_at_once_and_is_recorded_when_an_aggregator_acts(
        self, fenced: Fleet, pair: NetPair
    ) -> None:
        """With no aggregator running the bypassing host closes its own gate and reports the
        bypass; a later verified arm releases it, and an aggregator records the next one."""
        assert fenced.aggregator is not None
        fenced.aggregator.stop()
        assert pair.connect(OTHER_UID) == "ConnectionRefusedError"
        wait_until(lambda: fenced.ping(HOST).startswith("PONG KILLED"), 10.0, 0.02, "gate closed")
        wait_until(
            lambda: host_report(fenced)["fence"]["bypass"].endswith(f" {OTHER_UID}"), 10.0, 0.05,
            "bypass reported",
        )  # fmt: skip
        assert fenced.cli_json("status")[1]["scopes"] == []
        # Killed and armed again before any aggregator recorded it: the new verified arm
        # releases the local hold.
        assert fenced.cli_json("kill", "--reason", "x", "--timeout", "10")[0] == 0
        fenced.arm()
        wait_until(lambda: fenced.ping(HOST).startswith("PONG ARMED"), 10.0, 0.02, "released")
        assert fenced.sidecars[HOST].logged("FENCE_BYPASS_RELEASED")
        # Again, and this time an aggregator runs: it records the host's kill.
        assert pair.connect(OTHER_UID) == "ConnectionRefusedError"
        wait_until(lambda: fenced.ping(HOST).startswith("PONG KILLED"), 10.0, 0.02, "closed")
        fenced.start_aggregator()
        wait_until(lambda: fenced.cli_json("status")[1]["scopes"], 15.0, 0.05, "kill recorded")
        wait_until(lambda: not host_report(fenced)["fence"]["bypass"], 10.0, 0.05, "enforced")
        assert fenced.ping(HOST).startswith("PONG KILLED")


class TestKillFence:
    def test_kill_fence_refuses_every_uid_cuts_and_lifts_on_arm(
        self, fenced: Fleet, pair: NetPair
    ) -> None:
        """`kill --fence` refuses every uid and cuts an established connection; kill --json
        lists the host in fenced; the next verified arm lifts the fence."""
        held = pair.hold(0)
        assert held.stdout is not None and held.stdin is not None
        try:
            assert held.stdout.readline().strip() == "ok"
            code, rep = fenced.cli_json("kill", "--reason", "fence test", "--fence")
            assert code == 0, rep
            assert rep["fenced"] == [HOST] and rep["fence"] is True and rep["fence_failed"] == {}
            valid("kill", rep)
            held.stdin.write("again\n")
            held.stdin.flush()
            assert held.stdout.readline().strip() != "ok"  # cut: reset or aborted
        finally:
            held.kill()
            held.wait()
            held.stdin.close()
            held.stdout.close()
        assert pair.connect(0) == "ConnectionRefusedError"
        assert pair.connect(OTHER_UID) == "ConnectionRefusedError"
        fenced.arm()
        wait_until(
            lambda: host_report(fenced)["fence"]["state"] == "standing", 10.0, 0.05, "fence lifted"
        )
        assert pair.connect(0) == "ok"
        assert pair.connect(OTHER_UID) == "ConnectionRefusedError"  # the standing rule stays

    def test_sigkill_leaves_the_fence_and_a_restart_reports_it(
        self, fenced: Fleet, pair: NetPair
    ) -> None:
        """A SIGKILLed sidecar leaves the kill fence up; restarted, it finds it, reports it and
        `status` lists the host as fenced; a table then removed by hand is named (exit 3)."""
        code, rep = fenced.cli_json("kill", "--reason", "fence test", "--fence")
        assert code == 0 and rep["fenced"] == [HOST], rep
        fenced.sidecars[HOST].stop(signal.SIGKILL)
        assert pair.connect(0) == "ConnectionRefusedError"
        assert "reject with tcp reset" in pair.nft_list()
        proc = fenced.start_sidecar(HOST)
        assert proc.logged("FENCE_FOUND")
        wait_until(lambda: fenced.cli_json("status")[1]["fenced"] == [HOST], 15.0, 0.05, "fenced")
        code, rep = fenced.cli_json("status")
        assert code == 0 and rep["hosts"][HOST]["fence"]["state"] == "killed", rep
        valid("status", rep)
        assert pair.connect(0) == "ConnectionRefusedError"
        # A table removed by hand is not proven: named by status (exit 3) and the metric.
        subprocess.run(pair.exec(pair.trading, "nft", "delete", "table", "inet", "killswitch"),
                       check=True)  # fmt: skip
        wait_until(lambda: fenced.cli_json("status")[0] == 3, 15.0, 0.05, "status exit 3")
        rep = fenced.cli_json("status")[1]
        assert "table inet killswitch is missing" in rep["fence_failed"][HOST]
        assert rep["disagree"][HOST].startswith("fence not proven")
        port = fenced.metrics_ports[HOST]
        assert gauge(port, "killswitch_fence_unproven", node=fenced.node, host=HOST) == 1

    def test_kill_fence_without_a_fenced_host_is_named(self, redis_url: str, node: str) -> None:
        """`kill --fence` on a host that has no fence exits 3 and names it in fence_failed."""
        f = Fleet(redis_url, node, [HOST])
        try:
            f.start_sidecar(HOST, wait=False)
            f.start_aggregator()
            f.wait_serving(HOST)
            f.wait_ready()
            code, rep = f.cli_json("kill", "--reason", "x", "--fence", "--timeout", "1")
        finally:
            f.stop()
        assert code == 3
        assert rep["fence_failed"] == {HOST: "no --fence on this host"}
        valid("kill", rep)


class TestCapability:
    def test_without_cap_net_admin_the_sidecar_refuses_to_start(
        self, redis_url: str, tmp_path: Path
    ) -> None:
        """Without CAP_NET_ADMIN `--fence` refuses to start: exit 2, one line saying how to
        grant it."""
        cmd = sidecar_cmd(redis_url, tmp_path)
        res = subprocess.run(
            ["capsh", "--drop=cap_net_admin", "--", "-c", 'exec "$@"', "sh", *cmd],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 2, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "AmbientCapabilities=CAP_NET_ADMIN" in lines[0], res.stderr
        assert "cap_add" in lines[0]

    def test_with_only_cap_net_admin_fence_netns_refuses_to_start(
        self, redis_url: str, tmp_path: Path, pair: NetPair
    ) -> None:
        """With CAP_NET_ADMIN alone (fence.conf's grant) `--fence-netns` refuses to start: exit
        2, one line naming CAP_SYS_ADMIN and the fence-netns drop-in."""
        res = subprocess.run(
            [*with_caps("fence.conf"), *sidecar_cmd(redis_url, tmp_path, pair.trading)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 2, res
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "CAP_SYS_ADMIN" in lines[0], res.stderr
        assert "fence-netns.conf" in lines[0] and "RestrictNamespaces=net" in lines[0]

    def test_the_drop_ins_capabilities_are_enough_for_fence_netns(
        self, redis_url: str, node: str, pair: NetPair, tmp_path: Path
    ) -> None:
        """With exactly the capabilities the two fence drop-ins grant, a `--fence-netns` sidecar
        installs the fence, raises and proves the kill fence (`ss -K` included)."""

        class Capped(Fleet):
            def sidecar_args(self, host: str) -> list[str]:
                return [*with_caps("fence.conf", "fence-netns.conf"), *super().sidecar_args(host)]

        f = Capped(
            redis_url, node, [HOST], workdir=tmp_path,
            extra_sidecar_args=("--fence", f"{VENUE_ADDR}:{VENUE_PORT}", "--fence-netns",
                                pair.trading),
        )  # fmt: skip
        try:
            f.start_sidecar(HOST, wait=False)
            f.start_aggregator()
            f.wait_serving(HOST)
            f.wait_ready()
            f.arm()
            f.wait_all("PONG ARMED")
            assert pair.connect(0) == "ok"
            code, rep = f.cli_json("kill", "--reason", "capped", "--fence")
            assert code == 0 and rep["fenced"] == [HOST], rep
            assert pair.connect(0) == "ConnectionRefusedError"
        finally:
            f.stop()


DROP_INS = Path(__file__).resolve().parents[2] / "deploy/systemd/killswitch-sidecar@.service.d"


def with_caps(*drop_ins: str) -> list[str]:
    """A command prefix: root with only the capabilities the named drop-ins grant (their
    AmbientCapabilities=, the bounding set of the process and of what it starts)."""
    caps = [
        c.removeprefix("CAP_").lower()
        for name in drop_ins
        for line in re.findall(r"^AmbientCapabilities=(.*)$", (DROP_INS / name).read_text(), re.M)
        for c in line.split()
    ]
    assert caps, drop_ins
    return ["setpriv", "--bounding-set", ",".join(["-all", *(f"+{c}" for c in caps)]), "--"]


def sidecar_cmd(redis_url: str, tmp_path: Path, netns: str = "") -> list[str]:
    return [
        sys.executable, "-m", "killswitch", "sidecar", "--redis", redis_url, "--node", "n1",
        "--host", HOST, "--listen", f"unix:{tmp_path / 'g.sock'}",
        "--state-dir", str(tmp_path), "--fence", f"{VENUE_ADDR}:{VENUE_PORT}",
        *(("--fence-netns", netns) if netns else ()),
    ]  # fmt: skip


class TestRulesOnIpv6:
    def test_ipv6_endpoint_is_fenced_by_uid(self, pair: NetPair) -> None:
        """The standing rules installed by the fence's own tools refuse a uid not allowed on an
        IPv6 endpoint ([::1] in the trading namespace) and let the allowed uid through."""
        listen = "import socket,time\ns=socket.socket(socket.AF_INET6)\ns.bind(('::1',9878))\n" \
            "s.listen()\nprint('up',flush=True)\ntime.sleep(30)"  # fmt: skip
        listener = subprocess.Popen(
            pair.exec(pair.trading, CLIENT_PYTHON, "-c", listen), stdout=subprocess.PIPE, text=True
        )
        tools = Tools(pair.trading)
        try:
            assert listener.stdout is not None and listener.stdout.readline().strip() == "up"
            spec = FenceSpec((parse_endpoint("[::1]:9878"),), (0,))
            asyncio.run(tools.apply(standing(spec, asyncio.run(tools.listing()))))
            assert problems(asyncio.run(tools.listing()), spec, killed=False) == []
            probe = "import socket\ntry:\n socket.create_connection(('::1',9878),timeout=3)\n" \
                " print('ok')\nexcept OSError as e:\n print(type(e).__name__)"  # fmt: skip
            for uid, want in ((0, "ok"), (OTHER_UID, "ConnectionRefusedError")):
                out = subprocess.run(pair.as_uid(uid, CLIENT_PYTHON, "-c", probe),
                                     capture_output=True, text=True, check=False)  # fmt: skip
                assert out.stdout.strip() == want, (uid, out)
            assert asyncio.run(tools.listing()).bypass_uids == (OTHER_UID,)
        finally:
            tools.close()
            listener.kill()
            listener.wait()
            if listener.stdout is not None:
                listener.stdout.close()
