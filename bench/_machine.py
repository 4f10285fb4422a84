"""What machine a benchmark ran on (for the JSON that docs/ quotes)."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def machine(**extra: object) -> dict[str, object]:
    """What a results JSON records of the machine: CPU, cores, 1-minute load, Python, and
    what the benchmark adds in ``extra`` (library versions, thread counts)."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        **extra,
    }


def package_versions(*names: str) -> dict[str, str | None]:
    """The installed version of each distribution in ``names`` (None where absent)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
