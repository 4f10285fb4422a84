"""The input files of ``recall import`` (pyarrow): vectors, interactions, item attributes.

- vectors: an ``.npz`` with arrays ``ids`` (n,) and ``vectors`` (n, dim)
  (:func:`recall.index.importer.read_npz`), or a Parquet file with an ``id`` column
  (integers or strings) and a ``vector`` column (a fixed-size list or a list of numbers,
  every row the same length); other names by ``id_column`` / ``vector_column``;
- interactions: the trainer's ``interactions.csv`` / ``.parquet`` (user_id, item_id,
  timestamp), read and checked by :mod:`recall.trainer.data`;
- item attributes: the trainer's ``items.csv`` / ``.parquet``, typed as training types it;
  every id must have an item vector.

Each problem is a :class:`~recall.trainer.data.DataError` or
:class:`~recall.index.importer.ImportInputError` naming the file, the row and the column.
The readers are :mod:`recall.trainer.data`'s own (``_read``, ``_encode``, ...), so an
import and a training report bad input the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recall.index.attributes import ItemAttributes
from recall.index.columns import Kind
from recall.index.ids import IdMap
from recall.index.importer import (
    AttributeTable,
    ImportInputError,
    Interactions,
    VectorTable,
    read_npz,
)
from recall.trainer import data as d

logger = logging.getLogger(__name__)

__all__ = ["read_interactions", "read_item_attributes", "read_vectors"]


def read_vectors(
    path: Path, id_column: str | None = None, vector_column: str | None = None
) -> VectorTable:
    """A vectors file by its suffix: ``.npz`` (arrays ``id_column`` and ``vector_column``,
    default ``ids`` and ``vectors``) or ``.parquet`` (columns, default ``id`` and ``vector``)."""
    if path.suffix == ".npz":
        return read_npz(path, id_column or "ids", vector_column or "vectors")
    if path.suffix != ".parquet":
        raise ImportInputError(f"{path}: vectors come as .npz or .parquet, not {path.suffix!r}")
    return _read_parquet(path, id_column or "id", vector_column or "vector")


def _read_parquet(path: Path, id_column: str, vector_column: str) -> VectorTable:
    t = d._read(path, [id_column, vector_column], [], everything=False, side=False)
    ids = _ids(t, id_column)
    col = t.table.column(vector_column).combine_chunks()
    typ = col.type
    if not (
        pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)
    ):
        raise ImportInputError(
            f"{path}: column {vector_column!r} must hold lists of numbers, found {typ}"
        )
    value_type = typ.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise ImportInputError(
            f"{path}: column {vector_column!r} must hold lists of numbers, found {typ}"
        )
    if col.null_count:
        raise t.error(d._first(pc.is_null(col)), vector_column, "missing vector")
    lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
    if lengths.size and (lengths != lengths[0]).any():
        row = int(np.flatnonzero(lengths != lengths[0])[0])
        raise t.error(
            row, vector_column, f"a vector of {lengths[row]} values, row 1 has {lengths[0]}"
        )
    values = pc.list_flatten(col)
    if values.null_count:
        flat_row = d._first(pc.is_null(values))
        row = int(np.searchsorted(np.cumsum(lengths), flat_row, side="right"))
        raise t.error(row, vector_column, "a missing value (null) in the vector")
    dim = int(lengths[0]) if lengths.size else 0
    with np.errstate(over="ignore"):  # beyond float32: Inf, refused by the importer's checks
        vectors = np.asarray(values.to_numpy(), dtype=np.float32).reshape(len(lengths), dim)
    return VectorTable(path, ids, vectors, (id_column, vector_column), t.where)


def _ids(t: d._Table, name: str) -> np.ndarray:
    """An id column as int64 when it holds integers, else as '<U' strings (as given)."""
    col = t.table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.null_count:
        raise t.error(d._first(pc.is_null(col)), name, "missing id")
    if pa.types.is_integer(col.type):
        try:
            return np.asarray(pc.cast(col, pa.int64()).to_numpy(), dtype=np.int64)
        except pa.ArrowInvalid as e:
            raise d.DataError(f"{t.path}: column {name!r}: {e}") from None
    strings = d._id_column(t, name)
    return np.asarray(strings.to_numpy(zero_copy_only=False).astype(str))


def read_interactions(path: Path) -> Interactions:
    """An interactions file (user_id, item_id, timestamp; other columns ignored)."""
    t = d._read(path, [d.USER_ID, d.ITEM_ID, d.TIMESTAMP], [], everything=False, side=False)
    user_ids, _, user_rows = d._encode(t, d.USER_ID)
    item_ids, _, item_rows = d._encode(t, d.ITEM_ID)
    timestamps = d._numbers(t, d.TIMESTAMP, np.float64)
    return Interactions(path, user_ids, item_ids, user_rows, item_rows, timestamps, t.where)


def read_item_attributes(
    path: Path, item_ids: IdMap, schema: Mapping[str, Kind] | None = None
) -> AttributeTable:
    """An items file's columns aligned with the bundle's item rows (``item_ids``), typed
    as training types them (``schema`` first). An id without an item vector is an error."""
    t = d._read(path, [d.ITEM_ID], [], everything=True, side=True)
    d._check_declared(t, d.ITEM_ID, schema or {}, "item_schema")
    ids, _, file_rows = d._encode(t, d.ITEM_ID)
    d._check_unique(t, d.ITEM_ID, d._as_strings(t, d.ITEM_ID, "integer or string ids"))
    bundle_rows = item_ids.rows(ids.tolist())
    if (bundle_rows < 0).any():
        row = int(np.argmax(bundle_rows[file_rows] < 0))
        raise t.error(row, d.ITEM_ID, f"item {ids[file_rows[row]].item()!r} has no item vector")
    rows = bundle_rows[file_rows]
    keep = np.arange(t.n_rows, dtype=np.int64)
    raw, types = d._load_attributes(t, rows, keep, len(item_ids), schema or {})
    if not raw:
        raise ImportInputError(f"{path}: no attribute columns besides {d.ITEM_ID!r}")
    attributes = ItemAttributes.from_raw(raw, len(item_ids), {c.name: c.kind for c in types})
    logger.info("item attributes: %s", attributes.describe())
    return AttributeTable(path, t.n_rows, attributes)
