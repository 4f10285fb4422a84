"""The history rule of a bundle without a user tower (vectors from ``recall import``).

Matrix factorization, item2vec and graph embeddings give item vectors (and maybe user
vectors) but no function from a history to a vector. For such a bundle a history's query
vector is the **mean of the item vectors of its last** ``history_length`` **items**,
normalized to unit norm when the bundle's metric is cosine (a history whose vectors cancel
out exactly stays the zero vector, which scores every item 0). :class:`ItemMean` computes
it with the interface of :class:`recall.index.tower.UserTower`, so the service runs the
same code for both; :data:`HistoryEncoder` is either.

A stored user vector ``u`` (imported, or made by this rule from the import's interactions)
stands for the window it came from: ``m`` items, the user's training items in the bundle's
``user_history.npz`` (``history_length`` when the import had none for the user). Fresh
events move it by the same rule (:meth:`ItemMean.refresh`): the newest
``f <= history_length`` events push the oldest window items out, and

    v = (m' u + sum of the f events' item vectors) / (m' + f),   m' = min(m, history_length - f)

normalized for cosine. For a user whose ``u`` is the mean of their window this is the mean
of the window followed by the events, as long as both fit the history length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recall.index.tower import (
    CategoricalFeature,
    FeatureError,
    FeatureValue,
    NumericFeature,
    UserTower,
    pad_histories,
)

__all__ = ["HistoryEncoder", "ItemMean", "MeanSpec", "normalize_rows"]

_CHUNK = 1024  # histories averaged at a time (the import computes one per user)


@dataclass(frozen=True)
class MeanSpec:
    """What the service reads of a history rule's spec (as of a :class:`TowerSpec`): the
    window length, and no user features."""

    history_length: int
    categorical: tuple[CategoricalFeature, ...] = ()
    numeric: tuple[NumericFeature, ...] = ()

    def check_features(self, features: Mapping[str, FeatureValue] | None) -> None:
        """:class:`FeatureError` for any feature: imported vectors take none."""
        if features:
            raise FeatureError(
                "this bundle's vectors were imported: it takes no user features "
                f"(got {', '.join(sorted(features)[:5])})"
            )


def normalize_rows(vectors: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """``vectors`` (n, d) float32 scaled to unit L2 norm per row (float64 arithmetic);
    zero rows stay zero."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v))
    out: npt.NDArray[np.float32] = (v / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
    return out


class ItemMean:
    """The mean of a history's item vectors (see the module docstring), float32 (B, dim)."""

    def __init__(
        self, item_vectors: npt.NDArray[np.float32], history_length: int, normalize: bool
    ) -> None:
        """``item_vectors`` (n_items, dim) float32, the bundle's (kept, not copied)."""
        self.items = item_vectors
        self.spec = MeanSpec(history_length)
        self.normalize = normalize

    def norm_bound(self, numeric_norm: float = 0.0) -> float:
        """An upper bound of a query vector's norm: 1 for cosine, else the largest item
        norm (a mean, or a blend, of vectors is no longer than the longest of them)."""
        if self.normalize:
            return 1.0
        a = np.asarray(self.items, dtype=np.float64)
        return float(np.sqrt(np.einsum("ij,ij->i", a, a).max(initial=0.0)))

    def encode(
        self,
        histories: Sequence[npt.NDArray[np.integer]],
        features: Sequence[Mapping[str, FeatureValue] | None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Query vectors (B, dim) of item-row histories (oldest first; the last
        ``history_length`` count). Features must be absent (:meth:`MeanSpec.check_features`)."""
        for values in features or ():
            self.spec.check_features(values)
        return self._mean(histories)

    def encode_encoded(
        self,
        histories: Sequence[npt.NDArray[np.integer]],
        categorical: npt.NDArray[np.integer],
        numeric: npt.NDArray[np.floating],
    ) -> npt.NDArray[np.float32]:
        """As :meth:`encode`; ``categorical`` (B, 0) and ``numeric`` (B, 0) are the empty
        features of ``user_history.npz``."""
        if np.asarray(categorical).size or np.asarray(numeric).size:
            raise ValueError("the item-mean rule takes no user features")
        return self._mean(histories)

    def refresh(
        self,
        stored: npt.NDArray[np.float32],
        window_lengths: npt.NDArray[np.integer],
        fresh: Sequence[npt.NDArray[np.integer]],
    ) -> npt.NDArray[np.float32]:
        """Stored user vectors (B, dim) moved by their fresh events' item rows (oldest
        first), each standing for ``window_lengths`` (B,) items (0: a full window); the
        rule of the module docstring. (B, dim) float32."""
        length = self.spec.history_length
        out = np.empty((len(fresh), self.items.shape[1]), dtype=np.float64)
        for b, rows in enumerate(fresh):
            newest = np.asarray(rows, dtype=np.int64)[-length:]
            m = int(window_lengths[b]) or length
            weight = max(min(m, length - newest.size), 0)
            events = np.asarray(self.items[newest], dtype=np.float64).sum(axis=0)
            total = weight * np.asarray(stored[b], dtype=np.float64) + events
            out[b] = total / max(weight + newest.size, 1)
        return self._finish(out)

    def _mean(self, histories: Sequence[npt.NDArray[np.integer]]) -> npt.NDArray[np.float32]:
        n_items = self.items.shape[0]
        for history in histories:
            h = np.asarray(history)
            if h.size and (h.min() < 0 or h.max() >= n_items):
                raise ValueError("history holds item rows out of range")
        out = np.empty((len(histories), self.items.shape[1]), dtype=np.float32)
        for start in range(0, len(histories), _CHUNK):  # bounded memory: (chunk, L, dim)
            rows, mask = pad_histories(histories[start : start + _CHUNK], self.spec.history_length)
            weights = mask.astype(np.float64)[..., None]
            sums = (np.asarray(self.items[rows], dtype=np.float64) * weights).sum(axis=1)
            out[start : start + len(rows)] = self._finish(
                sums / np.maximum(weights.sum(axis=1), 1.0)
            )
        return out

    def _finish(self, vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
        return normalize_rows(vectors) if self.normalize else vectors.astype(np.float32)


HistoryEncoder = UserTower | ItemMean
"""How a bundle turns a history into a query vector: its trained tower, or the item mean."""
