"""The user side of a bundle: what recall by user id needs of one user the bundle knows.

A :class:`StoredUser` is one user's stored vector, training window (item rows and
timestamps, oldest first), encoded tower features and seen list. It comes from one of two
places, chosen by the state URL:

- the bundle's own files (``user_ids``, ``user_vectors``, ``user_history``, ``user_seen``,
  memory-mapped): :func:`bundle_users`, the embedded SQLite mode of one host;
- the state store (Redis), where ``recall publish`` loaded each user's record under the
  bundle's id before switching ``CURRENT``: :func:`encode_users` makes the records,
  :func:`decode_user` reads one back (:mod:`recall.service.state.users` moves them).

A record is raw little-endian bytes, no pickle, no JSON::

    header   uint32 x 4: format (1), window length w, seen length s, 0
    int64    categorical features (n_categorical,)
    float64  window timestamps (w,)
    float32  stored user vector (dim,), numeric features (n_numeric,)
    int32    window item rows (w,), seen item rows (s,)

Item rows and vectors belong to one bundle, so records are keyed by bundle id.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from recall.index.ids import ExternalId
from recall.index.verify import VerifiedBundle

__all__ = ["RecordShape", "StoredUser", "bundle_users", "decode_user", "encode_users"]

FORMAT = 1
_HEADER = struct.Struct("<4I")


@dataclass(frozen=True)
class StoredUser:
    """One known user as the bundle stored them (shapes: see the module docstring)."""

    vector: npt.NDArray[np.float32]  # (dim,)
    window: npt.NDArray[np.integer]  # (w,) item rows, oldest first; (0,) for schema_version 1
    timestamps: npt.NDArray[np.float64]  # (w,) unix seconds
    categorical: npt.NDArray[np.int64]  # (n_categorical,)
    numeric: npt.NDArray[np.float32]  # (n_numeric,)
    seen: npt.NDArray[np.integer]  # (s,) item rows of the training set


@dataclass(frozen=True)
class RecordShape:
    """The fixed widths of a bundle's records: vector ``dim``, feature counts."""

    dim: int
    n_categorical: int
    n_numeric: int


def bundle_users(
    verified: VerifiedBundle, user_ids: Sequence[ExternalId]
) -> list[StoredUser | None]:
    """Each of ``user_ids`` from the bundle's own files, None where it does not know them."""
    if not user_ids:
        return []
    rows = verified.user_ids.rows(list(user_ids))
    return [None if row < 0 else _from_files(verified, row) for row in rows.tolist()]


def _from_files(verified: VerifiedBundle, row: int) -> StoredUser:
    indptr, history = verified.seen_indptr, verified.history
    seen = verified.seen_items[indptr[row] : indptr[row + 1]]
    vector = np.asarray(verified.user_vectors[row])
    if history is None:  # schema_version 1: no window, no features
        spec = verified.tower.spec
        none = np.zeros(0, dtype=np.int32)
        return StoredUser(
            vector,
            none,
            np.zeros(0),
            np.zeros(len(spec.categorical), np.int64),
            np.zeros(len(spec.numeric), np.float32),
            seen,
        )
    window, times = history.window(row)
    categorical, numeric = history.features(row)
    return StoredUser(vector, window, times, categorical, numeric, seen)


def encode_users(verified: VerifiedBundle, start: int, stop: int) -> list[bytes]:
    """The records of user rows ``[start, stop)`` of ``verified``, in row order: each
    array is converted once for the whole range, then cut per user."""
    spec, history = verified.tower.spec, verified.history
    n = stop - start
    vectors = _le(verified.user_vectors[start:stop], "<f4")
    seen_at = verified.seen_indptr[start : stop + 1].astype(np.int64)
    seen = _le(verified.seen_items[seen_at[0] : seen_at[-1]], "<i4")
    seen_at = (seen_at - seen_at[0]).tolist()
    if history is None:  # schema_version 1: no window, no features
        window_at = [0] * (n + 1)
        items = times = b""
        categorical = bytes(8 * len(spec.categorical) * n)
        numeric = bytes(4 * len(spec.numeric) * n)
    else:
        at = history.indptr[start : stop + 1]
        items = _le(history.items[at[0] : at[-1]], "<i4")
        times = _le(history.timestamps[at[0] : at[-1]], "<f8")
        window_at = (at - at[0]).tolist()
        categorical = _le(history.categorical[start:stop], "<i8")
        numeric = _le(history.numeric[start:stop], "<f4")
    v, c, m = 4 * verified.manifest.dim, 8 * len(spec.categorical), 4 * len(spec.numeric)
    out = []
    for j in range(n):
        w0, w1, s0, s1 = window_at[j], window_at[j + 1], seen_at[j], seen_at[j + 1]
        out.append(
            b"".join(
                (
                    _HEADER.pack(FORMAT, w1 - w0, s1 - s0, 0),
                    categorical[c * j : c * (j + 1)],
                    times[8 * w0 : 8 * w1],
                    vectors[v * j : v * (j + 1)],
                    numeric[m * j : m * (j + 1)],
                    items[4 * w0 : 4 * w1],
                    seen[4 * s0 : 4 * s1],
                )
            )
        )
    return out


def _le(array: np.ndarray, dtype: str) -> bytes:
    """``array``'s values as contiguous little-endian ``dtype`` bytes."""
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def decode_user(record: bytes, shape: RecordShape) -> StoredUser:
    """One record back (ValueError when it is not one of this shape)."""
    if len(record) < _HEADER.size:
        raise ValueError("a user record is shorter than its header")
    version, w, s, _ = _HEADER.unpack_from(record)
    if version != FORMAT:
        raise ValueError(f"unknown user record format {version}")
    sizes = (
        ("<i8", shape.n_categorical),
        ("<f8", w),
        ("<f4", shape.dim),
        ("<f4", shape.n_numeric),
        ("<i4", w),
        ("<i4", s),
    )
    expected = _HEADER.size + sum(np.dtype(t).itemsize * n for t, n in sizes)
    if len(record) != expected:
        raise ValueError(f"a user record holds {len(record)} bytes, its header says {expected}")
    parts, offset = [], _HEADER.size
    for dtype, n in sizes:
        parts.append(np.frombuffer(record, dtype=dtype, count=n, offset=offset))
        offset += np.dtype(dtype).itemsize * n
    categorical, timestamps, vector, numeric, window, seen = parts
    return StoredUser(
        vector.astype(np.float32),
        window.astype(np.int32),
        timestamps.astype(np.float64),
        categorical.astype(np.int64),
        numeric.astype(np.float32),
        seen.astype(np.int32),
    )
