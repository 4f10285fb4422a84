"""A real uvicorn server on 127.0.0.1 for HTTP tests (an ephemeral port, in a thread), and
the service settings those tests use."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from service.settings import Settings

TOKEN = "s3cret-admin-token-for-tests"


def settings(root: Path, **overrides: object) -> Settings:
    """Small limits (so tests reach them cheaply), no polling, admin token :data:`TOKEN`."""
    values: dict[str, object] = {
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
