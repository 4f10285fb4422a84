"""Tower inputs derived from a data set: vocabularies, user feature rows, item genre rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recall.index.tower import CategoricalFeature, NumericFeature, TowerSpec
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset


@dataclass(frozen=True)
class UserInputs:
    """Encoded user features: categorical (n_users, n_cat) int64 rows (0 = OOV) and
    numeric (n_users, n_num) float32, standardized, 0 where missing."""

    categorical: np.ndarray
    numeric: np.ndarray


def build_spec(dataset: Dataset, config: TrainConfig) -> TowerSpec:
    """The tower's shapes and vocabularies for ``dataset``."""
    categorical: list[CategoricalFeature] = []
    numeric: list[NumericFeature] = []
    for name, values in dataset.user_features.items():
        if values.dtype.kind == "f":
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                continue
            std = float(finite.std())
            numeric.append(NumericFeature(name=name, mean=float(finite.mean()), std=std or 1.0))
        else:
            kept, counts = np.unique(values[values != ""], return_counts=True)
            vocabulary = [str(v) for v in kept[counts >= config.min_category_count]]
            categorical.append(
                CategoricalFeature(name=name, vocabulary=vocabulary, dim=config.categorical_dim)
            )
    genres_per_item = np.diff(dataset.item_genre_indptr)
    return TowerSpec(
        n_items=dataset.n_items,
        item_dim=config.item_dim,
        genre_vocab=[str(g) for g in dataset.genre_vocab],
        genre_dim=config.genre_dim,
        max_genres_per_item=int(genres_per_item.max(initial=0)),
        categorical=categorical,
        numeric=numeric,
        hidden=list(config.hidden),
        history_length=config.history_length,
        tower=config.tower,
        attention_heads=config.attention_heads,
    )


def encode_users(spec: TowerSpec, dataset: Dataset) -> UserInputs:
    """Encode every user's features exactly as :meth:`TowerSpec.encode_features` would."""
    categorical = np.zeros((dataset.n_users, len(spec.categorical)), dtype=np.int64)
    for j, cat in enumerate(spec.categorical):
        values = dataset.user_features[cat.name].astype(str)
        vocabulary = np.asarray(cat.vocabulary, dtype=str)
        if vocabulary.size == 0:
            continue
        pos = np.searchsorted(vocabulary, values).clip(0, vocabulary.size - 1)
        categorical[:, j] = np.where(vocabulary[pos] == values, pos + 1, 0)
    numeric = np.zeros((dataset.n_users, len(spec.numeric)), dtype=np.float32)
    for j, num in enumerate(spec.numeric):
        x = dataset.user_features[num.name]
        numeric[:, j] = np.where(np.isfinite(x), (x - num.mean) / num.std, 0.0)
    return UserInputs(categorical=categorical, numeric=numeric)


def item_genre_rows(spec: TowerSpec, dataset: Dataset) -> np.ndarray:
    """Genre rows of each item, (n_items, max_genres_per_item) int32, 0-padded (genre j -> j+1)."""
    width = spec.max_genres_per_item
    indptr = dataset.item_genre_indptr
    rows = np.zeros((dataset.n_items, width), dtype=np.int32)
    if width == 0:
        return rows
    lengths = np.diff(indptr)
    items = np.repeat(np.arange(dataset.n_items), lengths)
    slots = np.arange(len(dataset.item_genre_indices)) - np.repeat(indptr[:-1], lengths)
    rows[items, slots] = dataset.item_genre_indices + 1
    return rows
