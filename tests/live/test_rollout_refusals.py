"""Signed rollouts at their edges, in process: every refusal `ops.rollout` decides before a
signature (each audited), a key that cannot sign, a second operator who signs other terms,
pending steps that are void (forged, for another node, expired), and steps that expire while
an operator signs; then the `rollout` verb's flags and text output through the CLI's `main`.

Real sidecars (`SidecarThread`) attesting a real file report the release, a real redis-server
holds everything, and real ssh-keygen keys sign.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from redis.asyncio import Redis

from killswitch.cli.main import main
from killswitch.cli.rolloutcli import human, rollout_lines
from killswitch.core.proof.rollout import RolloutRequest
from killswitch.core.proof.sshsig import Operators, parse_allowed_signers
from killswitch.ops import control
from killswitch.ops import rollout as ops
from killswitch.ops.control import EXIT_OK, EXIT_PENDING, EXIT_REFUSED, EXIT_USAGE, Outcome
from killswitch.ops.signing import ssh_sign
from killswitch.sidecar.inprocess import SidecarSettings, SidecarThread
from killswitch.sim.operators import OperatorKeys
from killswitch.store.keys import NodeKeys
from killswitch.store.store import Store
from kstest import wait_until, wait_until_async

HOSTS = ["h1", "h2"]
NEW = "b" * 64


def ops_of(keys: OperatorKeys) -> Operators:
    return parse_allowed_signers(keys.file.read_text())


def start_hosts(redis_url: str, node: str, keys: OperatorKeys, d: Path) -> list[SidecarThread]:
    """h1 and h2, each attesting the same file: both report one release."""
    (d / "bin").write_bytes(b"smars v2")
    return [
        SidecarThread(
            SidecarSettings(
                node=node, host=h, redis_url=redis_url, flush_interval=0.05,
                operators=str(keys.file), attest=(str(d / "bin"),),
            )
        ).start()
        for h in HOSTS
    ]  # fmt: skip


async def release_of_all(store: Store) -> str:
    """The one release every roster host reports, once they all do."""

    async def one() -> str:
        rep = (await control.status(store)).report
        got = {rep["hosts"][h].get("release", "") for h in HOSTS}
        return got.pop() if len(got) == 1 and "" not in got else ""

    return str(await wait_until_async(one, 20, 0.05, "every host reports its release"))


@pytest.fixture
async def live(
    redis: Redis, redis_url: str, node: str, operator_keys: OperatorKeys, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    """The roster h1, h2 running one release (reported by real sidecars)."""
    store = Store(redis, node)
    await store.set_roster(HOSTS, "test")
    threads = start_hosts(redis_url, node, operator_keys, tmp_path)
    try:
        yield {"store": store, "release": await release_of_all(store)}
    finally:
        for t in threads:
            await asyncio.to_thread(t.stop)


async def step(store: Store, keys: OperatorKeys, who: str, name: str, **kw: Any) -> Outcome:
    return await ops.rollout(store, step=name, key=keys.key(who), operators=ops_of(keys), **kw)


async def begun(store: Store, keys: OperatorKeys) -> None:
    """Rollout 1 begun on canary h1 by alice and bob."""
    out = await step(store, keys, "alice", "begin", release=NEW, hosts=["h1"], reason="canary")
    assert out.code == EXIT_PENDING, out.message
    out = await step(store, keys, "bob", ops.SIGN)
    assert out.code == EXIT_OK, out.message


async def last_audit(redis: Redis, node: str) -> dict[str, str]:
    entries: Any = await redis.xrevrange(NodeKeys(node).audit, count=1)
    return dict(entries[0][1])


def expiring_signer(redis: Redis) -> Callable[[str, bytes], Awaitable[str]]:
    """Signs with ssh-keygen only once Redis server time is past the request's expiry: an
    operator whose hardware key waited for a touch longer than the request lives."""

    async def sign(key: str, message: bytes) -> str:
        expires = RolloutRequest.decode(message).expires_ms

        async def past() -> bool:
            sec, usec = await redis.time()
            return int(sec) * 1000 + int(usec) // 1000 > expires

        await wait_until_async(past, 10, 0.02, "server time past the expiry")
        return await ssh_sign(key, message)

    return sign


class TestRefusedBeforeSigning:
    """Steps that cannot be signed are refused (4) with the reason, and audited."""

    @pytest.mark.parametrize(
        ("name", "kw", "says"),
        [
            ("begin", {"release": "xyz", "hosts": ["h1"]}, "--release must be a release digest"),
            ("begin", {"release": NEW, "hosts": ["h9"]}, "not on the roster: h9"),
            ("promote", {}, "no rollout is in progress to promote"),
            ("abort", {}, "no rollout is in progress to abort"),
        ],
    )
    async def test_refusals_without_a_rollout(
        self,
        live: dict[str, Any],
        redis: Redis,
        node: str,
        operator_keys: OperatorKeys,
        name: str,
        kw: dict[str, Any],
        says: str,
    ) -> None:
        """A bad digest, an off-roster canary, promote or abort with nothing running: 4."""
        out = await step(live["store"], operator_keys, "alice", name, **kw)
        assert out.code == EXIT_REFUSED
        assert says in out.message and says in out.report["refused"]
        entry = await last_audit(redis, node)
        assert (entry["action"], entry["attempt"]) == ("refused", f"rollout_{name}")
        assert says in entry["refused"]

    async def test_begin_with_no_release_to_start_from(
        self, redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """No approved release and hosts that never reported one: begin is refused."""
        store = Store(redis, node)
        await store.set_roster(HOSTS, "test")
        out = await step(store, operator_keys, "alice", "begin", release=NEW, hosts=["h1"])
        assert out.code == EXIT_REFUSED
        assert out.report["refused"] == (
            "the node has no approved release and its hosts do not run one release"
        )

    async def test_begin_while_one_runs_and_promote_twice(
        self, live: dict[str, Any], operator_keys: OperatorKeys
    ) -> None:
        """A second begin while rollout 1 is a canary, and a second promote, are refused."""
        store: Store = live["store"]
        await begun(store, operator_keys)
        out = await step(store, operator_keys, "alice", "begin", release="c" * 64, hosts=["h2"])
        assert out.code == EXIT_REFUSED
        assert out.report["refused"] == "rollout 1 is canary: promote or abort it first"
        assert (await step(store, operator_keys, "alice", "promote")).code == EXIT_PENDING
        assert (await step(store, operator_keys, "bob", ops.SIGN)).code == EXIT_OK
        out = await step(store, operator_keys, "alice", "promote")
        assert out.code == EXIT_REFUSED and out.report["refused"] == "rollout 1 is already promoted"

    async def test_a_key_that_cannot_sign_is_a_usage_error(
        self, live: dict[str, Any], operator_keys: OperatorKeys, tmp_path: Path
    ) -> None:
        """A key path that does not exist: exit 2 'cannot sign', nothing pending."""
        store: Store = live["store"]
        out = await ops.rollout(
            store, step="begin", key=str(tmp_path / "no.key"), operators=ops_of(operator_keys),
            release=NEW, hosts=["h1"],
        )  # fmt: skip
        assert out.code == EXIT_USAGE and out.report["refused"] == "cannot sign"
        assert out.message.startswith("rollout: ssh-keygen could not sign with ")
        assert await store.redis.exists(NodeKeys(store.node).pending_rollout) == 0


class TestPendingSteps:
    """What the second operator signs must be the first's step, still valid, for this node."""

    async def test_other_terms_replace_the_pending_step(
        self, live: dict[str, Any], operator_keys: OperatorKeys
    ) -> None:
        """bob begins the same canary for another reason: alice's step is replaced by his."""
        store: Store = live["store"]
        kw: dict[str, Any] = {"release": NEW, "hosts": ["h1"]}
        assert (await step(store, operator_keys, "alice", "begin", reason="a", **kw)).code == 5
        out = await step(store, operator_keys, "bob", "begin", reason="b", **kw)
        assert out.code == EXIT_PENDING
        assert out.message.startswith(
            "(the pending begin by alice signs other terms; this call replaces it)\n"
        )
        assert out.report["rollout"]["pending"]["by"] == "bob"

    async def test_a_forged_pending_step_is_void(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """A pending step whose signature was altered in Redis cannot be co-signed: `--key`
        alone says why (2), and a full begin starts anew (5)."""
        store: Store = live["store"]
        kw: dict[str, Any] = {"release": NEW, "hosts": ["h1"]}
        assert (await step(store, operator_keys, "alice", "begin", **kw)).code == EXIT_PENDING
        key = NodeKeys(node).pending_rollout
        sig = str(await redis.hget(key, "sig"))
        await redis.hset(key, "sig", sig.replace(sig[60:64], "AAAA"))
        out = await step(store, operator_keys, "bob", ops.SIGN)
        assert out.code == EXIT_USAGE
        assert out.message.startswith("nothing to sign: the pending step by alice is void: ")
        out = await step(store, operator_keys, "bob", "begin", **kw)
        assert out.code == EXIT_PENDING and out.report["rollout"]["pending"]["by"] == "bob"

    async def test_a_step_copied_from_another_node_is_void(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """alice's signed step for another node, copied into this node's pending key, is
        void here: nothing to co-sign."""
        other = Store(redis, f"{node}-other")
        await other.set_roster(HOSTS, "test")
        await other.redis.hset(other.keys.rollout, "approved", live["release"])
        out = await step(other, operator_keys, "alice", "begin", release=NEW, hosts=["h1"])
        assert out.code == EXIT_PENDING, out.message
        copied: Any = await redis.hgetall(NodeKeys(other.node).pending_rollout)
        await redis.hset(NodeKeys(node).pending_rollout, mapping=copied)
        out = await step(live["store"], operator_keys, "bob", ops.SIGN)
        assert out.code == EXIT_USAGE
        assert out.message == "nothing to sign: the pending step by alice is for another node"

    async def test_a_pending_step_past_its_expiry_is_void_without_its_ttl(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """A pending step whose TTL was removed by hand still ends at its signed expiry."""
        store: Store = live["store"]
        out = await step(
            store, operator_keys, "alice", "begin", release=NEW, hosts=["h1"], expires_s=0.2
        )
        assert out.code == EXIT_PENDING
        key = NodeKeys(node).pending_rollout
        await redis.persist(key)
        expires = int(str(await redis.hget(key, "expires_ms")))

        async def past() -> bool:
            sec, usec = await redis.time()
            return int(sec) * 1000 + int(usec) // 1000 > expires

        await wait_until_async(past, 10, 0.02, "server time past the expiry")
        out = await step(store, operator_keys, "bob", ops.SIGN)
        assert out.code == EXIT_USAGE
        assert out.message == "nothing to sign: the pending step by alice expired"


class TestExpiresWhileSigning:
    """A step whose expiry passes while its operator signs is refused by the script, audited."""

    async def test_first_signature_too_late_is_not_recorded(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """alice's begin expires while she signs: 4, nothing pending, the refusal audited."""
        store: Store = live["store"]
        out = await ops.rollout(
            store, step="begin", key=operator_keys.key("alice"), operators=ops_of(operator_keys),
            release=NEW, hosts=["h1"], expires_s=0.05, sign=expiring_signer(redis),
        )  # fmt: skip
        assert out.code == EXIT_REFUSED
        assert out.message == "refused: the rollout changed while signing (expired)"
        assert await redis.exists(NodeKeys(node).pending_rollout) == 0
        entry = await last_audit(redis, node)
        assert (entry["attempt"], entry["refused"]) == ("rollout_begin", "expired")

    async def test_second_signature_too_late_voids_the_step(
        self, live: dict[str, Any], redis: Redis, node: str, operator_keys: OperatorKeys
    ) -> None:
        """bob co-signs alice's begin after it expired: 4 'void (it expired)', nothing begun."""
        store: Store = live["store"]
        out = await step(
            store, operator_keys, "alice", "begin", release=NEW, hosts=["h1"], expires_s=0.5
        )
        assert out.code == EXIT_PENDING
        out = await ops.rollout(
            store, step=ops.SIGN, key=operator_keys.key("bob"), operators=ops_of(operator_keys),
            sign=expiring_signer(redis),
        )  # fmt: skip
        assert out.code == EXIT_REFUSED
        assert out.message == "refused: the step is void (it expired); run it again"
        assert (await redis.hgetall(NodeKeys(node).rollout)).get("phase") is None
        entry = await last_audit(redis, node)
        assert (entry["attempt"], entry["refused"], entry["actor"]) == (
            "rollout_begin", "expired", "alice+bob",
        )  # fmt: skip


# --- the CLI: flags, show, and the text a human reads ------------------------------------


@pytest.fixture
def cli_live(
    redis_url: str, node: str, operator_keys: OperatorKeys, tmp_path: Path
) -> Iterator[list[str]]:
    """The roster h1, h2 running one release; yields the common flags of every call."""
    import redis as redis_sync

    r = redis_sync.Redis.from_url(redis_url, decode_responses=True)
    try:
        r.sadd(NodeKeys(node).roster, *HOSTS)
    finally:
        r.close()
    threads = start_hosts(redis_url, node, operator_keys, tmp_path)
    common = ["--node", node, "--redis", redis_url, "--operators", str(operator_keys.file)]
    try:
        yield common
    finally:
        for t in threads:
            t.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    cap = capsys.readouterr()
    return code, cap.out, cap.err


class TestRolloutCli:
    """`killswitch rollout` in process: flag errors (2), show, and each step's text."""

    @pytest.mark.parametrize(
        ("args", "says"),
        [
            (["--hosts", "h1"], "--hosts names the canary of a new rollout: give --release too"),
            (["--release", "XYZ", "--hosts", "h1"], "must be a release digest (64 lowercase"),
            (["--release", NEW], "a rollout names its canary hosts"),
            (["--promote"], "every rollout step is signed: give --key PATH"),
            (["--abort"], "every rollout step is signed: give --key PATH"),
        ],
    )
    def test_flag_errors_exit_2(
        self, capsys: pytest.CaptureFixture[str], node: str, args: list[str], says: str
    ) -> None:
        """Each inconsistent set of flags is a configuration error naming the fix."""
        code, _, err = run(capsys, "rollout", "--node", node, "--redis", "redis://127.0.0.1:1/0",
                           *args)  # fmt: skip
        assert code == EXIT_USAGE
        assert err.startswith("killswitch rollout: configuration error: ") and says in err

    def test_show_then_steps_in_text(
        self,
        cli_live: list[str],
        operator_keys: OperatorKeys,
        node: str,
        redis_url: str,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """Without --key: the rollout and releases; each step's text says what happened."""

        def release() -> str:
            code, out, _ = run(capsys, "status", "--json", *cli_live)
            hosts = json.loads(out)["hosts"] if code == 0 else {}
            got = {hosts.get(h, {}).get("release", "") for h in HOSTS}
            return got.pop() if len(got) == 1 and "" not in got else ""

        digest = str(wait_until(release, 20, 0.05, "both hosts report one release"))
        code, out, _ = run(capsys, "rollout", *cli_live)
        assert code == EXIT_OK
        assert out.splitlines() == [f"node {node}: no rollout", f"  release {digest[:12]}: h1,h2"]

        alice, bob = operator_keys.key("alice"), operator_keys.key("bob")
        code, out, _ = run(capsys, "rollout", *cli_live, "--key", alice, "--release", NEW,
                           "--hosts", "h1", "--reason", "canary")  # fmt: skip
        assert code == EXIT_PENDING
        assert out.startswith(f"PENDING: rollout begin of node {node} signed by alice")
        assert "PENDING ROLLOUT begin by alice until " in out

        code, out, _ = run(capsys, "rollout", *cli_live, "--key", bob)
        assert code == EXIT_OK
        lines = out.splitlines()
        assert (
            lines[0] == f"ROLLOUT 1 CANARY: {digest[:12]} -> {NEW[:12]} on h1 (begin by alice+bob)"
        )
        assert lines[-1].startswith("rollout 1 begun, signed by alice and bob: h1 may run")

        for who in (alice, bob):
            code, out, _ = run(capsys, "rollout", *cli_live, "--key", who, "--abort")
        assert code == EXIT_OK
        assert out.splitlines()[0] == (
            f"last rollout 1 aborted: {digest[:12]} -> {NEW[:12]} (begin by alice+bob; "
            "abort by alice+bob)"
        )
        assert "aborted, signed by alice and bob: every host must run" in out

        code, _, err = run(capsys, "rollout", *cli_live, "--key", bob)
        assert code == EXIT_USAGE
        assert err == "killswitch rollout: nothing to sign: no rollout step is pending\n"


class TestRolloutLines:
    """What `status` and `rollout` print of a rollout, from the report's `rollout` object."""

    BASE: ClassVar[dict[str, Any]] = {
        "seq": 3, "from": "a" * 64, "to": NEW, "hosts": ["h1"],
        "signed_by": {"begin": ["alice", "bob"]}, "approved": "", "pending": None,
    }  # fmt: skip

    @pytest.mark.parametrize(
        ("extra", "full", "lines"),
        [
            ({"phase": "canary", "verified": False, "refusal": "bad_signature"}, False,
             [f"ROLLOUT 3 CANARY: aaaaaaaaaaaa -> {NEW[:12]} on h1 (begin by alice+bob)  "
              "NOT HONOURED by the aggregator (bad_signature)"]),
            ({"phase": "promoted", "verified": False, "refusal": ""}, False,
             [f"ROLLOUT 3 PROMOTED: aaaaaaaaaaaa -> {NEW[:12]} on every host (begin by "
              "alice+bob)  NOT HONOURED by the aggregator (not verified)"]),
            ({"phase": "complete", "approved": NEW}, True,
             [f"last rollout 3 complete: aaaaaaaaaaaa -> {NEW[:12]} (begin by alice+bob)",
              f"approved release: {NEW[:12]}"]),
            ({"phase": "complete", "approved": NEW}, False, []),
            ({"phase": "none", "approved": NEW}, True,
             ["node smars: no rollout in progress", f"approved release: {NEW[:12]}"]),
            ({"phase": "none", "pending": {"step": "begin", "by": "alice",
                                           "expires_at": "2026-01-01T00:00:00.000+00:00"}},
             False,
             ["PENDING ROLLOUT begin by alice until 2026-01-01T00:00:00.000+00:00; a second, "
              "distinct operator completes it with `killswitch rollout --key THEIR-KEY`"]),
        ],
    )  # fmt: skip
    def test_table(self, extra: dict[str, Any], full: bool, lines: list[str]) -> None:
        """Each phase, verdict and pending step renders as the table says."""
        assert rollout_lines({"node": "smars", "rollout": {**self.BASE, **extra}}, full) == lines

    def test_no_rollout_is_silent_in_status(self) -> None:
        """A node that never had a rollout adds nothing to `status`, one line to `rollout`."""
        assert rollout_lines({"node": "smars", "rollout": None}) == []
        assert rollout_lines({"node": "smars", "rollout": None}, full=True) == [
            "node smars: no rollout"
        ]

    def test_a_refusal_leads_the_text(self) -> None:
        """A refused step prints its message first, then the rollout as it stands."""
        out = Outcome(EXIT_REFUSED, {"node": "smars", "refused": "x"}, "refused: x")
        assert human(out) == "refused: x\nnode smars: no rollout"
