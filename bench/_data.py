"""Where the benchmarks find MovieLens 100K (it may not be redistributed: no copy here)."""

from __future__ import annotations

import os
from pathlib import Path

ML100K_ENV = "RECALL_ML100K_DIR"
ML100K_DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


def ml100k_dir() -> Path:
    """``$RECALL_ML100K_DIR``, else ``../shared/data/ml-100k`` beside the repository.

    Raises SystemExit with a message naming the setting when the directory is absent.
    """
    path = Path(os.environ.get(ML100K_ENV) or ML100K_DEFAULT)
    if not path.is_dir():
        raise SystemExit(f"MovieLens 100K not found at {path}: set {ML100K_ENV} to its directory")
    return path
