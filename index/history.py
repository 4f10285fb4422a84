"""``user_history.npz`` (bundle schema_version 2): what the tower saw of each known user.

For every user row, the last <= ``history_length`` training items in time order (oldest
first) with their timestamps, as CSR, plus the user's encoded tower features. These are
exactly the inputs of the exported user vector, so the service can recompute a known
user's vector from the stored window followed by newer events::

    items, _ = history.window(u)
    categorical, numeric = history.features(u)
    tower.encode_encoded([items], categorical[None], numeric[None])[0]  # == user_vectors[u]

Arrays (n = n_users, nnz = total window length):

- ``indptr`` int64 (n + 1,): user ``u``'s window is ``[indptr[u], indptr[u + 1])``;
- ``items`` int32 (nnz,): item rows; ``timestamps`` float64 (nnz,): unix seconds;
- ``categorical`` int64 (n, n_categorical): embedding rows (0 = unknown);
- ``numeric`` float32 (n, n_numeric): standardized values (0 = missing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recall.index.item_mean import MeanSpec
from recall.index.tower import TowerSpec

__all__ = ["KEYS", "UserHistory"]

KEYS = ("indptr", "items", "timestamps", "categorical", "numeric")


@dataclass(frozen=True)
class UserHistory:
    """Each known user's training window and encoded features (see the module docstring)."""

    indptr: npt.NDArray[np.int64]  # (n_users + 1,)
    items: npt.NDArray[np.int32]  # (nnz,) item rows, time order within a user
    timestamps: npt.NDArray[np.float64]  # (nnz,) unix seconds
    categorical: npt.NDArray[np.int64]  # (n_users, n_categorical)
    numeric: npt.NDArray[np.float32]  # (n_users, n_numeric)

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def window(self, user_row: int) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float64]]:
        """The user's window, oldest first: (item rows (m,) int32, timestamps (m,) float64)."""
        start, end = int(self.indptr[user_row]), int(self.indptr[user_row + 1])
        return self.items[start:end], self.timestamps[start:end]

    def features(self, user_row: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """The user's encoded features: (categorical (n_cat,) int64, numeric (n_num,) float32)."""
        return self.categorical[user_row], self.numeric[user_row]

    def arrays(self) -> dict[str, np.ndarray]:
        """The contents of ``user_history.npz``."""
        return {key: getattr(self, key) for key in KEYS}

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        *,
        n_users: int,
        n_items: int,
        spec: TowerSpec | MeanSpec,
        trained_until: float,
    ) -> UserHistory:
        """Check the contents of ``user_history.npz`` against the bundle and build it.

        Raises :class:`ValueError` naming the first problem: other keys than :data:`KEYS`,
        wrong kinds or shapes, ``indptr`` not running monotonically from 0 to nnz, a window
        longer than the tower's ``history_length``, item rows outside ``[0, n_items)``,
        timestamps not finite, above ``trained_until`` or out of time order within a user,
        categorical rows outside their vocabulary, numeric values not finite.
        """
        if set(arrays) != set(KEYS):
            raise ValueError(f"must hold exactly {', '.join(KEYS)}; has {sorted(arrays)}")
        indptr = _typed(arrays, "indptr", "iu", np.int64, 1)
        items = _typed(arrays, "items", "iu", None, 1)
        timestamps = _typed(arrays, "timestamps", "f", np.float64, 1)
        categorical = _typed(arrays, "categorical", "iu", np.int64, 2)
        numeric = _typed(arrays, "numeric", "f", None, 2)
        nnz = items.shape[0]
        if indptr.shape != (n_users + 1,):
            raise ValueError(f"indptr has {indptr.shape[0]} entries, needs {n_users + 1}")
        if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
            raise ValueError(
                f"indptr must run from 0 to {nnz}, runs from {int(indptr[0])} to {int(indptr[-1])}"
            )
        lengths = np.diff(indptr)
        if (lengths < 0).any():
            raise ValueError("indptr decreases (not a CSR)")
        if int(lengths.max(initial=0)) > spec.history_length:
            raise ValueError(
                f"a window holds {int(lengths.max())} items, more than the tower's "
                f"history_length {spec.history_length}"
            )
        if items.size and (int(items.min()) < 0 or int(items.max()) >= n_items):
            raise ValueError(f"item rows out of range [0, {n_items})")
        if timestamps.shape != (nnz,):
            raise ValueError(f"timestamps has shape {timestamps.shape}, items ({nnz},)")
        if not np.isfinite(timestamps).all():
            raise ValueError("timestamps hold NaN/Inf")
        if nnz and float(timestamps.max()) > trained_until:
            raise ValueError(
                f"a timestamp ({float(timestamps.max())}) is after trained_until ({trained_until})"
            )
        steps = np.diff(timestamps) < 0
        steps[indptr[1:-1][(indptr[1:-1] > 0) & (indptr[1:-1] < nnz)] - 1] = False
        if steps.any():
            raise ValueError("timestamps are not in time order within a user's window")
        n_cat, n_num = len(spec.categorical), len(spec.numeric)
        if categorical.shape != (n_users, n_cat):
            raise ValueError(f"categorical has shape {categorical.shape}, needs {(n_users, n_cat)}")
        for j, feature in enumerate(spec.categorical):
            column = categorical[:, j]
            rows = len(feature.vocabulary) + 1
            if column.size and (int(column.min()) < 0 or int(column.max()) >= rows):
                raise ValueError(f"categorical feature {feature.name!r}: rows out of [0, {rows})")
        if numeric.shape != (n_users, n_num):
            raise ValueError(f"numeric has shape {numeric.shape}, needs {(n_users, n_num)}")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes Inf: refused next
            numeric32 = numeric.astype(np.float32, copy=False)
        if not np.isfinite(numeric32).all():
            raise ValueError("numeric holds NaN/Inf (in float32)")
        return cls(
            indptr=indptr,
            items=items.astype(np.int32, copy=False),
            timestamps=timestamps,
            categorical=categorical,
            numeric=numeric32,
        )


def _typed(
    arrays: Mapping[str, np.ndarray],
    key: str,
    kinds: str,
    dtype: type[np.generic] | None,
    ndim: int,
) -> np.ndarray:
    """``arrays[key]`` checked to be ``ndim``-D of a dtype kind in ``kinds``, then cast to
    ``dtype`` when given (a uint64 beyond int64 wraps negative, which the range checks
    that follow refuse)."""
    array = arrays[key]
    if array.ndim != ndim or array.dtype.kind not in kinds:
        kind = "integers" if kinds == "iu" else "floats"
        raise ValueError(f"{key} must be {ndim}-D {kind}, got {array.dtype} {array.shape}")
    return array if dtype is None else array.astype(dtype, copy=False)
