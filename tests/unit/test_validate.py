"""The pure side of hardening: setting bounds, the default state directory, Redis URL checks,
password scrubbing and Redis error classification."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from killswitch.aggregator.settings import with_static_cap
from killswitch.core.rules.anomaly import MonitorConfig
from killswitch.runtime.config import ConfigError, Resolver, file_mode, pick_state_dir
from killswitch.runtime.validate import BOUNDS, bounded, bounded_int, seconds_ms
from killswitch.store.redisconn import check_url, classify, scrub


class TestBounds:
    @pytest.mark.parametrize(
        ("name", "value", "ok"),
        [
            ("stale-after", 1.0, True),
            ("stale-after", 10, True),
            ("stale-after", "10.01", False),
            ("stale-after", 3600, False),
            ("stale-after", 0.1, False),
            ("stale-after", "inf", False),
            ("stale-after", "nan", False),
            ("stale-after", "1e999999", False),
            ("tick", "1e306", False),
            ("window", "0", False),
            ("baseline-multiplier", "inf", False),
            ("haunted-ratio", 5, True),
            ("timeout", True, False),
        ],
    )
    def test_bounded_float(self, name: str, value: Any, ok: bool) -> None:
        """A float setting passes inside its range and is refused (naming the range) outside."""
        conv = bounded(name)
        if ok:
            assert conv(value) == float(value)
        else:
            with pytest.raises(ValueError, match=r"\.\."):
                conv(value)

    @pytest.mark.parametrize(
        ("name", "value", "ok"),
        [
            ("metrics-port", 1, True),
            ("metrics-port", "65535", True),
            ("metrics-port", 65536, False),
            ("metrics-port", 0, False),
            ("metrics-port", -1, False),
            ("metrics-port", 80.5, False),
            ("limit", "100000000000000000000", False),
            ("limit", "1e20", False),
            ("limit", 100_000, True),
            ("max-orders", 10**9, True),
            ("max-orders", 10**9 + 1, False),
        ],
    )
    def test_bounded_int(self, name: str, value: Any, ok: bool) -> None:
        """A whole-number setting passes inside its range and is refused outside or fractional."""
        conv = bounded_int(name)
        if ok:
            assert conv(value) == int(value)
        else:
            with pytest.raises(ValueError):
                conv(value)

    @given(st.floats(allow_nan=True, allow_infinity=True))
    def test_no_float_escapes_its_bound(self, x: float) -> None:
        """Whatever float arrives, the result is finite and inside the bound, or ValueError."""
        for name, b in BOUNDS.items():
            try:
                v = bounded(name)(x)
            except ValueError:
                continue
            assert math.isfinite(v) and b.lo <= v <= b.hi

    def test_seconds_ms_never_overflows(self) -> None:
        """Durations become whole ms; a huge one is refused instead of raising OverflowError."""
        assert seconds_ms("window")("2.5") == 2500
        with pytest.raises(ValueError):
            seconds_ms("window")("1e306")

    def test_resolver_line_names_setting_value_source_and_range(self) -> None:
        """The refusal names the setting, the value, where it came from and the range."""
        r = Resolver({}, env={"KILLSWITCH_STALE_AFTER": "3600"})
        with pytest.raises(ConfigError) as e:
            r.get("stale-after", 1.0, bounded("stale-after"))
        msg = str(e.value)
        assert all(w in msg for w in ("stale-after", "3600", "KILLSWITCH_STALE_AFTER", "0.2..10"))

    @pytest.mark.parametrize(("text", "mode"), [("660", 0o660), ("0o600", 0o600), ("0777", 0o777)])
    def test_file_mode(self, text: str, mode: int) -> None:
        """Socket modes are octal permission bits."""
        assert file_mode(text) == mode

    @pytest.mark.parametrize("text", ["999", "1777", "rw", "", "-1"])
    def test_bad_file_mode(self, text: str) -> None:
        """Anything but 0..777 octal is refused."""
        with pytest.raises(ValueError):
            file_mode(text)


class TestDefaultStateDir:
    def test_systemd_state_directory_wins(self, tmp_path: Path) -> None:
        """$STATE_DIRECTORY (systemd StateDirectory=) comes first."""
        env = {"STATE_DIRECTORY": str(tmp_path / "sd"), "XDG_STATE_HOME": str(tmp_path / "x")}
        assert pick_state_dir(env) == (str(tmp_path / "sd"), "")

    def test_xdg_then_home(self, tmp_path: Path) -> None:
        """Then $XDG_STATE_HOME/killswitch, then ~/.local/state/killswitch."""
        assert pick_state_dir({"XDG_STATE_HOME": str(tmp_path)})[0] == str(tmp_path / "killswitch")
        home = tmp_path / "home"
        home.mkdir()
        assert pick_state_dir({"HOME": str(home)})[0] == str(home / ".local/state/killswitch")

    def test_user_without_home_gets_a_working_dir_and_a_warning(self, tmp_path: Path) -> None:
        """No home and no writable system dir (the image's `nobody`): temp dir, loud warning."""
        blocker = tmp_path / "file"
        blocker.write_text("x")
        env = {"HOME": "/nonexistent"}
        path, warning = pick_state_dir(env, system_dir=str(blocker / "ks"))
        assert "killswitch-" in path and "reboot" in warning and "--state-dir" in warning


class TestRedisUrls:
    @pytest.mark.parametrize(
        "url",
        [
            "127.0.0.1:6379",
            "localhost",
            "redis+sentinel://h:26379/svc?x=1",
            "memcache://h/",
            "redis://",
            "redis+sentinel://h:26379/",
        ],
    )
    def test_bad_urls_are_refused(self, url: str) -> None:
        """A URL without scheme or host, a foreign scheme, or a Sentinel query is refused."""
        with pytest.raises(ValueError):
            check_url(url)

    def test_refusal_never_shows_the_password(self) -> None:
        """The error names the URL with the password masked."""
        with pytest.raises(ValueError) as e:
            check_url("redis+sentinel://bob:hunter2@h:26379/svc?x=1")
        assert "hunter2" not in str(e.value) and "bob:***@" in str(e.value)

    @pytest.mark.parametrize(
        ("text", "shown"),
        [
            ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
            ("redis://pw@h", "redis://***@h"),
            ("x rediss://:pw@h y redis://a:b@c", "x rediss://:***@h y redis://a:***@c"),
            ("redis://h:1/0", "redis://h:1/0"),
        ],
    )
    def test_scrub(self, text: str, shown: str) -> None:
        """Every URL's password is masked; the user and host stay."""
        assert scrub(text) == shown

    @pytest.mark.parametrize(
        ("exc", "kind"),
        [
            (RedisConnectionError("Error 111 connecting"), "unreachable"),
            (OSError("no route"), "unreachable"),
            (AuthenticationError("invalid username-password pair"), "refused credentials"),
            (ResponseError("WRONGPASS invalid username-password pair"), "refused credentials"),
            (ResponseError("NOPERM this user has no permissions"), "refused credentials"),
            (ResponseError("ERR value is out of range"), "bad request"),
        ],
    )
    def test_classify(self, exc: BaseException, kind: str) -> None:
        """Unreachable, refused credentials and bad request are told apart."""
        assert classify(exc).kind == kind


class TestStaticCapNeverShadowed:
    def test_shadow_all_keeps_the_cap_enforcing(self) -> None:
        """`--shadow all` (or naming max_orders) shadows the other rules, never the static cap."""
        for shadow in (True, frozenset({"max_orders", "baseline"})):
            cfg = with_static_cap(MonitorConfig(shadow=shadow), hosts=4)
            assert cfg.max_orders == 4 * 1000 * 10
            assert not cfg.is_shadow("max_orders") and cfg.is_shadow("baseline")

    def test_derived_cap_stays_within_the_max_orders_range(self) -> None:
        """A roster of 300 hosts over a one-hour window derives a cap the config accepts: the
        range of `--max-orders`, 10^9, not 300 x 1000 x 3600."""
        cfg = with_static_cap(MonitorConfig(window_ms=3_600_000), hosts=300)
        assert cfg.max_orders == 10**9
