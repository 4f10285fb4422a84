"""Training checkpoints: what a killed run needs to continue as if it had never stopped.

One file, ``<out>/.checkpoints/last.pt``, replaced atomically (temp file, fsync, rename,
fsync of the directory), so a reader sees the previous checkpoint or the next one, never
half of one. It is ``torch.save`` of tensors, numbers, strings, lists and dicts only and
is read back with ``torch.load(weights_only=True)``: nothing in it can run code.

Contents (format 1): the config and a fingerprint of the data set it was trained on, the
number of ranks, where to continue (``next_epoch``, ``next_step``, whether early stopping
had ended the run), the model, the optimizers, the best epoch's weights and the
early-stopping record, the shared generator's state now and at the start of the epoch
(to replay the epoch's permutation), and each rank's own torch RNG states.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recall.index.bundle import fsync_path
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset

logger = logging.getLogger(__name__)

FORMAT = 1
DIRECTORY = ".checkpoints"  # under the bundle root; publish/retention skip dot names
FILE = "last.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another run (config, data or
    number of ranks): the message names the difference."""


def checkpoint_path(root: Path) -> Path:
    """Where the checkpoint of a run writing bundles under ``root`` lives."""
    return root / DIRECTORY / FILE


def data_fingerprint(dataset: Dataset) -> dict[str, Any]:
    """Counts and a sha256 over every array of ``dataset`` (ids, interactions, features,
    genres, attributes): the same data in CSV or Parquet has the same fingerprint."""
    digest = hashlib.sha256()
    arrays: list[tuple[str, np.ndarray | None]] = [
        ("user_ids", dataset.user_ids),
        ("item_ids", dataset.item_ids),
        ("user_rows", dataset.user_rows),
        ("item_rows", dataset.item_rows),
        ("timestamps", dataset.timestamps),
        ("ratings", dataset.ratings),
        ("genre_vocab", dataset.genre_vocab),
        ("item_genre_indptr", dataset.item_genre_indptr),
        ("item_genre_indices", dataset.item_genre_indices),
    ]
    arrays += [(f"user:{k}", v) for k, v in sorted(dataset.user_features.items())]
    arrays += [(f"item:{k}", v) for k, v in sorted(dataset.item_attributes.items())]
    for name, array in arrays:
        digest.update(name.encode())
        if array is not None:
            digest.update(array.dtype.str.encode())
            digest.update(np.ascontiguousarray(array).data)
    return {
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": dataset.n_interactions,
        "sha256": digest.hexdigest(),
    }


def save(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def remove_leftovers(path: Path) -> None:
    """Temp files of writers that were killed mid-write (the checkpoint itself stays)."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path`` (tensors and plain containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises many kinds for a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}, expected {FORMAT}")
    return state


def check_same_run(
    path: Path, state: dict[str, Any], config: TrainConfig, data: dict[str, Any], world: int
) -> None:
    """Raise :class:`CheckpointError` naming what differs between the run that wrote
    ``state`` and this one: config fields, the data set, or the number of ranks."""
    ours = config.model_dump(mode="json")
    theirs = state["config"]
    fields = sorted(set(ours) | set(theirs))
    changed = [
        f"{k}={theirs.get(k)!r} (now {ours.get(k)!r})"
        for k in fields
        if theirs.get(k) != ours.get(k)
    ]
    if changed:
        raise CheckpointError(
            f"{path} was written with another config: {', '.join(changed)}; "
            "resume with the same settings, or train without --resume to start over"
        )
    if state["data"] != data:
        old, new = state["data"], data
        counts = [
            f"{k} {old[k]} (now {new[k]})"
            for k in ("users", "items", "interactions")
            if old[k] != new[k]
        ]
        what = (
            ", ".join(counts)
            if counts
            else f"same sizes, content sha256 {old['sha256'][:12]} (now {new['sha256'][:12]})"
        )
        raise CheckpointError(f"{path} was trained on another data set: {what}")
    if state["world_size"] != world:
        raise CheckpointError(
            f"{path} was written by {state['world_size']} rank(s), this run has {world}: "
            "resume with the same number of processes"
        )
