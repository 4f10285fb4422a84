"""A real ``redis-server`` process on 127.0.0.1 for tests (Debian's ``redis-server`` package;
``.ci/run`` installs it). Fails, never skips, when the binary is missing."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.live import free_port


def redis_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        pytest.fail(
            "redis-server is not installed: the state store tests run a real Redis. Install "
            "it with `apt-get install -y --no-install-recommends redis-server` (.ci/run does "
            "this in CI)."
        )
    return found


def server_version() -> str:
    """What ``redis-server --version`` prints (``Redis server v=7.0.15 sha=...``), for
    benchmark results."""
    return subprocess.run(
        [redis_binary(), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()


class RedisServer:
    """One ``redis-server`` with its data in ``directory``; ``kill`` and ``start`` again keep
    the port (and, with ``appendonly``, the data: AOF fsynced on every write, or once a
    second with ``appendfsync="everysec"``, the compose file's setting)."""

    def __init__(
        self,
        directory: Path,
        *,
        appendonly: bool = False,
        appendfsync: str = "always",
        port: int | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = free_port() if port is None else port
        self.extra = tuple(extra)  # more redis-server options, e.g. --cluster-enabled yes
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        aof = ["--appendonly", "yes", "--appendfsync", self.appendfsync] if self.appendonly else []
        command = [
            redis_binary(),
            *("--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.directory)),
            *("--save", "", "--appendonly", "no", *aof, "--protected-mode", "yes"),
            *("--daemonize", "no", "--logfile", str(self.directory / "redis.log")),
            *self.extra,
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self._pong():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.directory / "redis.log"
                raise RuntimeError(f"redis-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.02)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL (a crash: no shutdown save, no goodbye to clients)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def redis_server(
    directory: Path, *, appendonly: bool = False, appendfsync: str = "always"
) -> Iterator[RedisServer]:
    server = RedisServer(directory, appendonly=appendonly, appendfsync=appendfsync)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def load_users(url: str, bundle: Path) -> None:
    """Load the users of bundle directory ``bundle`` into the Redis at ``url`` (what
    ``recall publish --state-url`` does before switching CURRENT), so that a replica on
    that Redis serves the bundle."""
    from recall.index.verify import verify_bundle
    from recall.service.state.users import UserLoader

    loader = UserLoader(url)
    try:
        loader.load(verify_bundle(bundle))
    finally:
        loader.close()
