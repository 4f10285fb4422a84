"""Workers die with their master (issue 15 §6): ``kill -9`` of a ``recall serve --workers 2``
master leaves no worker answering, and a restarted ``recall serve`` binds the same port.

Real ``recall serve`` processes (the console script) on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.live import free_port
from tests.serve_process import start_serve, stop, wait_ready

WORKERS_GONE_S = 10.0  # PR_SET_PDEATHSIG is immediate; the poll fallback takes 1 s


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_workers_die_with_a_killed_master_and_a_restart_binds_the_port(
    published_root: Path, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    master = start_serve(published_root, tmp_path, port)
    workers: list[int] = []
    try:
        wait_ready(url, master)
        deadline = time.monotonic() + 30
        while len(workers) < 2 and time.monotonic() < deadline:
            workers = [p for p in _children(master.pid) if b"spawn_main" in _cmdline(p)]
            time.sleep(0.1)
        assert len(workers) == 2, _children(master.pid)
        master.kill()  # SIGKILL: no cleanup, no word to the workers
        master.wait(timeout=10)
        deadline = time.monotonic() + WORKERS_GONE_S
        while any(_running(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [p for p in workers if _running(p)]
        assert alive == [], f"workers {alive} outlived their master"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{url}/healthz", timeout=2)
        restarted = start_serve(published_root, tmp_path, port)
        try:
            wait_ready(url, restarted)
        finally:
            stop(restarted)
    finally:
        for pid in workers:  # on a failure, do not leave them behind
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        if master.poll() is None:
            stop(master)
