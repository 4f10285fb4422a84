"""A worker process dies with the process that started it (issue 15 §6).

uvicorn's workers (``recall serve`` with ``RECALL_WORKERS`` > 1) are spawned by
``multiprocessing``; when the master is killed (``kill -9``, the OOM killer) nothing tells
them, and they would keep the port and keep answering under pid 1. Two guards, both set
in the worker: on Linux the kernel sends SIGTERM when the parent dies
(``prctl(PR_SET_PDEATHSIG)``), and everywhere a thread polls the parent pid and sends the
same SIGTERM when it changes. SIGTERM is uvicorn's graceful shutdown: the listening
socket is closed, requests in flight finish.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0


def die_with_parent() -> None:
    """In a process spawned by ``multiprocessing`` (a uvicorn worker), arrange SIGTERM to
    self when the parent process dies; elsewhere (a single-process server) do nothing."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    if sys.platform.startswith("linux"):
        _set_parent_death_signal(signal.SIGTERM)
    # also covers a parent that died before the prctl: the first poll sees it
    watch = threading.Thread(target=_watch, args=(parent.pid,), name="recall-parent-watch")
    watch.daemon = True
    watch.start()


def _set_parent_death_signal(signum: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))


def _watch(parent_pid: int) -> None:
    """Poll every :data:`POLL_S` seconds until the parent is gone, then terminate."""
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    logger.warning("master process %d is gone: worker %d stops", parent_pid, os.getpid())
    os.kill(os.getpid(), signal.SIGTERM)
