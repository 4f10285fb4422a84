"""A real ``recall serve`` process (the console script of this venv) on 127.0.0.1: started
with a clean ``RECALL_*`` environment, waited for, stopped with SIGTERM (SIGKILL when it
does not stop)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from recall.service.metrics_dir import MULTIPROC_ENV

RECALL = Path(sys.executable).with_name("recall")


def start_serve(
    root: Path, tmp: Path, port: int, workers: int = 2, **variables: str
) -> subprocess.Popen[bytes]:
    """``recall serve`` of ``root`` on ``port`` in its own process, its temporary files and
    log under ``tmp``, no reload polling (``variables``: more ``RECALL_*`` settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}
    env.pop(MULTIPROC_ENV, None)
    env.update({"TMPDIR": str(tmp), "RECALL_RELOAD_INTERVAL_S": "0", **variables})
    argv = [str(RECALL), "serve", "--root", str(root), "--port", str(port)]
    argv += ["--workers", str(workers)]
    log = (tmp / f"serve-{time.monotonic_ns()}.log").open("wb")
    try:
        return subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    finally:
        log.close()


def wait_for(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, timeout_s: float = 120
) -> None:
    """Until ``ready()`` (an HTTP error counts as not yet); AssertionError naming ``what``
    when ``proc`` (the server it waits for) exits or ``timeout_s`` pass first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what}: the process exited with {proc.returncode}"
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what}: not ready after {timeout_s} s")


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``url``'s ``/readyz`` answers 200 (:func:`wait_for`)."""
    wait_for(proc, lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, url)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, up to 30 s for a graceful stop, then SIGKILL."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
