"""A client that never finishes its headers is cut off (issue 15 §6, slowloris): a real
``recall serve`` on 127.0.0.1 with ``RECALL_HEADER_TIMEOUT_S=1``, raw sockets."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.live import free_port
from tests.serve_process import start_serve, stop, wait_ready

TIMEOUT_S = 1.0


def _closed_after(sock: socket.socket, drip: bytes, limit_s: float) -> float | None:
    """Send ``drip`` a byte every 0.2 s until the server closes; seconds it took, or None
    if it was still open after ``limit_s``."""
    start = time.monotonic()
    sock.settimeout(0.2)
    for byte in drip * 100:
        if time.monotonic() - start > limit_s:
            return None
        try:
            if sock.recv(1024) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - start
    return None


@pytest.mark.slow
def test_half_sent_headers_are_cut_off_and_others_are_served(
    published_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_serve(
        published_root, tmp_path, port, workers=1, RECALL_HEADER_TIMEOUT_S=str(TIMEOUT_S)
    )
    try:
        wait_ready(url, server)
        silent = socket.create_connection(("127.0.0.1", port))  # connects, sends nothing
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        with silent, slow:
            took = _closed_after(slow, b"X-Slow: a", limit_s=10 * TIMEOUT_S)
            assert took is not None, "a half-sent request was still open after 10 s"
            assert took < 5 * TIMEOUT_S
            silent.settimeout(5 * TIMEOUT_S)
            assert silent.recv(1024) == b""  # closed too
        with httpx.Client(base_url=url) as client:  # a complete request still answers,
            assert client.get("/healthz").status_code == 200
            time.sleep(2 * TIMEOUT_S)  # and an idle keep-alive connection is not the
            assert client.get("/healthz").status_code == 200  # header timer's business
    finally:
        stop(server)
