"""A real Redis Sentinel deployment on loopback (primary, replica, three Sentinels) for tests.

Every process is a real `redis-server` (Sentinels run as `redis-server <conf> --sentinel`) on
free ports with config and data in a private temp directory. It must never touch a Redis or
Sentinel it did not start.

`url` gives the deployment as a `redis+sentinel://` URL, the format `killswitch.store.redisconn`
accepts::

    redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/<service_name>/0

i.e. comma-separated Sentinel `host:port` pairs, then the monitored service name, then the
optional database number.

Timing, measured on a 2-core box with the defaults (down-after 1000 ms, failover-timeout
3000 ms): `start()` takes about 2-3 s (mostly Sentinels discovering each other through
their 2 s hello messages); after `kill_primary()`, `wait_for_failover()` returns in about
3-5 s.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from killswitch.sim.embedded import EmbeddedRedis, find_redis_server, free_port, wait_for_port

__all__ = ["SentinelCluster"]

HOST = "127.0.0.1"


def _query(port: int, fn: Callable[[redis.Redis], object], timeout: float = 0.5) -> object:
    """Run `fn` on a short-lived, non-retrying client; closed before returning."""
    with redis.Redis(
        host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), decode_responses=True,
    ) as client:  # fmt: skip
        return fn(client)


def _replication(port: int) -> dict[str, object]:
    info = _query(port, lambda c: c.info("replication"))
    assert isinstance(info, dict)
    return info


def _wait(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


class SentinelCluster:
    """One primary, `replicas` replicas and `sentinels` Sentinels monitoring `service_name`.

    `start()` returns once the replicas are in sync and every Sentinel knows every replica and
    every other Sentinel, so a failover can be elected. `stop()` is idempotent and removes the
    temp directory.
    """

    def __init__(
        self,
        service_name: str = "killswitch",
        *,
        replicas: int = 1,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        binary: str | None = None,
    ) -> None:
        if replicas < 1 or sentinels < quorum:
            raise ValueError("need at least one replica and at least `quorum` sentinels")
        self.service_name = service_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.binary = binary or find_redis_server()
        self._n_replicas = replicas
        self._n_sentinels = sentinels
        self.base_dir: Path | None = None
        self.servers: dict[int, EmbeddedRedis] = {}
        self.primary_port = 0
        self.sentinel_ports: list[int] = []
        self._sentinel_procs: list[subprocess.Popen[bytes]] = []

    # -- addresses -----------------------------------------------------------------------

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(HOST, p) for p in self.sentinel_ports]

    @property
    def sentinel_urls(self) -> list[str]:
        return [f"redis://{HOST}:{p}" for p in self.sentinel_ports]

    @property
    def url(self) -> str:
        """`redis+sentinel://h:p,h:p,h:p/<service_name>/0` for `killswitch.store.redisconn`."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinel_addresses)
        return f"redis+sentinel://{hosts}/{self.service_name}/0"

    @property
    def primary_url(self) -> str:
        """A plain URL to the primary as last seen: it goes stale on failover."""
        return f"redis://{HOST}:{self.primary_port}/0"

    @property
    def replica_ports(self) -> list[int]:
        return [p for p in self.servers if p != self.primary_port]

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> SentinelCluster:
        if self.base_dir is not None:
            return self
        self.base_dir = Path(tempfile.mkdtemp(prefix="ks-sentinel-"))
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        assert self.base_dir is not None
        deadline = time.monotonic() + timeout
        primary = self._server("primary", [])
        self.primary_port = primary.port
        for i in range(self._n_replicas):
            # Diskless sync with no delay: the default 5 s delay would dominate start-up.
            self._server(f"replica-{i}", ["--replicaof", HOST, str(primary.port)])
        for port in self.replica_ports:
            _wait(
                f"replica {port} in sync",
                lambda port=port: _replication(port).get("master_link_status") == "up",  # type: ignore[misc]
                deadline - time.monotonic(),
            )
        # Sentinels start after the replicas are attached, so their first INFO of the
        # primary already lists them (otherwise discovery waits for the 10 s INFO period).
        for i in range(self._n_sentinels):
            self._sentinel(i)
        for port in self.sentinel_ports:
            wait_for_port(port, max(0.1, deadline - time.monotonic()))
        for port in self.sentinel_ports:
            _wait(
                f"sentinel {port} knows the replicas and the other sentinels",
                lambda port=port: self._sentinel_ready(port),  # type: ignore[misc]
                deadline - time.monotonic(),
            )

    def _server(self, name: str, extra: list[str]) -> EmbeddedRedis:
        assert self.base_dir is not None
        data = self.base_dir / name
        data.mkdir()
        server = EmbeddedRedis(
            data_dir=data,
            binary=self.binary,
            extra_args=["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0", *extra],
            functions="--replicaof" not in extra,  # a replica gets it from its primary
        )
        self.servers[server.port] = server
        server.start()
        return server

    def _sentinel(self, i: int) -> None:
        assert self.base_dir is not None
        d = self.base_dir / f"sentinel-{i}"
        d.mkdir()
        port = free_port()
        name = self.service_name
        # Sentinel rewrites its config file at run time, so each gets its own writable copy.
        conf = d / "sentinel.conf"
        conf.write_text(
            f"port {port}\n"
            f"bind {HOST}\n"
            "daemonize no\n"
            f"dir {d}\n"
            f"logfile {d / 'sentinel.log'}\n"
            f"sentinel monitor {name} {HOST} {self.primary_port} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        self.sentinel_ports.append(port)
        self._sentinel_procs.append(
            subprocess.Popen(
                [self.binary, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def _sentinel_ready(self, port: int) -> bool:
        state = _query(port, lambda c: c.sentinel_master(self.service_name))
        assert isinstance(state, dict)
        return bool(
            int(state["num-slaves"]) >= self._n_replicas
            and int(state["num-other-sentinels"]) >= self._n_sentinels - 1
        )

    def stop(self) -> None:
        """Kill every process and remove the temp directory. Idempotent."""
        procs, self._sentinel_procs = self._sentinel_procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        servers, self.servers = self.servers, {}
        for server in servers.values():
            server.stop()
        self.sentinel_ports = []
        base, self.base_dir = self.base_dir, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults --------------------------------------------------------------------------

    def kill_primary(self) -> int:
        """SIGKILL the current primary (a crash, not a shutdown); return its port."""
        port = self.primary_port
        self.servers[port].kill()
        return port

    def master_address(self, sentinel_port: int) -> tuple[str, int] | None:
        """What one Sentinel says the primary is now, or None if it cannot say."""
        addr = _query(
            sentinel_port, lambda c: c.sentinel_get_master_addr_by_name(self.service_name)
        )
        if not isinstance(addr, (tuple, list)) or len(addr) != 2:
            return None
        return (str(addr[0]), int(addr[1]))

    def wait_for_failover(self, timeout: float = 20.0) -> int:
        """Block until every Sentinel names a new primary that reports role:master.

        Returns the new primary's port and makes it `primary_port`.
        """
        old = self.primary_port
        found: list[int] = []

        def promoted() -> bool:
            ports = set()
            for s in self.sentinel_ports:
                addr = self.master_address(s)
                if addr is None:
                    return False
                ports.add(addr[1])
            if len(ports) != 1 or old in ports:
                return False
            (port,) = ports
            if _replication(port).get("role") != "master":
                return False
            found.append(port)
            return True

        _wait(f"failover of {self.service_name} away from {old}", promoted, timeout)
        self.primary_port = found[-1]
        return self.primary_port
