"""A real Redis Cluster on loopback (masters, each with replicas) for tests and benches.

Every process is a real `redis-server` in cluster mode on a free port, with its config, data
and `nodes.conf` in a private temp directory; the cluster is formed with the real
`redis-cli --cluster create`. It must never touch a Redis it did not start.

`url` gives the deployment as `redis+cluster://h:p,h:p,h:p/`, the form
`killswitch.store.redisconn` accepts.

Note on ports: a cluster node also listens on its port + 10000 (the cluster bus), so the
ports chosen here leave that one free as well.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from killswitch.sim.embedded import EmbeddedRedis, find_redis_server, free_port

__all__ = ["RedisClusterHarness", "find_redis_cli"]

HOST = "127.0.0.1"
BUS_OFFSET = 10000


def find_redis_cli(server_binary: str) -> str:
    """`redis-cli` beside `redis-server` (Debian ships both in redis-tools)."""
    beside = Path(server_binary).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise FileNotFoundError("redis-cli not found (Debian: apt-get install redis-tools)")
    return found


def _client(port: int, timeout: float = 0.5) -> redis.Redis:
    return redis.Redis(
        host=HOST, port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), decode_responses=True,
    )  # fmt: skip


def _wait(what: str, predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def _cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + BUS_OFFSET < 65536:
            try:
                with socket.socket() as s:
                    s.bind((HOST, port + BUS_OFFSET))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterHarness:
    """`masters` masters with `replicas` replicas each; `start()` returns once the cluster
    reports `cluster_state:ok` on every node and every replica is in sync.

    `stop()` is idempotent and removes the temp directory.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        node_timeout_ms: int = 1000,
        binary: str | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.binary = binary or find_redis_server()
        self.cli = find_redis_cli(self.binary)
        self.base_dir: Path | None = None
        self.servers: dict[int, EmbeddedRedis] = {}

    @property
    def ports(self) -> list[int]:
        return list(self.servers)

    @property
    def url(self) -> str:
        """`redis+cluster://h:p,h:p,.../` naming every node as a start-up node."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports) + "/"

    def start(self, timeout: float = 30.0) -> RedisClusterHarness:
        if self.base_dir is not None:
            return self
        self.base_dir = Path(tempfile.mkdtemp(prefix="ks-cluster-"))
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        assert self.base_dir is not None
        deadline = time.monotonic() + timeout
        for i in range(self.masters * (1 + self.replicas)):
            data = self.base_dir / f"node-{i}"
            data.mkdir()
            server = EmbeddedRedis(
                data_dir=data,
                port=_cluster_port(),
                functions=False,  # the aggregators load it on every primary
                binary=self.binary,
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(data / "nodes.conf"),
                    "--cluster-node-timeout", str(self.node_timeout_ms),
                    # A replica may take over at once: the tests kill masters on purpose.
                    "--cluster-replica-validity-factor", "0",
                    "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0",
                ],
            )  # fmt: skip
            self.servers[server.port] = server
            server.start()
        subprocess.run(
            [
                self.cli, "--cluster", "create",
                *(f"{HOST}:{p}" for p in self.ports),
                "--cluster-replicas", str(self.replicas), "--cluster-yes",
            ],
            check=True, capture_output=True, timeout=max(1.0, deadline - time.monotonic()),
        )  # fmt: skip
        for port in self.ports:
            _wait(f"cluster node {port} ok", partial(self._ok, port), deadline - time.monotonic())
        _wait("replicas in sync", self._replicas_synced, deadline - time.monotonic())

    def _ok(self, port: int) -> bool:
        with _client(port) as c:
            info = c.cluster("info")
        return isinstance(info, dict) and info.get("cluster_state") == "ok"

    def _replicas_synced(self) -> bool:
        for port in self.ports:
            with _client(port) as c:
                repl = c.info("replication")
            if repl.get("role") == "slave" and repl.get("master_link_status") != "up":
                return False
        return True

    def master_of(self, key: str) -> int:
        """The port of the master that serves `key`'s slot now."""
        for port, server in self.servers.items():
            if server.proc is None or server.proc.poll() is not None:
                continue
            try:
                with _client(port) as c:
                    slot = int(c.cluster("keyslot", key))
                    # [[start, end, [master host, port, id], [replica ...], ...], ...]
                    for start, end, master, *_ in c.cluster("slots"):
                        if int(start) <= slot <= int(end):
                            return int(master[1])
            except redis.RedisError:
                continue
        raise RuntimeError(f"no live node knows the master of {key!r}")

    def has_replica(self, port: int) -> bool:
        """Whether the master on `port` has a replica connected now (one that can take over)."""
        with _client(port) as c:
            return int(c.info("replication").get("connected_slaves", 0)) > 0

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash, not a shutdown)."""
        self.servers[port].kill()

    def wait_for_failover(self, old_master: int, key: str, timeout: float = 20.0) -> int:
        """Until a replica has taken over `key`'s slot from `old_master`; returns its port."""
        found: list[int] = []

        def promoted() -> bool:
            port = self.master_of(key)
            if port == old_master:
                return False
            found.append(port)
            return self._ok(port)

        _wait(f"failover of {key!r} away from {old_master}", promoted, timeout)
        return found[-1]

    def stop(self) -> None:
        """Kill every node and remove the temp directory. Idempotent."""
        servers, self.servers = self.servers, {}
        for server in servers.values():
            server.stop()
        base, self.base_dir = self.base_dir, None
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)

    def __enter__(self) -> RedisClusterHarness:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
