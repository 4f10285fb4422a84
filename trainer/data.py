"""Load an input data set (interactions, optional users and items) into dense arrays.

The input is a directory (README, "Input data")::

    interactions.csv   user_id, item_id, timestamp [, rating]   (other columns ignored)
    users.csv          user_id, feature columns...               (optional)
    items.csv          item_id [, genres "A|B|C"] [, attributes...]  (optional)

Each file may be given as ``<stem>.parquet`` instead (the Parquet file wins when both
exist). Every items column other than the id is kept, typed numeric / categorical / multi
by :mod:`recall.index.columns` (``Dataset.item_attributes``, exported into the bundle as item
attributes); ``genres`` also feeds the user tower. users columns are typed the same way.
CSV columns are read as strings by pyarrow and validated here, so that every
problem is reported as a :class:`DataError` naming the file, the line (the header is
line 1; Parquet files give the 1-based row) and the column. All per-row work runs in
pyarrow.compute / numpy over whole columns, never in Python loops, and no '<U' array of
all rows is built: 2e7 interactions load in well under a minute.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recall.index.columns import KINDS, USER_KINDS, ColumnType, Kind, type_column
from recall.index.ids import CANONICAL_INT_PATTERN, MAX_ID_BYTES, id_problem

__all__ = ["DataError", "Dataset", "load_dataset"]

logger = logging.getLogger(__name__)

USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
GENRES = "genres"
GENRE_SEPARATOR = "|"

# A decimal number as pyarrow's string -> float64 cast reads it, and the spellings of
# inf / nan it also accepts; only used to point at the first value that failed to parse.
_NUMBER_PATTERN = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_SPECIAL_PATTERN = r"^[+-]?(inf|infinity|nan)$"
_CSV_BLOCK_SIZE = 16 << 20  # bytes per parallel CSV block


class DataError(ValueError):
    """Bad input data; the message names the file, the 1-based line number (header = line 1)
    and the column."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: ids mapped to dense rows, interactions as parallel arrays.

    ``user_ids`` / ``item_ids`` are sorted; row ``i`` is ``ids[i]``. They are int64 when
    every id of the column is a canonical integer (``CANONICAL_INT_PATTERN``) that fits
    int64, otherwise ``'<U'`` strings kept exactly as given. The catalog is every item that
    appears in the interactions; users/items only listed in users/items files are dropped.
    """

    user_ids: npt.NDArray[Any]  # (n_users,) int64 or '<U', sorted
    item_ids: npt.NDArray[Any]  # (n_items,) int64 or '<U', sorted
    user_rows: npt.NDArray[np.int32]  # (n_interactions,) row into user_ids
    item_rows: npt.NDArray[np.int32]  # (n_interactions,) row into item_ids
    timestamps: npt.NDArray[np.float64]  # (n_interactions,)
    ratings: npt.NDArray[np.float32] | None  # (n_interactions,) when a rating column exists
    # users.csv columns except user_id, each (n_users,), typed (user_columns): float64
    # (NaN = blank, not a number, no row) when numeric, else '<U' as given ("" = no row).
    user_features: dict[str, npt.NDArray[Any]]
    genre_vocab: npt.NDArray[np.str_]  # (n_genres,) sorted genre names
    item_genre_indptr: npt.NDArray[np.int64]  # (n_items + 1,) CSR over item rows
    item_genre_indices: npt.NDArray[np.int32]  # (nnz,) into genre_vocab, sorted per item
    source: Path  # the input directory
    # items.csv columns except item_id (genres included), each (n_items,), typed
    # (item_columns): float64 (NaN = missing) when numeric, else '<U' ("" = blank / no row).
    item_attributes: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    item_columns: tuple[ColumnType, ...] = ()  # how each items / users column was typed
    user_columns: tuple[ColumnType, ...] = ()

    @property
    def n_users(self) -> int:
        """Number of distinct users in the interactions."""
        return int(self.user_ids.shape[0])

    @property
    def n_items(self) -> int:
        """Number of distinct items in the interactions (the catalog)."""
        return int(self.item_ids.shape[0])

    @property
    def n_interactions(self) -> int:
        """Number of interaction rows."""
        return int(self.user_rows.shape[0])

    def item_genres(self, row: int) -> npt.NDArray[np.str_]:
        """Genre names of item ``row`` (sorted)."""
        lo, hi = self.item_genre_indptr[row], self.item_genre_indptr[row + 1]
        return self.genre_vocab[self.item_genre_indices[lo:hi]]


@dataclass(frozen=True, eq=False)
class _Table:
    """One input file read into Arrow, plus what is needed to word an error."""

    path: Path
    is_csv: bool
    table: Any  # pa.Table

    @property
    def n_rows(self) -> int:
        return int(self.table.num_rows)

    def where(self, row: int) -> str:
        """Position of 0-based data row ``row`` as the user sees it in the file."""
        return f"line {row + 2}" if self.is_csv else f"row {row + 1}"

    def error(self, row: int, column: str, what: str) -> DataError:
        return DataError(f"{self.path}: {self.where(row)}, column {column!r}: {what}")


# ----------------------------------------------------------------------------- reading


def _locate(directory: Path, stem: str) -> Path | None:
    """``<stem>.parquet`` or ``<stem>.csv`` in ``directory``, or None."""
    parquet, csv_path = directory / f"{stem}.parquet", directory / f"{stem}.csv"
    if parquet.is_file():
        if csv_path.is_file():
            logger.warning("%s and %s both exist: reading the Parquet file", parquet, csv_path)
        return parquet
    return csv_path if csv_path.is_file() else None


def _csv_header(path: Path) -> list[str]:
    """Column names from the first record of a CSV file."""
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the header line: {exc}") from exc
    if not header:
        raise DataError(f"{path}: line 1 (the header) is empty")
    return header


def _read(
    path: Path, required: list[str], optional: list[str], *, everything: bool, side: bool
) -> _Table:
    """Read the ``required`` + present ``optional`` columns (or all, when ``everything``).

    CSV columns come back as strings (blank = ""); Parquet columns keep their types.
    Side files (users, items) may hold quoted newlines; interactions may not, which keeps
    pyarrow's parallel reader. Line numbers in errors count records: they are exact unless
    the file holds blank lines (skipped) or quoted newlines.
    """
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    if size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    is_csv = path.suffix == ".csv"
    if is_csv:
        names = _csv_header(path)
    else:
        try:
            names = list(pq.read_schema(path).names)
        except (OSError, pa.ArrowException) as exc:
            raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(map(repr, missing))} "
            f"(found: {', '.join(map(repr, names))})"
        )
    wanted = list(names) if everything else [c for c in names if c in required + optional]
    dups = sorted(c for c, n in Counter(names).items() if n > 1 and c in wanted)
    if dups:
        raise DataError(f"{path}: line 1: duplicate column name(s) {', '.join(map(repr, dups))}")
    try:
        if is_csv:
            table = pacsv.read_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK_SIZE),
                parse_options=pacsv.ParseOptions(newlines_in_values=side),
                convert_options=pacsv.ConvertOptions(
                    column_types={c: pa.string() for c in wanted},
                    include_columns=wanted,
                    strings_can_be_null=False,
                ),
            )
        else:
            table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot parse: {exc}") from exc
    if table.num_rows == 0:
        what = "has a header but no data rows" if is_csv else "has no rows"
        raise DataError(f"{path}: {what}")
    return _Table(path, is_csv, table)


# -------------------------------------------------------------------------- validation


def _first(mask: Any) -> int:
    """Index of the first True of a boolean Arrow array / chunked array (nulls = False)."""
    arr = np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
    return int(np.flatnonzero(arr)[0])


def _any(mask: Any) -> bool:
    return bool(pc.any(mask).as_py())


def _all(mask: Any) -> bool:
    return bool(pc.all(mask).as_py())


def _as_strings(t: _Table, name: str, what: str) -> Any:
    """Column ``name`` as an Arrow string column: integers in canonical decimal form."""
    col = t.table.column(name)
    typ = col.type
    if pa.types.is_dictionary(typ):
        col, typ = col.cast(typ.value_type), typ.value_type
    if pa.types.is_integer(typ):
        return pc.cast(col, pa.string())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return col if pa.types.is_string(typ) else pc.cast(col, pa.string())
    raise DataError(f"{t.path}: column {name!r} must hold {what}, found Arrow type {typ}")


def _id_column(t: _Table, name: str) -> Any:
    """Column ``name`` as validated id strings: no null, no blank (whitespace only) value,
    none over ``MAX_ID_BYTES`` bytes of UTF-8 or holding a NUL (the service refuses both)."""
    col = _as_strings(t, name, "integer or string ids")
    if col.null_count:
        raise t.error(_first(pc.is_null(col)), name, "missing id")
    # Checking the unique values is cheap; the full-column mask only runs to find the line.
    uniq = pc.unique(col)
    if _any(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(uniq)), 0)):
        blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
        raise t.error(_first(blank), name, "blank id")
    if _any(_refused_ids(uniq)):
        row = _first(_refused_ids(col))
        raise t.error(row, name, str(id_problem(col[row].as_py())))
    return col


def _refused_ids(col: Any) -> Any:
    """Bool mask of the string ids in ``col`` that :func:`recall.index.ids.id_problem` refuses."""
    too_long = pc.greater(pc.binary_length(col), MAX_ID_BYTES)
    return pc.or_(too_long, pc.match_substring(col, "\x00"))


def _sorted_ids(uniq: Any) -> tuple[npt.NDArray[Any], Any]:
    """Sorted '<U' ids of the unique id strings ``uniq``, and ``uniq`` in that order."""
    # Arrow sorts UTF-8 bytewise, which is code point order, the same as numpy '<U'.
    order = pc.array_sort_indices(uniq)
    ids = np.asarray(uniq.take(order).to_numpy(zero_copy_only=False).astype(str))
    return ids, uniq.take(order)


def _canonical_ints(col: Any) -> Any:
    """``col`` as an int64 Arrow column when every value is a canonical int64, else None."""
    typ = col.type
    if not (pa.types.is_integer(typ) or pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        return None
    try:
        ints = pc.cast(col, pa.int64())  # fails fast on the first non-integer
    except pa.ArrowInvalid:
        return None
    if pa.types.is_integer(typ):
        return ints
    # Arrow also reads "007", "-0" and "0x1F"; such ids stay strings, exactly as given.
    return ints if _all(pc.match_substring_regex(col, CANONICAL_INT_PATTERN)) else None


def _encode(t: _Table, name: str) -> tuple[npt.NDArray[Any], Any, npt.NDArray[np.int32]]:
    """Encode id column ``name``: sorted typed ids ``(n,)``, their id strings (an Arrow
    string array in the same order, to match side files against) and each row's id row
    ``(n_rows,) int32``."""
    col = t.table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.null_count:
        raise t.error(_first(pc.is_null(col)), name, "missing id")
    ints = _canonical_ints(col)
    if ints is not None:
        encoded = pc.dictionary_encode(ints.combine_chunks())  # one hash pass
        values = np.asarray(encoded.dictionary.to_numpy(), dtype=np.int64)
        order = np.argsort(values)
        rank = np.empty_like(order)
        rank[order] = np.arange(order.shape[0])
        ids = values[order]
        rows = rank[np.asarray(encoded.indices.to_numpy(), dtype=np.int64)]
        return ids, pc.cast(pa.array(ids), pa.string()), rows.astype(np.int32)
    col = _id_column(t, name)
    ids, keys = _sorted_ids(pc.unique(col))
    rows = pc.index_in(col, value_set=keys).to_numpy()
    return ids, keys, np.ascontiguousarray(rows, dtype=np.int32)


def _check_unique(t: _Table, name: str, col: Any) -> None:
    """Raise on the first repeated value of id column ``col`` (users.csv / items.csv)."""
    uniq = pc.unique(col)
    if len(uniq) == len(col):
        return
    codes = np.asarray(pc.index_in(col, value_set=uniq).to_numpy(), dtype=np.int64)
    _, first_rows = np.unique(codes, return_index=True)
    is_first = np.zeros(codes.shape[0], dtype=bool)
    is_first[first_rows] = True
    row = int(np.flatnonzero(~is_first)[0])
    first = int(np.flatnonzero(codes == codes[row])[0])
    value = col[row].as_py()
    raise t.error(row, name, f"duplicate id {value!r} (first on {t.where(first)})")


def _numbers(t: _Table, name: str, dtype: type[np.floating[Any]]) -> npt.NDArray[Any]:
    """Column ``name`` as finite numbers of ``dtype``; raise on blank/bad/non-finite values.

    Parquet timestamp columns are converted to seconds since the epoch.
    """
    col = t.table.column(name)
    typ = col.type
    if pa.types.is_dictionary(typ):
        col, typ = col.cast(typ.value_type), typ.value_type
    if col.null_count:
        raise t.error(_first(pc.is_null(col)), name, "missing value")
    if pa.types.is_timestamp(typ):
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}[typ.unit]
        values = pc.divide(pc.cast(pc.cast(col, pa.int64()), pa.float64()), scale)
    elif pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        values = pc.cast(col, pa.float64())
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        values = _parse_numbers(t, name, col)
    else:
        raise DataError(f"{t.path}: column {name!r} must hold numbers, found Arrow type {typ}")
    with np.errstate(over="ignore"):  # too large for float32: inf, reported below
        out = np.asarray(values.to_numpy(), dtype=dtype)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        row = int(bad[0])
        raise t.error(row, name, f"non-finite value {col[row].as_py()!r}")
    return out


def _parse_numbers(t: _Table, name: str, col: Any) -> Any:
    """String column -> float64 Arrow column; on failure, name the first bad value."""
    try:
        return pc.cast(col, pa.float64())
    except pa.ArrowInvalid:
        pass
    trimmed = pc.utf8_trim_whitespace(col)  # tolerate " 5" before giving up
    try:
        return pc.cast(trimmed, pa.float64())
    except pa.ArrowInvalid as exc:
        ok = pc.or_(
            pc.match_substring_regex(trimmed, _NUMBER_PATTERN),
            pc.match_substring_regex(trimmed, _SPECIAL_PATTERN, ignore_case=True),
        )
        if not _any(pc.invert(ok)):
            raise DataError(f"{t.path}: column {name!r}: {exc}") from exc
        row = _first(pc.invert(ok))
        value = col[row].as_py()
        what = "blank value" if not value.strip() else f"not a number: {value!r}"
        raise t.error(row, name, what) from exc


# ----------------------------------------------------------------------------- loading


def _match(
    t: _Table, name: str, ids: npt.NDArray[Any], keys: Any
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Validated, unique id column ``name`` of a side file matched against the dataset's
    ``ids`` (typed, sorted) / ``keys`` (their id strings).

    Returns the dataset row of every file row ``(n_file_rows,) int64`` (-1 = not in the
    interactions) and the indices of the file rows that matched.
    """
    col = t.table.column(name)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.null_count:
        raise t.error(_first(pc.is_null(col)), name, "missing id")
    ints = _canonical_ints(col) if ids.dtype.kind == "i" else None
    if ints is not None:  # int ids on both sides: match as int64, cheaper than strings
        col, value_set = ints, pa.array(ids)
    else:
        col, value_set = _id_column(t, name), keys
    _check_unique(t, name, col)
    rows = pc.fill_null(pc.index_in(col, value_set=value_set), -1).to_numpy()
    rows = np.asarray(rows, dtype=np.int64)
    keep = np.flatnonzero(rows >= 0)
    ignored = t.n_rows - keep.size
    if keep.size == 0:
        logger.warning("%s: none of its %d ids appears in the interactions", t.path, t.n_rows)
    elif ignored:
        logger.info("%s: ignoring %d id(s) not in the interactions", t.path, ignored)
    return rows, keep


def _check_declared(t: _Table, id_column: str, declared: Mapping[str, Kind], what: str) -> None:
    """Raise when the declared schema ``what`` names a column the file does not have."""
    columns = [c for c in t.table.column_names if c != id_column]
    unknown = [name for name in declared if name not in columns]
    if unknown:
        raise DataError(
            f"{t.path}: {what} names column(s) {', '.join(map(repr, unknown))} that the file "
            f"does not have (columns: {', '.join(map(repr, columns)) or 'none'})"
        )


def _aligned(
    values: npt.NDArray[Any], rows: npt.NDArray[np.int64], keep: npt.NDArray[np.int64], n: int
) -> npt.NDArray[Any]:
    """File column ``values`` moved to dataset rows, shape (n,): NaN / "" where no row."""
    if values.dtype == np.float64:
        column = np.full(n, np.nan, dtype=np.float64)
    else:
        column = np.zeros(n, dtype=values.dtype if values.itemsize else "<U1")
    column[rows[keep]] = values[keep]
    return column


def _load_users(
    path: Path, ids: npt.NDArray[Any], keys: Any, schema: Mapping[str, Kind]
) -> tuple[dict[str, npt.NDArray[Any]], tuple[ColumnType, ...]]:
    """users file -> {feature: (n_users,) array} aligned with the dataset's user rows,
    typed by :func:`recall.index.columns.type_column` (declared ``schema`` first), and the types."""
    t = _read(path, [USER_ID], [], everything=True, side=True)
    _check_declared(t, USER_ID, schema, "user_schema")
    rows, keep = _match(t, USER_ID, ids, keys)
    features: dict[str, npt.NDArray[Any]] = {}
    types: list[ColumnType] = []
    for name in t.table.column_names:
        if name == USER_ID:
            continue
        if not name.strip():
            logger.warning("%s: skipping a column with a blank name", path)
            continue
        raw = _aligned(_raw_attribute(t.table.column(name)), rows, keep, ids.shape[0])
        features[name], typed = type_column(
            name, raw, schema.get(name), USER_KINDS, where=str(path)
        )
        types.append(typed)
    return features, tuple(types)


def _raw_attribute(col: Any) -> npt.NDArray[Any]:
    """One items-file column as read, shape (n_rows_in_file,): float64 (NaN = null) for
    numeric / boolean Arrow types, else strings ("" = null; lists joined with ``|``)."""
    typ = col.type
    if pa.types.is_dictionary(typ):
        col, typ = col.cast(typ.value_type), typ.value_type
    if (
        pa.types.is_integer(typ)
        or pa.types.is_floating(typ)
        or pa.types.is_decimal(typ)
        or pa.types.is_boolean(typ)
    ):
        return np.asarray(pc.fill_null(pc.cast(col, pa.float64()), np.nan).to_numpy())
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        col = pc.binary_join(pc.cast(col, pa.list_(pa.string())), GENRE_SEPARATOR)
    text = pc.fill_null(pc.cast(col, pa.string()), "").to_numpy(zero_copy_only=False)
    return np.asarray(text.astype(str))


def _load_attributes(
    t: _Table,
    rows: npt.NDArray[np.int64],
    keep: npt.NDArray[np.int64],
    n_items: int,
    schema: Mapping[str, Kind],
) -> tuple[dict[str, npt.NDArray[Any]], tuple[ColumnType, ...]]:
    """Every column of the items file except the id, aligned with the dataset's item rows
    and typed by :func:`recall.index.columns.type_column` (declared ``schema`` first), and the
    types."""
    out: dict[str, npt.NDArray[Any]] = {}
    types: list[ColumnType] = []
    for name in t.table.column_names:
        if name == ITEM_ID:
            continue
        if not name.strip():
            logger.warning("%s: skipping a column with a blank name", t.path)
            continue
        try:
            values = _raw_attribute(t.table.column(name))
        except (pa.ArrowException, ValueError) as exc:
            logger.warning("%s: skipping column %r (not readable as text: %s)", t.path, name, exc)
            continue
        raw = _aligned(values, rows, keep, n_items)
        out[name], typed = type_column(name, raw, schema.get(name), KINDS, where=str(t.path))
        types.append(typed)
    return out, tuple(types)


def _load_items(
    path: Path, ids: npt.NDArray[Any], keys: Any, schema: Mapping[str, Kind]
) -> tuple[
    npt.NDArray[np.str_],
    npt.NDArray[np.int64],
    npt.NDArray[np.int32],
    dict[str, npt.NDArray[Any]],
    tuple[ColumnType, ...],
]:
    """items file -> (genre_vocab, item_genre_indptr, item_genre_indices) a CSR over items,
    the typed attribute columns and their types."""
    t = _read(path, [ITEM_ID], [], everything=True, side=True)
    _check_declared(t, ITEM_ID, schema, "item_schema")
    rows, keep = _match(t, ITEM_ID, ids, keys)
    attributes, types = _load_attributes(t, rows, keep, ids.shape[0], schema)
    return (*_genres(t, rows, keep, ids.shape[0]), attributes, types)


def _genres(
    t: _Table, rows: npt.NDArray[np.int64], keep: npt.NDArray[np.int64], n_items: int
) -> tuple[npt.NDArray[np.str_], npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """The genres column of the items file as (genre_vocab, indptr, indices)."""
    empty_vocab = np.zeros(0, dtype="<U1")
    if GENRES not in t.table.column_names or keep.size == 0:
        indptr = np.zeros(n_items + 1, dtype=np.int64)
        return empty_vocab, indptr, np.zeros(0, dtype=np.int32)
    genres = _as_strings(t, GENRES, f"{GENRE_SEPARATOR!r}-separated strings")
    genres = pc.fill_null(genres.combine_chunks(), "").take(pa.array(keep))
    lists = pc.split_pattern(genres, GENRE_SEPARATOR)
    parent = np.asarray(pc.list_parent_indices(lists).to_numpy(), dtype=np.int64)
    tokens = pc.utf8_trim_whitespace(pc.list_flatten(lists))
    nonempty = np.asarray(pc.greater(pc.utf8_length(tokens), 0).to_numpy(zero_copy_only=False))
    tokens, parent = tokens.filter(pa.array(nonempty)), parent[nonempty]
    if len(tokens) == 0:
        return empty_vocab, np.zeros(n_items + 1, dtype=np.int64), np.zeros(0, dtype=np.int32)
    uniq = pc.unique(tokens)
    vocab_arrow = uniq.take(pc.array_sort_indices(uniq))
    n_genres = len(vocab_arrow)
    genre = np.asarray(pc.index_in(tokens, value_set=vocab_arrow).to_numpy(), dtype=np.int64)
    item = rows[keep][parent]
    pairs = np.unique(item * n_genres + genre)  # sorted by (item, genre), repeats dropped
    item, genre = pairs // n_genres, pairs % n_genres
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(item, minlength=n_items), out=indptr[1:])
    vocab = np.asarray(vocab_arrow.to_numpy(zero_copy_only=False).astype(str))
    return vocab, indptr, genre.astype(np.int32)


def _side_file(directory: Path, stem: str, schema: Mapping[str, Kind], what: str) -> Path | None:
    """``<stem>.parquet`` / ``.csv`` in ``directory``; a DataError when ``schema`` (named
    ``what``) declares columns of a file that does not exist."""
    path = _locate(directory, stem)
    if path is None and schema:
        raise DataError(f"{directory}: {what} declares column(s) but there is no {stem}.csv")
    return path


def load_dataset(
    directory: Path,
    item_schema: Mapping[str, Kind] | None = None,
    user_schema: Mapping[str, Kind] | None = None,
) -> Dataset:
    """Load ``directory`` (interactions + optional users/items, CSV or Parquet).

    Side-file columns are typed by :func:`recall.index.columns.type_column`: the declared
    ``item_schema`` / ``user_schema`` (``{column: kind}``) first, else its inference rule.
    Raises DataError for anything wrong with the input, naming file, line and column, and
    for a schema naming a column the file does not have.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    path = _locate(directory, "interactions")
    if path is None:
        raise DataError(f"{directory / 'interactions.csv'}: missing file (no .csv or .parquet)")
    t = _read(path, [USER_ID, ITEM_ID, TIMESTAMP], [RATING], everything=False, side=False)
    # pyarrow.compute releases the GIL: encode both id columns at once.
    with ThreadPoolExecutor(max_workers=2) as pool:
        users, items = pool.submit(_encode, t, USER_ID), pool.submit(_encode, t, ITEM_ID)
        user_ids, user_keys, user_rows = users.result()  # a user_id error is reported first
        item_ids, item_keys, item_rows = items.result()
    timestamps = _numbers(t, TIMESTAMP, np.float64)
    ratings = _numbers(t, RATING, np.float32) if RATING in t.table.column_names else None
    del t

    users_path = _side_file(directory, "users", user_schema or {}, "user_schema")
    features: dict[str, npt.NDArray[Any]] = {}
    user_columns: tuple[ColumnType, ...] = ()
    if users_path is not None:
        features, user_columns = _load_users(users_path, user_ids, user_keys, user_schema or {})
    items_path = _side_file(directory, "items", item_schema or {}, "item_schema")
    attributes: dict[str, npt.NDArray[Any]] = {}
    item_columns: tuple[ColumnType, ...] = ()
    if items_path is None:
        vocab = np.zeros(0, dtype="<U1")
        indptr = np.zeros(len(item_ids) + 1, dtype=np.int64)
        indices = np.zeros(0, dtype=np.int32)
    else:
        vocab, indptr, indices, attributes, item_columns = _load_items(
            items_path, item_ids, item_keys, item_schema or {}
        )

    ds = Dataset(
        user_ids=user_ids,
        item_ids=item_ids,
        user_rows=user_rows,
        item_rows=item_rows,
        timestamps=timestamps,
        ratings=ratings,
        user_features=features,
        genre_vocab=vocab,
        item_genre_indptr=indptr,
        item_genre_indices=indices,
        source=directory,
        item_attributes=attributes,
        item_columns=item_columns,
        user_columns=user_columns,
    )
    logger.info(
        "loaded %s: %d interactions, %d users (%s ids), %d items (%s ids), %d user "
        "feature(s), %d genre(s), %d item attribute(s)",
        directory,
        ds.n_interactions,
        ds.n_users,
        "int" if ds.user_ids.dtype.kind == "i" else "str",
        ds.n_items,
        "int" if ds.item_ids.dtype.kind == "i" else "str",
        len(features),
        len(vocab),
        len(attributes),
    )
    return ds
