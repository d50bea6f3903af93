"""The audit hash chain on a real redis-server: every change and refusal is chained in the
script that makes it, and `audit --verify` names the first entry altered, removed, inserted
or cut off."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from killswitch.core.proof import auditchain
from killswitch.core.proof.sshsig import parse_allowed_signers
from killswitch.ops import arming, control
from killswitch.ops import audit as ops_audit
from killswitch.sim.operators import OperatorKeys, signed_store_arm
from killswitch.store.store import Store
from killswitch.view.text import escape


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


@pytest.fixture
async def store(redis: Redis, node: str, operator_keys: OperatorKeys) -> AsyncIterator[Store]:
    s = Store(redis, node)
    await s.set_roster(["h1", "h2"], "test")
    await s.kill(actor="alice", reason="first", cause="operator", floor=0)
    await signed_store_arm(s, operator_keys, reason="second", roster=["h1", "h2"])
    await s.kill(actor="carol", reason="third", cause="operator", floor=0)
    yield s


async def _verify(store: Store) -> auditchain.Verdict:
    entries, head = await store.audit_chain()
    parsed = auditchain.parse_head(head)
    if parsed is None:
        return auditchain.Verdict(not entries, len(entries), "", -1, "no head")
    return auditchain.verify(entries, parsed)


async def _rewrite(redis: Redis, store: Store, change: Any) -> list[str]:
    """Rebuild the stream with `change(fields list)` applied (what a forger can do); the
    entries get IDs 1-0, 2-0, ... which are returned."""
    entries: Any = await redis.xrange(store.keys.audit)
    rows = change([f for _, f in entries])
    await redis.delete(store.keys.audit)
    return [str(await redis.xadd(store.keys.audit, f, id=f"{n}-0")) for n, f in enumerate(rows, 1)]


class TestChainInRedis:
    """Entries are appended by the scripts themselves and walk back to the first."""

    async def test_scripts_chain_every_change(self, store: Store) -> None:
        """Roster, kill, arm and kill each append one chained entry; the chain verifies."""
        entries, head = await store.audit_chain()
        assert [f["action"] for _, f in entries] == ["roster", "kill", "arm", "kill"]
        assert [f["seq"] for _, f in entries] == ["1", "2", "3", "4"]
        assert head["seq"] == "4" and head["hash"] == entries[-1][1]["hash"]
        assert (await _verify(store)).ok

    async def test_lua_hash_is_sha256_of_the_canonical_bytes(self, store: Store) -> None:
        """The hash Lua wrote is hashlib's sha256 over the documented canonical bytes."""
        entries, _ = await store.audit_chain()
        _, f = entries[1]
        own = [(k, v) for k, v in f.items() if k not in auditchain.CHAIN_FIELDS]
        data = auditchain.canonical([("seq", f["seq"]), ("prev", f["prev"]), *own])
        assert hashlib.sha256(data).hexdigest() == f["hash"]
        assert f["prev"] == entries[0][1]["hash"]

    async def test_refused_trip_is_audited(self, store: Store) -> None:
        """A trip fenced out (lease not held) is recorded as refused, in the same script."""
        res = await store.kill(
            actor="aggregator:x", reason="cap", cause="cap", floor=0, action="trip",
            only_if_armed=False, fence="not-the-holder",
        )  # fmt: skip
        assert res.refused == "fenced"
        entries, _ = await store.audit_chain()
        last = entries[-1][1]
        assert (last["action"], last["attempt"], last["refused"]) == ("refused", "trip", "fenced")
        assert (await _verify(store)).ok

    async def test_refused_arm_is_audited(self, store: Store, operator_keys: OperatorKeys) -> None:
        """`arm` while no roster host reports is refused and the refusal (why) is in the chain."""
        ops = parse_allowed_signers(operator_keys.file.read_text())
        out = await arming.arm(
            store, key=operator_keys.key("alice"), operators=ops, reason="just me", timeout=1
        )
        assert out.code == control.EXIT_REFUSED
        entries, _ = await store.audit_chain()
        last = entries[-1][1]
        assert last["action"] == "refused" and last["attempt"] == "arm"
        assert last["reason"] == "just me" and "hosts not ready" in last["refused"]
        assert (await _verify(store)).ok

    async def test_removed_entry_is_named(self, redis: Redis, store: Store) -> None:
        """XDEL of a middle entry: verify fails at the entry after the gap."""
        entries, _ = await store.audit_chain()
        await redis.xdel(store.keys.audit, entries[1][0])
        v = await _verify(store)
        assert not v.ok and v.bad_id == entries[2][0] and "removed" in v.problem

    async def test_appended_forgery_is_named(self, redis: Redis, store: Store) -> None:
        """An entry added by hand (even with chain-looking fields) is named as the bad one."""
        entries, _ = await store.audit_chain()
        fake = {"seq": "5", "prev": entries[-1][1]["hash"], "hash": "0" * 64,
                "action": "arm", "actor": "alice+bob", "reason": "looks real"}  # fmt: skip
        forged = await redis.xadd(store.keys.audit, fake)  # type: ignore[arg-type]
        v = await _verify(store)
        assert not v.ok and v.bad_id == forged

    async def test_inserted_entry_is_named(self, redis: Redis, store: Store) -> None:
        """An entry inserted between two real ones (stream rebuilt) is named."""

        def insert(es: list[Any]) -> list[Any]:
            return [es[0], {"action": "arm", "actor": "x"}, *es[1:]]

        ids = await _rewrite(redis, store, insert)
        v = await _verify(store)
        assert not v.ok and v.bad_id == ids[1] and "forged" in v.problem

    async def test_altered_reason_is_named(self, redis: Redis, store: Store) -> None:
        """Changing one entry's reason (stream rebuilt, same IDs) is named as altered."""

        def alter(es: list[Any]) -> list[Any]:
            es[2] = {**es[2], "reason": "something else"}
            return es

        ids = await _rewrite(redis, store, alter)
        v = await _verify(store)
        assert not v.ok and v.bad_id == ids[2] and "altered" in v.problem

    async def test_rewritten_entry_with_recomputed_hash_breaks_the_link(
        self, redis_url: str, redis: Redis, store: Store
    ) -> None:
        """A middle entry rewritten with its own hash recomputed is self-consistent: only the
        next entry's link names it, and `audit --verify` exits 4 naming that entry."""

        def forge(es: list[Any]) -> list[Any]:
            e = {**es[1], "actor": "mallory", "reason": "rewritten"}
            own = [(k, v) for k, v in e.items() if k not in auditchain.CHAIN_FIELDS]
            e["hash"] = auditchain.entry_hash(e["seq"], e["prev"], own)
            es[1] = e
            return es

        ids = await _rewrite(redis, store, forge)
        v = await _verify(store)
        assert not v.ok and v.bad_id == ids[2] and "link" in v.problem
        bad = cli("audit", "--verify", "--node", store.node, "--redis", redis_url)
        assert bad.returncode == 4 and ids[2] in bad.stdout, bad.stdout

    @pytest.mark.parametrize("cut", ["xdel_last", "xtrim", "delete_stream", "delete_head"])
    async def test_cut_tail_or_wiped_stream_fails(
        self, redis: Redis, store: Store, cut: str
    ) -> None:
        """A deleted tail, a trimmed or deleted stream, or a deleted head all fail verify."""
        entries, _ = await store.audit_chain()
        if cut == "xdel_last":
            await redis.xdel(store.keys.audit, entries[-1][0])
        elif cut == "xtrim":
            await redis.xtrim(store.keys.audit, maxlen=2, approximate=False)
        elif cut == "delete_stream":
            await redis.delete(store.keys.audit)
        else:
            await redis.delete(store.keys.audit_head)
        outcome = await ops_audit.verify(store)
        assert outcome.code == control.EXIT_REFUSED
        assert outcome.report["redis"]["ok"] is False

    async def test_kill_works_with_junk_in_head(self, redis: Redis, store: Store) -> None:
        """Junk in the chain head never stops a kill; verify then names the break."""
        await redis.hset(store.keys.audit_head, mapping={"seq": "1e29", "hash": "zz"})
        res = await store.kill(actor="sre", reason="still works", cause="operator", floor=0)
        assert res.changed
        assert (await ops_audit.verify(store)).code == control.EXIT_REFUSED


class TestCli:
    """`killswitch audit --verify` and the escaped human output, as a subprocess."""

    async def test_verify_exit_codes(self, redis_url: str, redis: Redis, store: Store) -> None:
        """Exit 0 on a whole chain, 4 with the bad entry's ID after an XDEL."""
        ok = cli("audit", "--verify", "--json", "--node", store.node, "--redis", redis_url)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["redis"] == {"ok": True, "entries": 4}
        entries, _ = await store.audit_chain()
        await redis.xdel(store.keys.audit, entries[1][0])
        bad = cli("audit", "--verify", "--node", store.node, "--redis", redis_url)
        assert bad.returncode == 4
        assert entries[2][0] in bad.stdout and "FAILED" in bad.stdout

    async def test_operator_text_is_escaped(self, redis_url: str, store: Store) -> None:
        """A reason with ANSI, newline and bidi override prints escaped on one line each."""
        nasty = "ok\x1b[2J\nfake 2099 arm alice\u202e"
        await store.kill(actor="sre\r", reason=nasty, cause="operator", floor=0)
        res = cli("audit", "--node", store.node, "--redis", redis_url)
        assert res.returncode == 0
        assert "\x1b" not in res.stdout and "\u202e" not in res.stdout and "\r" not in res.stdout
        assert len(res.stdout.splitlines()) == 5
        assert "\\x1b[2J\\x0afake" in res.stdout
        st_out = cli("status", "--node", store.node, "--redis", redis_url)
        assert "\x1b" not in st_out.stdout and "\\x1b[2J" in st_out.stdout
        js = cli("audit", "--json", "--node", store.node, "--redis", redis_url)
        assert json.loads(js.stdout)["entries"][-1]["reason"] == nasty  # stored as given

    async def test_redis_text_is_escaped_in_every_view(
        self, redis_url: str, redis: Redis, store: Store
    ) -> None:
        """A host's `release` and a scope's reason with escape sequences and a newline: no raw
        control character and no forged line in status, status --fleet or watch --once."""
        nasty = "\x1b[2J\x1b]0;pwn\x07\nFAKE node ok: ARMED"
        hk = store.keys.host("h1")
        await redis.hset(hk.report, mapping={"release": nasty, "ts_ms": "1", "attest": nasty})
        await store.scope(op="kill", kind="symbol", value="KCG", actor="op", reason=nasty)
        views = {
            "status": cli("status", "--node", store.node, "--redis", redis_url),
            "fleet": cli("status", "--fleet", "--redis", redis_url),
            "watch": cli("watch", "--once", "--node", store.node, "--redis", redis_url),
        }
        for name, res in views.items():
            out = res.stdout + res.stderr
            assert "\x1b" not in out and "\x07" not in out, name
            assert not any(line.startswith("FAKE") for line in out.splitlines()), (name, out)
        assert "\\x1b[2J" in views["status"].stdout  # shown, escaped


class TestEscape:
    """The display escape is one line, reversible in spirit, and leaves plain text alone."""

    @given(st.text())
    def test_never_a_control_character(self, text: str) -> None:
        """No control, format or separator character survives escaping."""
        out = escape(text)
        assert "\n" not in out and "\x1b" not in out and "\u2028" not in out
        assert all(ch.isprintable() or ch == " " for ch in out)

    @pytest.mark.parametrize("text", ["plain reason", "Zürich désk", "a,b c=d"])
    def test_printable_text_unchanged(self, text: str) -> None:
        """Ordinary text, accents included, prints as typed."""
        assert escape(text) == text
