"""MovieLens 100K for the benchmarks: where it is (it may not be redistributed: no copy
here), its interactions in replay order, cut at a time quantile for a replay."""

from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench.data")

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


@dataclass(frozen=True)
class Interaction:
    user_id: int
    item_id: int
    timestamp: float  # Unix seconds


def read_interactions(path: Path) -> list[Interaction]:
    """``interactions.csv`` (user_id, item_id, timestamp, ...) in (timestamp, user, item)
    order: the replay order, deterministic on ties."""
    with path.open(newline="") as f:
        rows = [
            Interaction(int(r["user_id"]), int(r["item_id"]), float(r["timestamp"]))
            for r in csv.DictReader(f)
        ]
    rows.sort(key=lambda r: (r.timestamp, r.user_id, r.item_id))
    return rows


def replay_split(
    data: Path, quantile: float, events: int
) -> tuple[list[Interaction], list[Interaction], list[Interaction], float]:
    """``data``'s interactions.csv cut at the ``quantile`` of time: (the training rows, at
    or before the cut; the later rows; the first ``events`` of those, the replay; the cut's
    timestamp), all in replay order."""
    rows = read_interactions(data / "interactions.csv")
    cut = float(np.quantile(np.array([r.timestamp for r in rows]), quantile))
    train = [r for r in rows if r.timestamp <= cut]
    later = [r for r in rows if r.timestamp > cut]
    logger.info(
        "%d interactions: %d up to %s (quantile %.2f), replaying %d of the %d later",
        len(rows),
        len(train),
        datetime.fromtimestamp(cut, UTC).isoformat(),
        quantile,
        min(events, len(later)),
        len(later),
    )
    return train, later, later[:events], cut


def write_split(data: Path, train_rows: list[Interaction], out: Path) -> None:
    """``out``: the training interactions, users.csv and items.csv copied as they are."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "interactions.csv").open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["user_id", "item_id", "timestamp"])
        w.writerows([r.user_id, r.item_id, int(r.timestamp)] for r in train_rows)
    for side in ("users.csv", "items.csv"):
        if (data / side).is_file():
            shutil.copyfile(data / side, out / side)
