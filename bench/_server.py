"""The ``recall`` command as a real subprocess: ``recall ARGS`` run to its end
(:func:`recall_cli`), and ``recall serve`` on 127.0.0.1: start, wait until ready, measure
the CPU its process tree uses, stop."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger("bench.server")

_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user+system) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU seconds used so far by ``root_pid`` and its live descendants."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents[int(entry)], cpu[int(entry)] = st
    total = 0.0
    for pid, seconds in cpu.items():
        p = pid
        while p > 1:
            if p == root_pid:
                total += seconds
                break
            p = parents.get(p, 0)
    return total


def recall_executable() -> str:
    """The ``recall`` console script beside this Python (a venv's), else ``recall`` on PATH."""
    candidate = Path(sys.executable).with_name("recall")
    return str(candidate) if candidate.exists() else "recall"


def recall_cli(*args: str | Path) -> str:
    """Run ``recall ARGS`` to its end and return its stdout; a failure raises RuntimeError
    with the end of its stderr."""
    argv = [recall_executable(), *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    workers: int

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)


@contextmanager
def serve(
    root: Path | str,
    workers: int,
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 180,
    app_factory: str | None = None,
) -> Iterator[Server]:
    """Run ``recall serve --root ROOT --workers N`` on a free port until the block ends.

    With ``app_factory`` (``module:function`` in bench/), run that factory under uvicorn
    with the settings ``recall serve`` uses (uvloop, httptools, no access log) instead.
    """
    port = free_port()
    listen = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if app_factory is None:
        cmd = [
            recall_executable(),
            "--log-level",
            "WARNING",
            "serve",
            "--root",
            str(root),
            *listen,
        ]
    else:
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            app_factory,
            "--factory",
            "--app-dir",
            str(Path(__file__).parent),
            *listen,
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    full_env = {
        **os.environ,
        "RECALL_ROOT": str(root),
        "RECALL_RELOAD_INTERVAL_S": "0",
        **(env or {}),
    }
    process = subprocess.Popen(cmd, env=full_env, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, workers)
    try:
        _wait_ready(server, ready_timeout_s)
        yield server
    finally:
        _stop(process)


def _wait_ready(server: Server, timeout_s: float) -> None:
    """Until /readyz answers 200 on 20 fresh connections in a row (every worker loaded)."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while streak < 20:
        if server.process.poll() is not None:
            raise RuntimeError(f"recall serve exited with {server.process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"recall serve not ready after {timeout_s} s")
        try:
            ok = httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            ok = False
        streak = streak + 1 if ok else 0
        if not ok:
            time.sleep(0.2)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            logger.warning("recall serve (pid %d) did not stop; killing its group", process.pid)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
