"""A real Redis Cluster on 127.0.0.1 for tests: six ``redis-server`` processes (three masters,
three replicas) joined by ``redis-cli --cluster create``. Fails, never skips, when the
binaries are missing (Debian's ``redis-server`` package, which ``.ci/run`` installs, has
both).

``cluster-node-timeout`` is 1000 ms, so a killed master's replica takes over within a few
seconds; ``cluster-require-full-coverage no``, as docs/state.md asks of a deployment, so
the other shards keep answering meanwhile.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.redis_server import RedisServer

NODE_TIMEOUT_MS = 1000
CLUSTER_OPTIONS = (
    *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
    *("--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
    *("--cluster-require-full-coverage", "no"),
)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port + 10_000 > 65_535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """Six nodes in ``directory``; ``kill``/``restart`` a node by port (it keeps its port,
    data and ``nodes.conf``, so it rejoins, as a replica once its master was replaced)."""

    def __init__(self, directory: Path, size: int = 6) -> None:
        self.directory = directory
        self.nodes = [
            RedisServer(directory / f"node{i}", port=cluster_port(), extra=CLUSTER_OPTIONS)
            for i in range(size)
        ]

    def url(self, n_seeds: int = 2) -> str:
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:n_seeds])
        return f"redis+cluster://{seeds}"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed (Debian's redis-tools, with redis-server)")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_ok()

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each live master -> its slot ranges, as a live node sees them."""
        for node in self.nodes:
            if node.process is None:
                continue
            with self.client(node.port) as client:
                out: dict[int, list[tuple[int, int]]] = {}
                for start, end, master, *_ in client.execute_command("CLUSTER SLOTS"):
                    out.setdefault(int(master[1]), []).append((int(start), int(end)))
                return out
        raise RuntimeError("no cluster node is running")

    def master_of(self, key: bytes) -> int:
        """The port of the master that serves ``key``'s slot now."""
        slot = redis.cluster.key_slot(key)
        for port, ranges in self.masters().items():
            if any(start <= slot <= end for start, end in ranges):
                return port
        raise RuntimeError(f"slot {slot} is served by no master")

    def masters_with_keys(self, pattern: str) -> list[int]:
        """The ports of the live masters holding a key that matches ``pattern`` (a SCAN
        pattern, e.g. ``recall:{log:*}``)."""
        holding = []
        for port in self.masters():
            with self.client(port) as client:
                if next(client.scan_iter(match=pattern), None) is not None:
                    holding.append(port)
        return holding

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every running node says ``cluster_state:ok``, they agree on the masters
        covering every slot, and every replica is in sync with its master (a replica that
        never synced would refuse to take over)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._ok():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become ok")
            time.sleep(0.1)

    def _ok(self) -> bool:
        views = []
        for node in self.nodes:
            if node.process is None:
                continue
            with self.client(node.port) as client:
                if client.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    return False
                replication = client.info("replication")
                if replication["role"] == "slave" and replication["master_link_status"] != "up":
                    return False
                slots = client.execute_command("CLUSTER SLOTS")
                views.append(sorted((int(s), int(e), int(m[1])) for s, e, m, *_ in slots))
        covered = sum(e - s + 1 for s, e, _ in views[0])
        return covered == 16384 and all(v == views[0] for v in views)

    def flush(self) -> None:
        for port in self.masters():
            with self.client(port) as client:
                client.flushall()

    def kill(self, port: int) -> None:
        self.node(port).kill()

    def restart(self, port: int) -> None:
        """Start a killed node again and wait until the cluster is whole."""
        self.node(port).start()
        self.wait_ok()

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


@contextmanager
def redis_cluster(directory: Path) -> Iterator[RedisCluster]:
    cluster = RedisCluster(directory)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
