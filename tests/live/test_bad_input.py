"""Every verb, fed bad values the way a careless operator or a broken script would: each is
refused with exactly one line on stderr, the documented exit code, no traceback and no
password, by the real `killswitch` process."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from killswitch.sim.embedded import EmbeddedRedis, free_port
from killswitch.sim.operators import OperatorKeys
from kstest import fleet

SECRET = "s3cret-pw"
USER = "ks-hardening"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "killswitch", *args],
        capture_output=True, text=True, env=base, timeout=timeout, check=False,
    )  # fmt: skip


def assert_one_line_refusal(res: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    err = res.stderr
    assert res.returncode == code, (res.returncode, err, res.stdout)
    assert "Traceback" not in err + res.stdout, err
    assert SECRET not in err + res.stdout, err
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


@pytest.fixture(scope="module")
def closed_url() -> str:
    """A Redis URL with a password, on a port nothing listens on."""
    return f"redis://alice:{SECRET}@127.0.0.1:{free_port()}/0"


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A TCP port another socket holds for the whole module."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


def sidecar(tmp: Path, url: str, *extra: str) -> list[str]:
    return ["sidecar", "--node", "smars", "--host", "or-01", "--redis", url,
            "--listen", f"unix:{tmp}/g.sock", "--state-dir", str(tmp / "state"), *extra]  # fmt: skip


def aggregator(url: str, *extra: str) -> list[str]:
    return ["aggregator", "--node", "smars", "--hosts", "or-01", "--redis", url, *extra]


BAD_SIDECAR = [
    # (extra args, exit code, words the line must carry)
    (["--stale-after", "3600"], 2, ["stale-after", "3600", "0.2..10"]),
    (["--stale-after", "0.01"], 2, ["stale-after", "0.2..10"]),
    (["--stale-after", "nan"], 2, ["stale-after"]),
    (["--flush-interval", "inf"], 2, ["flush-interval", "inf"]),
    (["--metrics-port", "99999"], 2, ["metrics-port", "99999", "1..65535"]),
    (["--metrics-port", "-1"], 2, ["metrics-port", "1..65535"]),
    (["--metrics-listen", "not an address"], 2, ["metrics-listen"]),
    (["--socket-mode", "999"], 2, ["socket-mode", "octal"]),
    (["--socket-group", "no-such-group-here"], 2, ["socket-group", "no such group"]),
    (["--max-conns", "0"], 2, ["max-conns"]),
    (["--line-timeout", "1e309"], 2, ["line-timeout"]),
    (["--on-kill-grace", "31"], 2, ["on-kill-grace", "31", "0..30"]),
    (["--on-kill-grace", "-1"], 2, ["on-kill-grace", "0..30"]),
]


class TestSidecarBadValues:
    @pytest.mark.parametrize(("extra", "code", "words"), BAD_SIDECAR, ids=str)
    def test_bad_flag(
        self, tmp_path: Path, closed_url: str, extra: list[str], code: int, words: list[str]
    ) -> None:
        """A sidecar flag out of its range is one line naming it, the value and the range."""
        assert_one_line_refusal(run(*sidecar(tmp_path, closed_url, *extra)), code, *words)

    def test_bad_env_value(self, tmp_path: Path, closed_url: str) -> None:
        """The same bound holds for KILLSWITCH_STALE_AFTER, and the line says where it came from."""
        res = run(*sidecar(tmp_path, closed_url), env={"KILLSWITCH_STALE_AFTER": "3600"})
        assert_one_line_refusal(res, 2, "stale-after", "KILLSWITCH_STALE_AFTER", "0.2..10")

    def test_max_conns_must_fit_the_fd_limit(self, tmp_path: Path, closed_url: str) -> None:
        """--max-conns 1000 under an open-file limit of 1024 (soft and hard): exit 2, one line
        naming both numbers, before anything is bound."""

        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

        base = {k: v for k, v in os.environ.items() if not k.startswith("KILLSWITCH_")}
        res = subprocess.run(
            [sys.executable, "-m", "killswitch", *sidecar(tmp_path, closed_url, "--max-conns", "1000")],
            capture_output=True, text=True, env=base, timeout=60, check=False, preexec_fn=limit,
        )  # fmt: skip
        assert_one_line_refusal(res, 2, "max-conns", "1000", "1024")
        assert not (tmp_path / "g.sock").exists()

    def test_bad_config_file_value(self, tmp_path: Path, closed_url: str) -> None:
        """The same bound holds for the TOML config file."""
        cfg = tmp_path / "ks.toml"
        cfg.write_text("[sidecar]\nstale_after = 3600\n")
        res = run(*sidecar(tmp_path, closed_url, "--config", str(cfg)))
        assert_one_line_refusal(res, 2, "stale-after", "config", "0.2..10")

    def test_metrics_port_in_use(self, tmp_path: Path, closed_url: str, busy_port: int) -> None:
        """A metrics port another process holds: one line naming it, exit 1, socket cleaned up."""
        res = run(*sidecar(tmp_path, closed_url, "--metrics-port", str(busy_port)))
        assert_one_line_refusal(res, 1, "metrics", str(busy_port))
        assert not (tmp_path / "g.sock").exists()

    def test_gate_port_in_use(self, tmp_path: Path, closed_url: str, busy_port: int) -> None:
        """A gate TCP port another process holds: one line naming the address, exit 1."""
        args = ["sidecar", "--node", "smars", "--host", "or-01", "--redis", closed_url,
                "--listen", f"tcp:127.0.0.1:{busy_port}", "--state-dir", str(tmp_path)]  # fmt: skip
        assert_one_line_refusal(run(*args), 1, f"tcp:127.0.0.1:{busy_port}")

    def test_socket_directory_missing(self, tmp_path: Path, closed_url: str) -> None:
        """A unix socket in a directory that does not exist: one line, exit 2."""
        args = sidecar(tmp_path, closed_url)
        args[args.index("--listen") + 1] = f"unix:{tmp_path}/nowhere/g.sock"
        assert_one_line_refusal(run(*args), 2, "does not exist", "nowhere")

    def test_unix_path_too_long(self, tmp_path: Path, closed_url: str) -> None:
        """An AF_UNIX path over the kernel's limit: one line giving the limit, exit 2."""
        args = sidecar(tmp_path, closed_url)
        args[args.index("--listen") + 1] = f"unix:{tmp_path}/{'g' * 120}.sock"
        assert_one_line_refusal(run(*args), 2, "107")

    def test_state_dir_not_creatable(self, tmp_path: Path, closed_url: str) -> None:
        """A state directory that cannot be created (a file in the way): one line, exit 2."""
        blocker = tmp_path / "blocker"
        blocker.write_text("x")
        args = sidecar(tmp_path, closed_url)
        args[args.index("--state-dir") + 1] = str(blocker / "state")
        assert_one_line_refusal(run(*args), 2, "state-dir", str(blocker))

    def test_regular_file_at_listen_path(self, tmp_path: Path, closed_url: str) -> None:
        """--listen on a regular file refuses (exit 2) and leaves the file alone."""
        victim = tmp_path / "g.sock"
        victim.write_text("not a socket")
        assert_one_line_refusal(run(*sidecar(tmp_path, closed_url)), 2, "not a socket")
        assert victim.read_text() == "not a socket"


BAD_AGGREGATOR = [
    (["--window", "1e306"], 2, ["window", "0.1..3600"]),
    (["--window", "0"], 2, ["window"]),
    (["--tick", "1e306"], 2, ["tick", "0.01..10"]),
    (["--baseline-multiplier", "inf"], 2, ["baseline-multiplier"]),
    (["--baseline-multiplier", "nan"], 2, ["baseline-multiplier"]),
    (["--haunted-ratio", "inf"], 2, ["haunted-ratio"]),
    (["--max-orders", "0"], 2, ["max-orders"]),
    (["--max-orders", "1e20"], 2, ["max-orders"]),
    (["--max-orders", "100000000000000000000"], 2, ["max-orders"]),
    (["--metrics-port", "0"], 2, ["metrics-port"]),
    (["--lease-ttl", "-1"], 2, ["lease-ttl"]),
    (["--confirm-timeout", "inf"], 2, ["confirm-timeout"]),
    (["--half-life", "1e306"], 2, ["half-life"]),
    (["--warmup", "-5"], 2, ["warmup"]),
]


class TestAggregatorBadValues:
    @pytest.mark.parametrize(("extra", "code", "words"), BAD_AGGREGATOR, ids=str)
    def test_bad_flag(self, closed_url: str, extra: list[str], code: int, words: list[str]) -> None:
        """An aggregator rule or timing flag out of range is one line, exit 2, before Redis."""
        assert_one_line_refusal(run(*aggregator(closed_url, *extra)), code, *words)

    def test_metrics_port_in_use(
        self, closed_url: str, busy_port: int, operator_keys: OperatorKeys
    ) -> None:
        """An aggregator metrics port in use is one line naming the port, exit 1."""
        ops = ("--operators", str(operator_keys.file))
        res = run(*aggregator(closed_url, "--metrics-port", str(busy_port), *ops))
        assert_one_line_refusal(res, 1, str(busy_port))


def operator_rows(url: str) -> list[tuple[list[str], int, list[str]]]:
    n = ["--node", "smars", "--redis", url]
    return [
        (["status", *n, "--stale-after", "3600"], 2, ["stale-after"]),
        (["status", "--node", "smars", "--redis", "127.0.0.1:6379"], 2, ["no scheme"]),
        (
            [
                "status",
                "--node",
                "smars",
                "--redis",
                f"redis+sentinel://u:{SECRET}@h:26379/svc?x=1",
            ],
            2,
            ["query strings"],
        ),
        (["status", "--node", "smars", "--redis", f"memcache://u:{SECRET}@h/"], 2, ["scheme"]),
        (["kill", *n, "--reason", "x", "--timeout", "1e309"], 2, ["timeout"]),
        (["kill", *n, "--reason", "x", "--timeout", "nan"], 2, ["timeout"]),
        (["arm", *n, "--timeout", "-1"], 2, ["timeout"]),
        (["resume", *n, "--timeout", "0"], 2, ["timeout"]),
        (["audit", *n, "--limit", "1e20"], 2, ["limit"]),
        (["audit", *n, "--limit", "100000000000000000000"], 2, ["limit", "1..100000"]),
        (["audit", *n, "--limit", "0"], 2, ["limit"]),
        (["watch", *n, "--interval", "0"], 2, ["interval"]),
        (["export", "--node", "smars", "--redis", "localhost"], 2, ["no scheme"]),
        (["loadgen", "--listen", "unix:/x.sock", "--rate", "inf"], 2, ["rate"]),
        (["loadgen", "--listen", "unix:/x.sock", "--duration", "-1"], 2, ["duration"]),
        (["demo", "--bogus"], 2, ["--bogus"]),
        (["status", "--node", "SMARS", "--redis", url], 2, ["node"]),
    ]


class TestOperatorBadValues:
    def test_every_row(self, closed_url: str) -> None:
        """Each operator verb's bad value exits as documented with one line and no password."""
        for args, code, words in operator_rows(closed_url):
            assert_one_line_refusal(run(*args), code, *words)

    def test_backtest_bad_window_and_tick(self, tmp_path: Path) -> None:
        """backtest refuses a huge --window or --tick with one line (no OverflowError)."""
        counts = tmp_path / "c.csv"
        counts.write_text("timestamp,host,count\n1.0,or-01,1\n")
        for flag in ("--window", "--tick"):
            res = run("backtest", "--counts", str(counts), flag, "1e306")
            assert_one_line_refusal(res, 2, flag.removeprefix("--"))


class TestRedisErrorsAreTold:
    def test_unreachable_names_endpoint_without_password(self, closed_url: str) -> None:
        """An unreachable Redis is called unreachable, with the endpoint and no password."""
        res = run("status", "--node", "smars", "--redis", closed_url)
        assert res.returncode == 1
        assert "unreachable" in res.stderr and "alice:***@127.0.0.1" in res.stderr
        assert SECRET not in res.stderr and "Traceback" not in res.stderr

    def test_wrong_password_is_refused_credentials(self, redis_server: EmbeddedRedis) -> None:
        """A wrong ACL password is 'refused credentials' (exit 1), not 'cannot reach Redis'."""
        import redis as redis_sync

        admin = redis_sync.Redis(host="127.0.0.1", port=redis_server.port)
        try:
            admin.acl_setuser(USER, enabled=True, passwords=["+right-pw"], commands=["+@all"],
                              keys=["*"], channels=["*"])  # fmt: skip
        finally:
            admin.close()
        url = f"redis://{USER}:{SECRET}@127.0.0.1:{redis_server.port}/0"
        res = run("status", "--node", "smars", "--redis", url)
        assert_one_line_refusal(res, 1, "refused the credentials", f"{USER}:***@")
        assert "cannot reach" not in res.stderr


class TestSecondSidecarOnALivePath:
    def test_second_sidecar_refuses_and_first_keeps_serving(
        self, redis_server: EmbeddedRedis, node: str
    ) -> None:
        """A second sidecar on the socket a live one serves exits 1 in one line; the first
        keeps its socket and keeps answering."""
        with fleet(redis_server.url, node, ["or-01"]) as f:
            path = f.address("or-01").removeprefix("unix:")
            res = run("sidecar", "--node", node, "--host", "or-01", "--redis", redis_server.url,
                      "--listen", f"unix:{path}", "--state-dir", str(f.workdir / "s2"))  # fmt: skip
            assert_one_line_refusal(res, 1, "another live process", path)
            assert f.ping("or-01").startswith("PONG")
