"""A Redis ACL that lacks a permission a process needs, on a real redis-server: the process
fails closed as before, and now names what Redis refused and the ACL rule to add (sidecar:
ACL_DENIED, `status` `hosts[H].acl`, /healthz, a metric; aggregator: ACL_DENIED, a one-line
exit; CLI: one line, exit 1). With the rule added, the same sidecars arm."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.store import acl
from kstest import Fleet, wait_until

HOSTS = ["or-01", "or-02"]
ADMIN = "ks-test-admin"  # the test's own user, to change the ACL while processes run


def url(server: EmbeddedRedis, user: str) -> str:
    return f"redis://{user}:pw-{user}@127.0.0.1:{server.port}/0"


def admin(server: EmbeddedRedis) -> redis_sync.Redis:
    return redis_sync.Redis.from_url(url(server, ADMIN), decode_responses=True)


def acl_server(node: str, tmp_path: Path, edit: Callable[[str], str]) -> EmbeddedRedis:
    """A redis-server of its own on the node's generated ACL, each line passed through
    `edit` (an older or narrower ACL), plus an admin user for the test."""
    names = acl.users(node, HOSTS)
    lines = [edit(line) for line in acl.acl_lines(node, HOSTS, {u: f"pw-{u}" for u in names})]
    lines.append(f"user {ADMIN} on >pw-{ADMIN} ~* &* +@all")
    path = tmp_path / "users.acl"
    path.write_text("\n".join(lines) + "\n")
    server = EmbeddedRedis(extra_args=["--aclfile", str(path)], functions=False)
    server.start()
    return server


def without(user: str, rule: str) -> Callable[[str], str]:
    """An ACL line editor that takes `rule` out of `user`'s line (an older file)."""

    def edit(line: str) -> str:
        if not line.startswith(f"user {user} "):
            return line
        assert f" {rule} " in line
        return line.replace(f" {rule} ", " ", 1)

    return edit


@dataclass
class AclFleet(Fleet):
    """A fleet whose every sidecar connects with its own ACL user."""

    server: EmbeddedRedis | None = None

    def sidecar_args(self, host: str) -> list[str]:
        assert self.server is not None
        return [*super().sidecar_args(host), "--redis",
                url(self.server, acl.sidecar_user(self.node, host))]  # fmt: skip


def metric(port: int, name: str, **labels: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def healthz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as e:
        return str(e.read().decode())


@pytest.fixture
def old_acl(node: str, tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """The generated ACL as it was before sidecars checked their library's code: the
    sidecar users lack `+function|list`."""
    edits = [without(acl.sidecar_user(node, h), "+function|list") for h in HOSTS]

    def edit(line: str) -> str:
        for e in edits:
            line = e(line)
        return line

    server = acl_server(node, tmp_path, edit)
    try:
        yield server
    finally:
        server.cleanup()


class TestSidecarDenied:
    """A sidecar whose Redis user lacks a command it needs blocks, and says which and why."""

    def test_blocks_names_the_rule_then_arms_once_added(
        self, old_acl: EmbeddedRedis, node: str
    ) -> None:
        """Without `+function|list` every order blocks, and the log (ACL_DENIED), `status`
        (hosts[H].acl, exit 3), /healthz and the metrics name the command and the rule; once
        an admin adds the rule, the same sidecars arm and allow."""
        port = free_port()
        f = AclFleet(url(old_acl, acl.OPERATOR_USER), node, HOSTS, server=old_acl,
                     metrics_ports={"or-01": port})  # fmt: skip
        try:
            f.start()
            f.start_aggregator("--tick", "0.05", "--redis", url(old_acl, acl.aggregator_user(node)))
            user = acl.sidecar_user(node, "or-01")
            [denied, *_] = f.sidecars["or-01"].logged("ACL_DENIED")
            assert denied["permission"] == "function|list"
            assert denied["rule"] == "+function|list" and denied["user"] == user
            assert f"pw-{user}" not in f.sidecars["or-01"].log_path.read_text()
            assert not f.sidecars["or-01"].events("SYNC_FAILED")  # the cause, not a generic one
            for h in HOSTS:
                assert f.order(h, "d1").startswith("BLOCK d1")

            def status_names_it() -> bool:
                return "acl" in f.cli_json("status")[1]["hosts"].get("or-01", {})

            wait_until(status_names_it, 20, 0.05, "status names the refused permission")
            code, rep = f.cli_json("status")
            assert code == 3
            for h in HOSTS:
                assert "`+function|list`" in rep["hosts"][h]["acl"], rep["hosts"][h]
                assert acl.sidecar_user(node, h) in rep["hosts"][h]["acl"]
            text = f.cli("status")
            assert "`+function|list`" in text.stdout, text.stdout
            assert "+function|list" in healthz(port)
            labels = {"node": node, "host": "or-01", "permission": "function|list"}
            assert (metric(port, "killswitch_acl_denials_total", **labels) or 0) >= 1
            gauge = {"node": node, "host": "or-01"}
            assert metric(port, "killswitch_acl_denied", **gauge) == 1.0
            with admin(old_acl) as a:
                for h in HOSTS:
                    a.acl_setuser(acl.sidecar_user(node, h), enabled=True,
                                  commands=["+function|list"])  # fmt: skip
            f.wait_ready(30)
            assert all("acl" not in s for s in f.cli_json("status")[1]["hosts"].values())
            armed = f.arm()
            for h in HOSTS:
                assert f.order(h, "a1") == f"ALLOW a1 {armed['epoch']}"
            assert f.sidecars["or-01"].logged("SYNC_RECOVERED")
            assert "+function|list" not in healthz(port)
            assert metric(port, "killswitch_acl_denied", **gauge) == 0.0
        finally:
            f.stop()
            old_acl.cleanup()


class TestAggregatorDenied:
    """An aggregator whose Redis user lacks a command it needs names it."""

    def test_at_start_one_line_and_exit_1(self, node: str, tmp_path: Path) -> None:
        """Without `+evalsha` the aggregator cannot start: ACL_DENIED names `evalsha`, and it
        ends with one line naming the rule (exit 1), no traceback, no password."""
        user = acl.aggregator_user(node)
        server = acl_server(node, tmp_path, lambda line: line + " -evalsha"
                            if line.startswith(f"user {user} ") else line)  # fmt: skip
        f = Fleet(url(server, acl.OPERATOR_USER), node, HOSTS)
        try:
            agg = f.start_aggregator("--redis", url(server, user))
            assert agg.popen is not None
            assert agg.popen.wait(60) == 1
            out = agg.log_path.read_text()
            [denied] = agg.events("ACL_DENIED")
            assert denied["permission"] == "evalsha" and denied["rule"] == "+evalsha"
            last = out.strip().splitlines()[-1]
            assert last.startswith("killswitch aggregator: cannot start:")
            assert "'evalsha'" in last and "`+evalsha`" in last and user in last
            assert "Traceback" not in out and f"pw-{user}" not in out
        finally:
            f.stop()
            server.cleanup()

    def test_while_running_ticks_name_it(self, node: str, tmp_path: Path) -> None:
        """A rule taken away from a running aggregator's user: ACL_DENIED names it (once),
        the process keeps running, and its ticks recover once the rule is back."""
        user = acl.aggregator_user(node)
        server = acl_server(node, tmp_path, lambda line: line)
        f = Fleet(url(server, acl.OPERATOR_USER), node, HOSTS)
        try:
            agg = f.start_aggregator("--tick", "0.05", "--redis", url(server, user))
            assert agg.logged("AGGREGATOR_STARTED", 60)
            with admin(server) as a:
                a.execute_command("ACL", "SETUSER", user, "-evalsha")
                [denied] = agg.logged("ACL_DENIED")
                assert denied["permission"] == "evalsha" and "`+evalsha`" in denied["reason"]
                a.execute_command("ACL", "SETUSER", user, "+evalsha")
            assert agg.logged("TICK_RECOVERED")
            assert agg.popen is not None and agg.popen.poll() is None
            assert len(agg.events("ACL_DENIED")) == 1
        finally:
            f.stop()
            server.cleanup()


class TestCliDenied:
    """An operator command whose Redis user lacks a command names it in one line."""

    @pytest.mark.parametrize(
        ("verb", "rule"),
        [(("status",), "evalsha"), (("audit", "--limit", "5"), "xrevrange"),
         (("status", "--fleet"), "sscan")],
    )  # fmt: skip
    def test_one_line_exit_1(
        self, node: str, tmp_path: Path, verb: tuple[str, ...], rule: str
    ) -> None:
        """`status` (the lean transport), `audit` (redis-py) and `status --fleet` with a user
        lacking a command they send: exit 1, one line naming the command and the rule, no
        traceback."""
        server = acl_server(node, tmp_path, lambda line: line + f" -{rule}"
                            if line.startswith(f"user {acl.OPERATOR_USER} ") else line)  # fmt: skip
        f = Fleet(url(server, acl.OPERATOR_USER), node, HOSTS)
        try:
            res = f.cli(*verb)
            assert res.returncode == 1, (res.stdout, res.stderr)
            lines = res.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
            assert f"'{rule}'" in lines[0] and f"`+{rule}`" in lines[0], lines[0]
            assert acl.OPERATOR_USER in lines[0] and "pw-" not in res.stderr + res.stdout
            res = f.cli(*verb, "--json")  # the same line; nothing half-written on stdout
            assert res.returncode == 1 and res.stdout == "", res.stdout
            assert f"`+{rule}`" in res.stderr and "Traceback" not in res.stderr
        finally:
            server.cleanup()


class TestNoticesDenied:
    """A sidecar user that may not subscribe to the node's event channel: kills still reach
    the host by its round trip, and the missing channel rule is named, not swallowed."""

    def test_refused_subscription_is_named_and_kills_still_apply(
        self, node: str, tmp_path: Path
    ) -> None:
        """Without the events-channel selector the sidecar logs NOTICES_UNAVAILABLE naming the
        channel and the rule (once, not every retry), arms, and still blocks after a kill;
        with the rule added back, NOTICES_RESTORED."""
        selector = f" (&ks:{{{node}}}:events &ks:{{{node}}}:confirms +subscribe +unsubscribe)"
        users = [acl.sidecar_user(node, h) for h in HOSTS]

        def edit(line: str) -> str:
            if line.split()[1] in users:
                assert selector in line
                return line.replace(selector, "", 1)
            return line

        server = acl_server(node, tmp_path, edit)
        f = AclFleet(url(server, acl.OPERATOR_USER), node, HOSTS, server=server)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05", "--redis", url(server, acl.aggregator_user(node)))
            f.wait_ready(60)
            sc = f.sidecars["or-01"]
            [event, *more] = wait_until(lambda: sc.events("NOTICES_UNAVAILABLE"), 30, 0.05,
                                 "the refused subscription named")  # fmt: skip
            assert event["permission"] == "channel" and event["level"] == "error", [event, *more]
            assert f"ks:{{{node}}}:events" in event["rule"]
            f.arm()
            f.wait_all("PONG ARMED", 30)
            assert len(sc.events("NOTICES_UNAVAILABLE")) == 1  # retried, not repeated
            code, rep = f.cli_json("kill", "--reason", "notices refused")
            assert code == 0 and rep["missing"] == [], rep  # confirmed by every round trip
            f.wait_all("PONG KILLED", 30)
            admin(server).execute_command("ACL", "SETUSER", users[0], selector.strip())
            wait_until(lambda: sc.events("NOTICES_RESTORED"), 30, 0.05, "notices restored")
        finally:
            f.stop()
            server.cleanup()
