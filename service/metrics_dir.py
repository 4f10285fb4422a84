"""The directory of prometheus-client's multiprocess mode for one run of ``recall serve``.

Every worker process writes its metric values into files there, so a scrape that any
worker answers sums the whole replica (:mod:`service.metrics`). The directory must be
set before prometheus-client is imported (it reads the variable at import), hence this
module imports nothing of it, and it must start empty, or a restart would add the old
run's numbers.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def multiprocess_metrics_dir() -> Iterator[Path]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the block (the workers inherit it).

    If the operator set it, that directory is used and its ``*.db`` files of an earlier run
    are removed first; otherwise a fresh ``recall-metrics-*`` directory is made under the
    temp directory (``TMPDIR``, else ``/tmp``: the image's tmpfs) and removed afterwards.
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
    path = Path(tempfile.mkdtemp(prefix="recall-metrics-"))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)
