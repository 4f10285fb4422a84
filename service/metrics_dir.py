"""The directory of prometheus-client's multiprocess mode for one run of ``recall serve``.

Every worker process writes its metric values into files there, so a scrape that any
worker answers sums the whole replica (:mod:`recall.service.metrics`). The directory must be
set before prometheus-client is imported (it reads the variable at import), hence this
module imports nothing of it, and it must start empty, or a restart would add the old
run's numbers.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "recall-metrics-"  # + the server's pid: dirs of killed servers are found again
_DIR_NAME = re.compile(rf"^{PREFIX}(\d+)-")


@contextmanager
def multiprocess_metrics_dir() -> Iterator[Path]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the block (the workers inherit it).

    If the operator set it, that directory is used and its ``*.db`` files of an earlier run
    are removed first; otherwise a fresh ``recall-metrics-<pid>-*`` directory is made under
    the temp directory (``TMPDIR``, else ``/tmp``: the image's tmpfs) and removed when the
    block ends or SIGTERM ends the process (uvicorn re-raises it after its shutdown, which
    would skip ``finally``); directories left by servers that were killed are removed at
    the next start.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        stale = list(path.glob("*.db"))
        for file in stale:
            file.unlink()
        logger.info("metrics of all workers in %s (%d old files removed)", path, len(stale))
        yield path
        return
    _remove_dead_servers_dirs(Path(tempfile.gettempdir()))
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    os.environ[MULTIPROC_ENV] = str(path)

    def remove() -> None:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)

    with _on_sigterm(remove):
        try:
            yield path
        finally:
            remove()


def _remove_dead_servers_dirs(tmp: Path) -> None:
    """Remove our metrics directories whose server process no longer exists."""
    for path in tmp.glob(f"{PREFIX}*"):
        match = _DIR_NAME.match(path.name)
        try:
            ours = path.is_dir() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if match and ours and not process_alive(int(match.group(1))):
            logger.info("removing %s, left by a server that was killed", path)
            shutil.rmtree(path, ignore_errors=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (ours or not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def _on_sigterm(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run ``cleanup`` if SIGTERM ends the process in the block, then die of it as before."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        cleanup()
        signal.signal(signum, previous)
        signal.raise_signal(signum)

    previous = signal.getsignal(signal.SIGTERM)
    if previous is None:  # installed outside Python: the default is the closest we have
        previous = signal.SIG_DFL
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
