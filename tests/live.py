"""A real uvicorn server on 127.0.0.1 for HTTP tests (an ephemeral port, in a thread), and
the service settings those tests use."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from recall.service.settings import Settings
from recall.service.state import sqlite_url

TOKEN = "s3cret-admin-token-for-tests"

_STATE_DIRS = tempfile.TemporaryDirectory(prefix="recall-test-state-")
"""Parent of the state stores of :func:`settings` (removed when the test process exits)."""


def fresh_state_url() -> str:
    """A SQLite state store of its own, outside any bundle root (``published_root`` is
    shared by the test modules: events there would change other modules' answers)."""
    return sqlite_url(Path(tempfile.mkdtemp(dir=_STATE_DIRS.name)) / "events.sqlite")


def settings(root: Path | str, **overrides: object) -> Settings:
    """Small limits (so tests reach them cheaply), no polling, admin token :data:`TOKEN`,
    an empty state store of its own (:func:`fresh_state_url`), and a store read bound of
    1 s instead of 50 ms, so a busy test machine does not turn a healthy store's answers
    into ``fresh: false`` (tests of the bound set ``state_timeout_s`` themselves)."""
    values: dict[str, object] = {
        "state_url": fresh_state_url(),
        "state_timeout_s": 1.0,
        "root": root,
        "max_k": 200,
        "max_batch": 8,
        "max_vector_ids": 50,
        "max_body_bytes": 8192,
        "max_history": 300,
        "reload_interval_s": 0,
        "admin_token": TOKEN,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server in a subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
