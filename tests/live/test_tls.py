"""TLS to Redis (`rediss://`): a CA and a server certificate the test makes with openssl, a
redis-server that only speaks TLS, and the fleet, the aggregator and the CLI over it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from killswitch.sim.embedded import EmbeddedRedis, free_port
from kstest import Fleet

HOSTS = ["or-01", "or-02"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem, server.pem, server.key (SAN 127.0.0.1 and localhost), and an unrelated CA."""
    d = tmp_path_factory.mktemp("tls")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=killswitch test CA", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext",
             cwd=d)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out",
             "other.pem", "-days", "2", "-subj", "/CN=some other CA", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_server(certs: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server whose only port speaks TLS (plain TCP is off), requiring a password."""
    port = free_port()
    server = EmbeddedRedis(port=port, extra_args=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs / "server.pem"),
        "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file", str(certs / "ca.pem"),
        "--tls-auth-clients", "no", "--requirepass", "tls-secret-pw",
    ], functions=False)  # fmt: skip
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def tls_url(server: EmbeddedRedis, ca: Path) -> str:
    return f"rediss://:tls-secret-pw@127.0.0.1:{server.port}/0?ssl_ca_certs={ca}"


class TestTls:
    """Everything works over rediss://, and a certificate that does not verify is refused."""

    def test_fleet_over_tls(self, tls_server: EmbeddedRedis, certs: Path, node: str) -> None:
        """Sidecars, aggregator and CLI over TLS: arm exits 0, kill exits 0 with both hosts."""
        f = Fleet(tls_url(tls_server, certs / "ca.pem"), node, HOSTS)
        try:
            f.start()
            f.start_aggregator("--tick", "0.05")
            f.wait_ready(30)
            armed = f.arm()
            assert f.order("or-01", "t1") == f"ALLOW t1 {armed['epoch']}"
            code, rep = f.cli_json("kill", "--reason", "over tls")
            assert code == 0 and rep["confirmed"] == HOSTS, rep
        finally:
            f.stop()

    def test_untrusted_certificate_refused_without_password(
        self, tls_server: EmbeddedRedis, certs: Path, node: str
    ) -> None:
        """With a CA that did not sign the server's certificate, `status` exits 1, says why,
        and the message never contains the password."""
        res = subprocess.run(
            [sys.executable, "-m", "killswitch", "status", "--node", node, "--redis",
             tls_url(tls_server, certs / "other.pem")],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in res.stderr or "certificate" in res.stderr.lower()
        assert "tls-secret-pw" not in res.stderr + res.stdout
        assert ":***@" in res.stderr

    def test_plain_redis_url_cannot_talk_to_tls_port(
        self, tls_server: EmbeddedRedis, node: str
    ) -> None:
        """redis:// against the TLS-only port fails cleanly (exit 1, no traceback)."""
        res = subprocess.run(
            [sys.executable, "-m", "killswitch", "status", "--node", node, "--redis",
             f"redis://:tls-secret-pw@127.0.0.1:{tls_server.port}/0"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert "tls-secret-pw" not in res.stderr
