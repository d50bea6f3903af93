"""Reading a Redis ACL refusal (NOPERM) out of an error: the permission, the rule, the line."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    NoPermissionError,
    RedisClusterException,
    RedisClusterUnreachableError,
    ResponseError,
)

from killswitch.store.noperm import Denial, denial, redis_user


class TestDenial:
    @pytest.mark.parametrize(
        ("text", "want"),
        [
            ("this user has no permissions to run the 'function|list' command",
             Denial("command", "function|list")),
            ("NOPERM this user has no permissions to run the 'evalsha' command",
             Denial("command", "evalsha")),
            ("User ks-sidecar-n-h has no permissions to run the 'CLUSTER|SLOTS' command",
             Denial("command", "cluster|slots")),
            ("this user has no permissions to access one of the keys used as arguments",
             Denial("key")),
            ("No permissions to access a key", Denial("key")),
            ("this user has no permissions to access one of the channels used as arguments",
             Denial("channel")),
            ("The user executing the script can't run this command or subcommand script: "
             "killswitch_x_flush, on @user_function:12.", Denial("script")),
            ("this user has no permissions to run the 'a b\u2028c' command",
             Denial("command", "unknown")),
        ],
    )  # fmt: skip
    def test_texts(self, text: str, want: Denial) -> None:
        """Each wording Redis 7.0 and later use is read as the permission it names."""
        assert denial(NoPermissionError(text)) == want

    @pytest.mark.parametrize(
        "text",
        ["WRONGPASS invalid username-password pair", "Function not found", "Connection refused",
         "ERR unknown command 'x'"],
    )  # fmt: skip
    def test_other_errors_are_not_denials(self, text: str) -> None:
        """Errors that are not an ACL refusal are left to the caller's other handling."""
        assert denial(ResponseError(text)) is None

    def test_found_in_a_cluster_clients_chain(self) -> None:
        """redis-py's Cluster client reports a refused CLUSTER SLOTS as "Cluster mode is not
        enabled", the NOPERM as the context of its cause: it is found there."""
        try:
            try:
                try:
                    raise NoPermissionError(
                        "this user has no permissions to run the 'cluster|slots' command"
                    )
                except ResponseError:
                    raise RedisClusterException("Cluster mode is not enabled on this node")  # noqa: B904
            except RedisClusterException as inner:
                raise RedisClusterUnreachableError("cannot be connected") from inner
        except RedisClusterUnreachableError as e:
            assert denial(e) == Denial("command", "cluster|slots")

    def test_a_cyclic_chain_ends(self) -> None:
        """An exception chain that loops back on itself is walked once, not forever."""
        a, b = RuntimeError("a"), RuntimeError("b")
        a.__context__, b.__context__ = b, a
        assert denial(a) is None


class TestWords:
    def test_command_line_names_rule_and_user(self) -> None:
        """The line names the user, the refused command and the rule to add, on one line."""
        line = Denial("command", "function|list").line("ks-sidecar-n-h")
        assert "ks-sidecar-n-h" in line and "'function|list'" in line
        assert "`+function|list`" in line and "\n" not in line

    @pytest.mark.parametrize("kind", ["key", "channel", "script"])
    def test_other_kinds_point_at_the_generator(self, kind: str) -> None:
        """A refused key, channel or script call points at the generated rules; its permission
        (a metric label) is the kind, a bounded word."""
        d = Denial(kind)
        assert d.permission == kind
        assert "python -m killswitch.store.acl" in d.line("u")

    @pytest.mark.parametrize(
        ("url", "user"),
        [("redis://ks-operator:secret@h:6379/0", "ks-operator"),
         ("redis+cluster://ks-sidecar-n-h:pw@a:1,b:2/", "ks-sidecar-n-h"),
         ("redis+sentinel://u%40x:pw@s1:26379/svc/0", "u@x"),
         ("redis://:pw@h/0", "default"), ("redis://h", "default"), ("", "default")],
    )  # fmt: skip
    def test_redis_user(self, url: str, user: str) -> None:
        """The user a URL logs in as, never its password; `default` when it names none."""
        assert redis_user(url) == user
