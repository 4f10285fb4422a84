"""Input files for ``recall import`` (vectors as .npz or Parquet, interactions, items) and
an import run through the real command line, for the import tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recall.cli import main


def write_vectors(path: Path, ids: Sequence[object] | np.ndarray, vectors: np.ndarray) -> Path:
    """``ids`` and ``vectors`` (n, d) as ``path``: an .npz (ids, vectors) or a Parquet file
    (id, vector as a fixed-size list of float32)."""
    if path.suffix == ".npz":
        np.savez(path, ids=np.asarray(ids), vectors=vectors)
        return path
    flat = pa.array(np.asarray(vectors, dtype=np.float32).ravel())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    pq.write_table(pa.table({"id": pa.array(list(ids)), "vector": column}), path)
    return path


def write_interactions(path: Path, rows: Sequence[tuple[object, object, float]]) -> Path:
    """(user_id, item_id, timestamp) rows as an interactions.csv."""
    lines = ["user_id,item_id,timestamp", *(f"{u},{i},{t}" for u, i, t in rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class ImportInputs:
    """A small catalog made elsewhere: item ids (int) and vectors, user ids (str) and
    vectors, each user's interactions (3 distinct items, timestamps in order)."""

    item_ids: np.ndarray  # (n_items,) int64
    items: np.ndarray  # (n_items, dim) float32, unequal norms
    user_ids: list[str]
    users: np.ndarray  # (n_users, dim) float32
    interactions: list[tuple[str, int, float]]

    @classmethod
    def make(
        cls, n_items: int = 120, n_users: int = 12, dim: int = 8, seed: int = 0
    ) -> ImportInputs:
        rng = np.random.default_rng(seed)
        items = rng.standard_normal((n_items, dim)) * rng.lognormal(0.0, 0.5, (n_items, 1))
        users = rng.standard_normal((n_users, dim))
        item_ids = np.arange(1000, 1000 + n_items, dtype=np.int64)
        user_ids = [f"u{j}" for j in range(n_users)]
        interactions = [
            (user, int(item_ids[item]), 100.0 + 10 * j + t)
            for j, user in enumerate(user_ids)
            for t, item in enumerate(rng.choice(n_items, size=3, replace=False))
        ]
        return cls(
            item_ids, items.astype(np.float32), user_ids, users.astype(np.float32), interactions
        )

    def seen(self, user: str) -> list[int]:
        """The item ids of ``user``'s interactions, oldest first."""
        return [item for u, item, _ in self.interactions if u == user]


def run_import(*args: str | Path) -> tuple[int, Path | None]:
    """``recall import ARGS`` in this process: (exit code, the bundle directory it printed
    or None). The caller captures stdout (capsys) only through this."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["import", *map(str, args)])
    printed = out.getvalue().strip()
    return code, Path(printed) if code == 0 and printed else None
