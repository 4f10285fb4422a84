"""Export a trained model as a bundle (schema_version 2; no index yet)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from recall.index import bundle as b
from recall.index.attributes import ItemAttributes, valid_name
from recall.index.history import UserHistory
from recall.index.tower import fold_user
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from recall.trainer.examples import window_positions
from recall.trainer.train import DeviceData, Prepared, Trained, user_vectors

logger = logging.getLogger(__name__)


def bundle_arrays(
    trained: Trained, dataset: Dataset
) -> dict[str, np.ndarray | dict[str, np.ndarray]]:
    """Every trainer-written file of the bundle, by file name."""
    model, prepared = trained.model, trained.prepared
    device = next(model.parameters()).device
    data = DeviceData(prepared, device)
    users = np.arange(dataset.n_users)
    u = user_vectors(model, data, prepared.histories, users).cpu().numpy()
    seen_indptr, seen_items = prepared.split.seen()
    return {
        b.ITEM_IDS: dataset.item_ids,
        b.ITEM_VECTORS: model.folded_items(),
        b.USER_IDS: dataset.user_ids,
        b.USER_VECTORS: fold_user(u),
        b.USER_SEEN: {"indptr": seen_indptr, "indices": seen_items},
        b.USER_TOWER: model.tower_arrays(),
        b.ITEM_POPULARITY: prepared.item_counts,
        b.USER_HISTORY: user_history(prepared).arrays(),
    }


def item_attributes(dataset: Dataset) -> ItemAttributes | None:
    """The items file's columns (other than the id) encoded for ``item_attributes.npz``;
    None when the data has none. Columns whose names cannot be stored are skipped."""
    raw = {}
    for name, values in dataset.item_attributes.items():
        if valid_name(name):
            raw[name] = values
        else:
            logger.warning("not exporting item attribute %r: invalid name", name)
    if not raw:
        return None
    kinds = {c.name: c.kind for c in dataset.item_columns}
    attributes = ItemAttributes.from_raw(raw, dataset.n_items, kinds)
    logger.info("item attributes: %s", attributes.describe())
    return attributes


def column_types(dataset: Dataset) -> dict[str, list[dict[str, object]]]:
    """How each items / users column was typed (the manifest's ``trainer.columns``)."""
    return {
        "items": [c.as_dict() for c in dataset.item_columns],
        "users": [c.as_dict() for c in dataset.user_columns],
    }


def user_history(prepared: Prepared) -> UserHistory:
    """Each user's window (the training items the user vector is computed from, with their
    timestamps) and encoded features: the contents of ``user_history.npz``."""
    split = prepared.split
    indptr, positions = window_positions(prepared.histories)
    return UserHistory(
        indptr=indptr,
        items=split.train_items[positions].astype(np.int32),
        timestamps=split.train_times[positions].astype(np.float64),
        categorical=prepared.users.categorical.astype(np.int64),
        numeric=prepared.users.numeric.astype(np.float32),
    )


def trained_until(dataset: Dataset) -> float:
    """The largest timestamp of the training input (unix seconds): later events are fresh."""
    return float(dataset.timestamps.max(initial=-np.inf))


def export_bundle(
    trained: Trained,
    dataset: Dataset,
    config: TrainConfig,
    root: Path,
    bundle_id: str | None = None,
) -> Path:
    """Write the bundle atomically under ``root`` and return its directory."""
    arrays = bundle_arrays(trained, dataset)
    attributes = item_attributes(dataset)
    if attributes is not None:
        arrays[b.ITEM_ATTRIBUTES] = attributes.arrays()
    return b.write_bundle(
        root,
        bundle_id or b.new_bundle_id(),
        arrays,
        dim=trained.prepared.spec.dim + 1,
        counts=b.Counts(
            users=dataset.n_users,
            items=dataset.n_items,
            interactions=len(trained.prepared.split.train_items),
        ),
        trainer={
            "config": config.model_dump(),
            "metrics": trained.metrics,
            "data": str(dataset.source),
            "columns": column_types(dataset),
            "torch": torch.__version__,
        },
        trained_until=trained_until(dataset),
        item_attributes=None if attributes is None else attributes.schema(),
    )
