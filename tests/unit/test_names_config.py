"""Name validation (`killswitch.core.node.names`) and settings resolution (`killswitch.runtime.config`): pure."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from killswitch.cli.configcheck import shown
from killswitch.core.node.names import InvalidName, check_name, check_roster
from killswitch.runtime.config import (
    DEFAULT_REDIS,
    ConfigError,
    ListenAddr,
    Resolver,
    host_name,
    load_config_file,
    node_name,
    parse_listen,
    positive_float,
    positive_int,
    str_list,
)


class TestNames:
    @pytest.mark.parametrize(
        "name",
        ["smars", "or-01", "a", "0", "9lives", "md.feed_2", "x" * 63, "a-", "a.", "a..b", "a_"],
    )
    def test_valid(self, name: str) -> None:
        """Lower-case ASCII names up to 63 characters are accepted unchanged."""
        assert check_name("host", name) == name

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("", id="empty"),
            pytest.param("SMARS", id="uppercase"),
            pytest.param("orA", id="one-uppercase"),
            pytest.param(".hidden", id="leading-dot"),
            pytest.param("-rf", id="leading-dash"),
            pytest.param("_x", id="leading-underscore"),
            pytest.param("x" * 64, id="64-chars"),
            pytest.param("or 01", id="space"),
            pytest.param(" or01", id="leading-space"),
            pytest.param("or01\n", id="trailing-newline"),
            pytest.param("smars{x}", id="hash-tag-brace"),
            pytest.param("a:b", id="colon"),
            pytest.param("a/b", id="slash"),
            pytest.param("a*", id="glob"),
            pytest.param("ßmars", id="unicode-letter"),
            pytest.param("or-\uff101", id="fullwidth-digit"),
            pytest.param("\uff53mars", id="fullwidth-letter"),
        ],
    )
    def test_invalid(self, name: str) -> None:
        """Anything outside [a-z0-9][a-z0-9._-]{0,62} is refused, naming the kind and value."""
        with pytest.raises(InvalidName) as exc:
            check_name("node", name)
        assert f"invalid node name {name!r}" in str(exc.value)

    @pytest.mark.parametrize("value", [None, 7, b"smars"])
    def test_non_string(self, value: Any) -> None:
        """A non-string is refused like a bad name rather than crashing the check."""
        with pytest.raises(InvalidName):
            check_name("host", value)

    @given(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,62}", fullmatch=True))
    def test_any_matching_name_is_valid(self, name: str) -> None:
        """Every name the documented pattern allows is accepted."""
        assert check_name("host", name) == name

    @given(st.text(max_size=70))
    def test_accepted_names_are_safe_in_keys(self, name: str) -> None:
        """Whatever is accepted is short ASCII with no key separators or hash-tag braces."""
        try:
            check_name("host", name)
        except InvalidName:
            return
        assert 1 <= len(name) <= 63
        assert name.isascii()
        assert not set(name) & set(" :{}*?[]\n\r\t/\\")
        assert name == name.lower()


class TestRoster:
    def test_sorted(self) -> None:
        """A valid roster comes back sorted."""
        assert check_roster(["or-03", "md-01", "or-01"]) == ("md-01", "or-01", "or-03")

    def test_duplicate(self) -> None:
        """A host listed twice is refused, naming it."""
        with pytest.raises(InvalidName, match="'or-02' appears twice"):
            check_roster(["or-01", "or-02", "or-02"])

    def test_empty(self) -> None:
        """An empty roster is refused: containment over no hosts proves nothing."""
        with pytest.raises(InvalidName, match="empty"):
            check_roster([])

    def test_bad_member(self) -> None:
        """One invalid host name fails the whole roster."""
        with pytest.raises(InvalidName, match="OR-02"):
            check_roster(["or-01", "OR-02"])


class TestParseListen:
    @pytest.mark.parametrize(
        ("value", "addr"),
        [
            ("unix:/x", ListenAddr("unix", path="/x")),
            ("unix:/run/ks/gate.sock", ListenAddr("unix", path="/run/ks/gate.sock")),
            ("unix:relative.sock", ListenAddr("unix", path="relative.sock")),
            ("tcp:127.0.0.1:7000", ListenAddr("tcp", host="127.0.0.1", port=7000)),
            ("tcp:localhost:0", ListenAddr("tcp", host="localhost", port=0)),
            ("tcp:0.0.0.0:65535", ListenAddr("tcp", host="0.0.0.0", port=65535)),
            ("tcp:[::1]:7000", ListenAddr("tcp", host="::1", port=7000)),
            ("tcp:[fe80::1]:9", ListenAddr("tcp", host="fe80::1", port=9)),
        ],
    )
    def test_valid(self, value: str, addr: ListenAddr) -> None:
        """unix:PATH and tcp:HOST:PORT (IPv6 in brackets) parse into a ListenAddr."""
        assert parse_listen(value) == addr

    @pytest.mark.parametrize(
        ("addr", "text"),
        [
            (ListenAddr("unix", path="/run/g.sock"), "unix:/run/g.sock"),
            (ListenAddr("tcp", host="127.0.0.1", port=7000), "tcp:127.0.0.1:7000"),
        ],
    )
    def test_str_round_trips(self, addr: ListenAddr, text: str) -> None:
        """A ListenAddr prints as the form it was parsed from."""
        assert str(addr) == text
        assert parse_listen(str(addr)) == addr

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("", id="empty"),
            pytest.param("unix:", id="unix-no-path"),
            pytest.param("/run/gate.sock", id="no-scheme"),
            pytest.param("udp:127.0.0.1:7000", id="udp"),
            pytest.param("TCP:127.0.0.1:7000", id="uppercase-scheme"),
            pytest.param("tcp:127.0.0.1", id="no-port"),
            pytest.param("tcp:127.0.0.1:", id="empty-port"),
            pytest.param("tcp::7000", id="empty-host"),
            pytest.param("tcp:[]:7000", id="empty-brackets"),
            pytest.param("tcp:127.0.0.1:65536", id="port-too-big"),
            pytest.param("tcp:127.0.0.1:-1", id="port-negative"),
            pytest.param("tcp:127.0.0.1:http", id="port-name"),
            pytest.param("tcp:127.0.0.1:70 00", id="port-space"),
            pytest.param("tcp:127.0.0.1:²", id="port-superscript-digit"),
        ],
    )
    def test_invalid(self, value: str) -> None:
        """A malformed address is a ConfigError naming the listen setting, never another error."""
        with pytest.raises(ConfigError, match=r"^listen: "):
            parse_listen(value)


class TestResolver:
    CONFIG: ClassVar[dict[str, Any]] = {
        "stale_after": 3.0,
        "node": "top-node",
        "sidecar": {"stale_after": 2.0, "host": "cfg-host"},
    }

    @pytest.mark.parametrize(
        ("flags", "env", "config", "expected"),
        [
            pytest.param({"stale_after": 0.25}, {"KILLSWITCH_STALE_AFTER": "0.5"}, CONFIG, 0.25, id="flag"),
            pytest.param({"stale_after": None}, {"KILLSWITCH_STALE_AFTER": "0.5"}, CONFIG, 0.5, id="env"),
            pytest.param({}, {}, CONFIG, 2.0, id="section"),
            pytest.param({}, {}, {"stale_after": 3.0, "sidecar": {}}, 3.0, id="top-level"),
            pytest.param({}, {}, {}, 1.0, id="default"),
            pytest.param({"stale_after": ""}, {"KILLSWITCH_STALE_AFTER": ""}, {}, 1.0, id="empty-is-unset"),
            pytest.param({}, {"KILLSWITCH_STALE": "9"}, {"aggregator": {"stale_after": 7}}, 1.0, id="other-keys"),
        ],
    )  # fmt: skip
    def test_precedence(
        self, flags: dict[str, Any], env: dict[str, str], config: dict[str, Any], expected: float
    ) -> None:
        """flag > KILLSWITCH_* env > [command] table > top level > default."""
        r = Resolver(flags, env=env, config=config, section="sidecar")
        assert r.get("stale-after", 1.0, positive_float) == expected

    def test_no_section(self) -> None:
        """Without a command section only the top level of the config file is read."""
        r = Resolver({}, env={}, config=self.CONFIG)
        assert r.get("stale-after", 1.0, float) == 3.0
        assert r.get("host", "none", str) == "none"

    def test_section_not_a_table(self) -> None:
        """A command key that is not a table is ignored instead of crashing the lookup."""
        r = Resolver({}, env={}, config={"sidecar": "oops", "host": "top"}, section="sidecar")
        assert r.get("host", "x", str) == "top"

    def test_redis_url_default(self) -> None:
        """The Redis URL falls back to the documented default."""
        r = Resolver({"redis_url": None}, env={}, config={})
        assert r.get("redis-url", DEFAULT_REDIS, str) == "redis://127.0.0.1:6379/0"
        env = {"KILLSWITCH_REDIS_URL": "redis://10.0.0.5:6380/2"}
        assert (
            Resolver({}, env=env).get("redis-url", DEFAULT_REDIS, str)
            == env["KILLSWITCH_REDIS_URL"]
        )

    def test_require_missing_names_flag_and_env(self) -> None:
        """A missing required setting says which flag and which variable would supply it."""
        r = Resolver({"host": None}, env={}, config={}, section="sidecar")
        with pytest.raises(ConfigError) as exc:
            r.require("host", host_name)
        msg = str(exc.value)
        assert msg.startswith("host: required")
        assert "--host" in msg
        assert "KILLSWITCH_HOST" in msg

    def test_require_hint_and_dashed_name(self) -> None:
        """Dashes in a name become underscores in its environment variable; the hint is appended."""
        r = Resolver({}, env={})
        with pytest.raises(ConfigError) as exc:
            r.require("max-orders", positive_int, hint=" (e.g. --max-orders 5000)")
        assert "--max-orders" in str(exc.value)
        assert "KILLSWITCH_MAX_ORDERS" in str(exc.value)
        assert str(exc.value).endswith("(e.g. --max-orders 5000)")

    def test_require_found(self) -> None:
        """A required setting that is present is converted and returned."""
        r = Resolver({}, env={"KILLSWITCH_NODE": "smars"})
        assert r.require("node", node_name) == "smars"

    @pytest.mark.parametrize(
        ("flags", "env", "config", "where"),
        [
            ({"stale_after": "soon"}, {}, {}, "--stale-after"),
            ({}, {"KILLSWITCH_STALE_AFTER": "-1"}, {}, "KILLSWITCH_STALE_AFTER"),
            ({}, {}, {"sidecar": {"stale_after": 0}}, "config [stale_after]"),
            ({}, {}, {"stale_after": "nan"}, "config [stale_after]"),
        ],
    )
    def test_conversion_error_names_field_and_source(
        self, flags: dict[str, Any], env: dict[str, str], config: dict[str, Any], where: str
    ) -> None:
        """A bad value is a ConfigError naming the setting, the value and where it came from."""
        r = Resolver(flags, env=env, config=config, section="sidecar")
        with pytest.raises(ConfigError) as exc:
            r.get("stale-after", 1.0, positive_float)
        msg = str(exc.value)
        assert msg.startswith("stale-after: bad value ")
        assert where in msg

    def test_bad_node_name_from_env(self) -> None:
        """An invalid node name from the environment is refused before it reaches Redis."""
        r = Resolver({}, env={"KILLSWITCH_NODE": "SMARS"})
        with pytest.raises(ConfigError, match="node: bad value 'SMARS' from KILLSWITCH_NODE"):
            r.require("node", node_name)

    def test_flag_shadows_bad_env(self) -> None:
        """A good flag wins before a bad lower-precedence value is ever converted."""
        r = Resolver({"node": "smars"}, env={"KILLSWITCH_NODE": "BAD NAME"})
        assert r.require("node", node_name) == "smars"


class TestConverters:
    @pytest.mark.parametrize(
        ("value", "expected"), [("0.1", 0.1), (2, 2.0), ("1e-3", 0.001), (5.5, 5.5)]
    )
    def test_positive_float_ok(self, value: Any, expected: float) -> None:
        """Positive numbers and numeric strings convert to float."""
        assert positive_float(value) == expected

    @pytest.mark.parametrize("value", ["0", -1, "nan", "-inf", "x", None])
    def test_positive_float_bad(self, value: Any) -> None:
        """Zero, negatives, NaN and non-numbers are refused with ValueError or TypeError."""
        with pytest.raises((ValueError, TypeError)):
            positive_float(value)

    @pytest.mark.parametrize(("value", "expected"), [("5000", 5000), (3, 3), (2.0, 2)])
    def test_positive_int_ok(self, value: Any, expected: int) -> None:
        """Whole positive numbers convert to int."""
        assert positive_int(value) == expected

    @pytest.mark.parametrize("value", ["0", -4, 2.5, "2.5", "ten"])
    def test_positive_int_bad(self, value: Any) -> None:
        """Zero, negatives and fractions are refused."""
        with pytest.raises(ValueError):
            positive_int(value)

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("or-01,or-02", ["or-01", "or-02"]),
            (" or-01 , ,or-02 ,", ["or-01", "or-02"]),
            (["or-01", "or-02"], ["or-01", "or-02"]),
            ("", []),
        ],
    )
    def test_str_list(self, value: Any, expected: list[str]) -> None:
        """Comma lists (flag/env) and TOML arrays both become a list of trimmed strings."""
        assert str_list(value) == expected


class TestLoadConfigFile:
    def test_none_is_empty(self) -> None:
        """No config path means an empty config."""
        assert load_config_file(None) == {}
        assert load_config_file("") == {}

    def test_valid(self, tmp_path: Path) -> None:
        """A TOML file loads into a dict, tables included."""
        p = tmp_path / "ks.toml"
        p.write_text('node = "smars"\n[sidecar]\nstale_after = 0.5\nlisten = ["unix:/x"]\n')
        assert load_config_file(str(p)) == {
            "node": "smars",
            "sidecar": {"stale_after": 0.5, "listen": ["unix:/x"]},
        }

    def test_missing_file(self, tmp_path: Path) -> None:
        """A config path that does not exist is a ConfigError naming it."""
        p = tmp_path / "nope.toml"
        with pytest.raises(ConfigError, match="does not exist"):
            load_config_file(str(p))

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(b"node = smars\n", id="unquoted-string"),
            pytest.param(b"[sidecar\nhost = 'a'\n", id="unclosed-table"),
            pytest.param(b"node = 'a'\nnode = 'b'\n", id="duplicate-key"),
            pytest.param(b"\x00\x01\x02", id="binary"),
        ],
    )
    def test_bad_toml(self, tmp_path: Path, content: bytes) -> None:
        """A file that is not valid TOML is a ConfigError naming the file."""
        p = tmp_path / "bad.toml"
        p.write_bytes(content)
        with pytest.raises(ConfigError, match="is not valid TOML") as exc:
            load_config_file(str(p))
        assert str(p) in str(exc.value)

    def test_invalid_utf8_is_config_error(self, tmp_path: Path) -> None:
        """A TOML file with invalid UTF-8 is a ConfigError (exit 2), not a UnicodeDecodeError."""
        p = tmp_path / "latin1.toml"
        p.write_bytes('reason = "Zürich"\n'.encode("latin-1"))
        with pytest.raises(ConfigError) as exc:
            load_config_file(str(p))
        assert str(p) in str(exc.value)

    def test_directory_is_config_error(self, tmp_path: Path) -> None:
        """A directory given as the config file is a ConfigError, not an IsADirectoryError."""
        with pytest.raises(ConfigError) as exc:
            load_config_file(str(tmp_path))
        assert str(tmp_path) in str(exc.value)


class TestFixSetting:
    ROUTE = "tcp:127.0.0.1:9878=tcp:10.0.0.5:9878"

    @pytest.mark.parametrize(
        ("flags", "env", "config"),
        [
            pytest.param({"fix": [ROUTE]}, {}, {}, id="flag"),
            pytest.param({}, {"KILLSWITCH_FIX": ROUTE}, {}, id="env"),
            pytest.param({}, {}, {"sidecar": {"fix": [ROUTE]}}, id="file"),
        ],
    )  # fmt: skip
    def test_each_source_gives_listen_upstream_pairs(
        self, flags: dict[str, Any], env: dict[str, str], config: dict[str, Any]
    ) -> None:
        """`fix` from a flag, the environment or the file becomes (listen, upstream) pairs."""
        routes = Resolver(flags, env=env, config=config, section="sidecar").get("fix")
        assert routes == ((parse_listen("tcp:127.0.0.1:9878"), parse_listen("tcp:10.0.0.5:9878")),)
        assert shown(routes) == f'["{self.ROUTE}"]'

    def test_a_value_without_upstream_is_refused(self) -> None:
        """A `fix` value that is one address only is refused naming the setting."""
        r = Resolver({}, env={"KILLSWITCH_FIX": "tcp:127.0.0.1:9878"}, section="sidecar")
        with pytest.raises(ConfigError, match=r"fix: .* is not LISTEN=UPSTREAM"):
            r.get("fix")
