"""A bundle from vectors made elsewhere (``recall import``): check them, then write it.

Inputs (each already read: :func:`read_npz` here, Parquet and CSV by the trainer's readers,
:mod:`recall.trainer.import_files`):

- item vectors: a :class:`VectorTable` of ids (n,) and vectors (n, d);
- user vectors, optional (matrix factorization): another one, of the same width;
- interactions, optional (:class:`Interactions`): each user's training items, for
  ``exclude_seen``, the popularity fallback and the user windows of the history rule;
- item attributes, optional (:class:`~recall.index.attributes.ItemAttributes`, aligned
  with the item vectors' rows).

Every check runs before anything is written; a problem is :class:`ImportInputError` naming the
file, the row and what is wrong. The bundle (schema_version 2, no ``user_tower.npz``, the
manifest's ``history_rule`` and ``source``) is then written by
:func:`recall.index.bundle.write_bundle`, staged and renamed, so a failure leaves nothing
under ``ROOT/<id>``. Its users: the user vectors' ids; with no user vectors, the users of the
interactions, each with the history rule's vector of their window
(:mod:`recall.index.item_mean`); with neither, none. ``--metric cosine`` normalizes every
vector here and records it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from recall.index import bundle as b
from recall.index.attributes import ItemAttributes
from recall.index.history import UserHistory
from recall.index.ids import IdMap, id_problem
from recall.index.item_mean import ItemMean, normalize_rows
from recall.index.tower import FLOAT32_MAX

logger = logging.getLogger(__name__)

__all__ = [
    "AttributeTable",
    "ImportInputError",
    "ImportOptions",
    "Interactions",
    "VectorTable",
    "import_bundle",
    "read_npz",
]

Metric = Literal["inner_product", "cosine"]
METRICS: dict[str, Metric] = {"ip": "inner_product", "cosine": "cosine"}
"""``--metric`` spellings and the manifest's names."""


class ImportInputError(ValueError):
    """Input ``recall import`` cannot take; the message names the file, the row, the problem."""


@dataclass(frozen=True)
class VectorTable:
    """Vectors read from one file: ids (n,) int64 or '<U', vectors (n, d) float32, and
    how to name row ``i`` in a message (``where(i)``); checked when made (:func:`check_table`)."""

    path: Path
    ids: npt.NDArray[Any]
    vectors: npt.NDArray[np.float32]
    columns: tuple[str, str]
    where: Callable[[int], str]

    def __post_init__(self) -> None:
        check_table(self)

    def problem(self, row: int, what: str) -> ImportInputError:
        return ImportInputError(
            f"{self.path}: {self.where(row)} (id {self.ids[row].item()!r}): {what}"
        )


@dataclass(frozen=True)
class Interactions:
    """An interactions file as read: ``user_ids`` / ``item_ids`` the distinct ids (typed),
    ``user_rows`` / ``item_rows`` (n,) int32 into them, ``timestamps`` (n,) float64 unix
    seconds, ``where(i)`` names row ``i`` as the file numbers it."""

    path: Path
    user_ids: npt.NDArray[Any]
    item_ids: npt.NDArray[Any]
    user_rows: npt.NDArray[np.int32]
    item_rows: npt.NDArray[np.int32]
    timestamps: npt.NDArray[np.float64]
    where: Callable[[int], str]


@dataclass(frozen=True)
class AttributeTable:
    """Item attributes read from ``path`` (``rows`` rows), aligned with the item vectors."""

    path: Path
    rows: int
    attributes: ItemAttributes


@dataclass(frozen=True)
class ImportOptions:
    """How to write the bundle: the metric, the history rule's window, the time after which
    events are fresh (None: the last interaction, else the import time), the name of what
    made the vectors, and the command line to record."""

    metric: Metric = "inner_product"
    history_length: int = 50
    trained_until: float | None = None
    model: str | None = None
    command: str = "recall import"


def read_npz(path: Path, ids_key: str = "ids", vectors_key: str = "vectors") -> VectorTable:
    """``path`` (an ``.npz``) with arrays ``ids_key`` (n,) and ``vectors_key`` (n, d),
    read with ``allow_pickle=False``: an object array (a pickle) is refused."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in (ids_key, vectors_key) if k not in npz.files]
            if missing:
                raise ImportInputError(
                    f"{path}: no array {', '.join(map(repr, missing))} "
                    f"(has {', '.join(map(repr, npz.files)) or 'none'})"
                )
            ids, vectors = npz[ids_key], npz[vectors_key]
    except ImportInputError:
        raise
    except FileNotFoundError:
        raise ImportInputError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError) as e:  # a pickle, an object array, not a zip
        raise ImportInputError(f"{path}: not a plain numpy archive (.npz): {e}") from None
    if vectors.ndim != 2 or vectors.dtype.kind not in "fiu":
        raise ImportInputError(
            f"{path}: {vectors_key} must be numbers of shape (n, dim), "
            f"got {vectors.dtype} {vectors.shape}"
        )
    return VectorTable(
        path,
        _typed_ids(path, ids_key, ids),
        _float32(path, vectors),
        (ids_key, vectors_key),
        lambda i: f"{vectors_key}[{i}]",
    )


def _typed_ids(path: Path, key: str, ids: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``ids`` as int64 or '<U' (1-D), or :class:`ImportInputError`."""
    if ids.ndim != 1 or ids.dtype.kind not in "iuU":
        raise ImportInputError(f"{path}: {key} must be 1-D integers or strings, got {ids.dtype}")
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        row = int(np.argmax(ids > np.iinfo(np.int64).max))
        raise ImportInputError(f"{path}: {key}[{row}]: id {int(ids[row])} does not fit int64")
    return ids.astype(np.int64) if ids.dtype.kind in "iu" else ids


def _float32(path: Path, vectors: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Vectors as float32 (values beyond float32 become Inf: refused by :func:`check_table`)."""
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(vectors, dtype=np.float32)


def check_table(table: VectorTable) -> None:
    """The checks every vectors file passes: one id per row, ids valid and unique, finite
    float32 values, at least 2 dimensions."""
    n = table.vectors.shape[0]
    if table.ids.shape[0] != n:
        raise ImportInputError(
            f"{table.path}: {table.ids.shape[0]} ids ({table.columns[0]}) but {n} vectors "
            f"({table.columns[1]}): one id per vector"
        )
    if n == 0:
        raise ImportInputError(f"{table.path}: no vectors")
    if table.vectors.shape[1] < 2:
        raise ImportInputError(f"{table.path}: vectors need at least 2 dimensions, got 1")
    if table.ids.dtype.kind == "U":
        for row, value in enumerate(table.ids.tolist()):
            problem = id_problem(value) or ("an id may not be empty" if not value else None)
            if problem:
                raise table.problem(row, problem)
    order = np.argsort(table.ids, kind="stable")
    repeats = np.flatnonzero(table.ids[order][1:] == table.ids[order][:-1])
    if repeats.size:
        first, again = sorted((int(order[repeats[0]]), int(order[repeats[0] + 1])))
        raise table.problem(again, f"duplicate id, first at {table.where(first)}")
    bad = ~(np.abs(table.vectors) <= FLOAT32_MAX).all(axis=1)  # NaN fails it too
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise table.problem(
            row, f"NaN or Inf (or beyond float32) in the vector; {int(bad.sum())} such row(s)"
        )


def _check_cosine(table: VectorTable) -> None:
    zero = ~(np.abs(table.vectors) > 0).any(axis=1)
    if zero.any():
        raise table.problem(int(np.flatnonzero(zero)[0]), "a zero vector has no cosine")


def _file_record(path: Path, rows: int, columns: list[str]) -> b.InputFile:
    entry = b.file_entry(path)
    return b.InputFile(
        path=str(path.resolve()), sha256=entry.sha256, bytes=entry.bytes, rows=rows, columns=columns
    )


@dataclass(frozen=True)
class _Users:
    """The bundle's user side: ids, vectors, seen CSR, history windows."""

    ids: npt.NDArray[Any]
    vectors: npt.NDArray[np.float32]
    seen_indptr: npt.NDArray[np.int64]
    seen_items: npt.NDArray[np.int32]
    history: UserHistory


def _interaction_rows(
    interactions: Interactions, items: IdMap, users: IdMap | None
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[Any]]:
    """(user row, item row) per interaction in the bundle, and the bundle's user ids when
    they come from the interactions (``users`` None). Unknown items, and unknown users when
    the users are given, are :class:`ImportInputError` naming the first such row."""
    item_of = items.rows(interactions.item_ids.tolist())
    _refuse_unknown(interactions, "item", item_of, items.ids)
    if users is None:
        user_ids = interactions.user_ids
        user_of = np.arange(len(user_ids), dtype=np.int64)
    else:
        user_ids = users.ids
        user_of = users.rows(interactions.user_ids.tolist())
        _refuse_unknown(interactions, "user", user_of, users.ids)
    return user_of[interactions.user_rows], item_of[interactions.item_rows], user_ids


def _refuse_unknown(
    interactions: Interactions,
    side: Literal["item", "user"],
    bundle_rows: npt.NDArray[np.int64],
    vector_ids: npt.NDArray[Any],
) -> None:
    """:class:`ImportInputError` naming the first interaction whose ``side`` has no vector:
    ``bundle_rows`` holds the bundle's row of each of the interactions' distinct ``side``
    ids, -1 for an id the bundle lacks; ``vector_ids`` are the vectors' ids, named in the
    message when they are typed otherwise (integers on one side, strings on the other)."""
    missing = np.flatnonzero(bundle_rows < 0)
    if missing.size:
        ids, rows = (
            (interactions.item_ids, interactions.item_rows)
            if side == "item"
            else (interactions.user_ids, interactions.user_rows)
        )
        unknown = int(missing[0])
        row = int(np.argmax(rows == unknown))
        file_ids, vectors_ids = _id_type(ids), _id_type(vector_ids)
        hint = (
            ""
            if file_ids == vectors_ids
            else f" (this file has {file_ids} ids, the {side} vectors {vectors_ids} ids)"
        )
        raise ImportInputError(
            f"{interactions.path}: {interactions.where(row)}: {side} "
            f"{ids[unknown].item()!r} has no {side} vector{hint}"
        )


def _id_type(ids: npt.NDArray[Any]) -> str:
    return "string" if ids.dtype.kind == "U" else "integer"


def _user_side(
    items: VectorTable,
    users: VectorTable | None,
    interactions: Interactions | None,
    rule: ItemMean,
) -> tuple[_Users, npt.NDArray[np.int64]]:
    """The user side of the bundle and the item popularity (n_items,) int64."""
    n_items, length = items.ids.shape[0], rule.spec.history_length
    if interactions is None:
        ids = users.ids if users is not None else np.zeros(0, dtype=np.int64)
        user_rows = item_rows = np.zeros(0, dtype=np.int64)
        timestamps = np.zeros(0, dtype=np.float64)
    else:
        user_map = None if users is None else IdMap(users.ids)
        user_rows, item_rows, ids = _interaction_rows(interactions, IdMap(items.ids), user_map)
        timestamps = interactions.timestamps
    n_users = ids.shape[0]
    # time order per user, ties by item id (the quality protocol's order)
    item_rank = np.argsort(np.argsort(items.ids, kind="stable"), kind="stable")
    order = np.lexsort((item_rank[item_rows], timestamps, user_rows))
    user_rows, item_rows, timestamps = user_rows[order], item_rows[order], timestamps[order]
    counts = np.bincount(user_rows, minlength=n_users)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    window = np.arange(len(user_rows)) >= np.repeat(indptr[1:] - np.minimum(counts, length), counts)
    window_indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.minimum(counts, length), out=window_indptr[1:])
    history = UserHistory(
        indptr=window_indptr,
        items=item_rows[window].astype(np.int32),
        timestamps=timestamps[window].astype(np.float64),
        categorical=np.zeros((n_users, 0), dtype=np.int64),
        numeric=np.zeros((n_users, 0), dtype=np.float32),
    )
    if users is not None:
        vectors = users.vectors
    else:
        windows = [history.window(u)[0] for u in range(n_users)]
        vectors = (
            rule.encode(windows) if n_users else np.zeros((0, rule.items.shape[1]), np.float32)
        )
    pairs = np.unique(user_rows * n_items + item_rows)  # each (user, item) once, sorted
    seen_indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(pairs // n_items, minlength=n_users), out=seen_indptr[1:])
    popularity = np.bincount(item_rows, minlength=n_items).astype(np.int64)
    users_out = _Users(ids, vectors, seen_indptr, (pairs % n_items).astype(np.int32), history)
    return users_out, popularity


def import_bundle(
    root: Path,
    items: VectorTable,
    users: VectorTable | None = None,
    interactions: Interactions | None = None,
    attributes: AttributeTable | None = None,
    options: ImportOptions | None = None,
) -> Path:
    """Check every input, then write the bundle under ``root``; return its directory."""
    opts = options or ImportOptions()
    if not 1 <= opts.history_length <= 10_000:
        raise ImportInputError(f"--history-length must be in [1, 10000], got {opts.history_length}")
    for table in (items, users):
        if table is not None and opts.metric == "cosine":
            _check_cosine(table)
    dim = items.vectors.shape[1]
    if users is not None and users.vectors.shape[1] != dim:
        raise ImportInputError(
            f"{users.path}: user vectors have {users.vectors.shape[1]} dimensions, the item "
            f"vectors of {items.path} {dim}: both must have the same"
        )
    normalize = opts.metric == "cosine"
    item_vectors = normalize_rows(items.vectors) if normalize else items.vectors
    if users is not None and normalize:
        users = replace(users, vectors=normalize_rows(users.vectors))
    rule = ItemMean(item_vectors, opts.history_length, normalize)
    user_side, popularity = _user_side(items, users, interactions, rule)
    trained_until = opts.trained_until
    if trained_until is None:
        events = np.zeros(0) if interactions is None else interactions.timestamps
        trained_until = float(events.max()) if events.size else time.time()
    if user_side.history.timestamps.size and user_side.history.timestamps.max() > trained_until:
        raise ImportInputError(f"--trained-until {trained_until} is before the last interaction")
    arrays: dict[str, np.ndarray | dict[str, np.ndarray]] = {
        b.ITEM_IDS: items.ids,
        b.ITEM_VECTORS: item_vectors,
        b.USER_IDS: user_side.ids,
        b.USER_VECTORS: np.ascontiguousarray(user_side.vectors, dtype=np.float32),
        b.USER_SEEN: {"indptr": user_side.seen_indptr, "indices": user_side.seen_items},
        b.ITEM_POPULARITY: popularity,
        b.USER_HISTORY: user_side.history.arrays(),
    }
    if attributes is not None:
        arrays[b.ITEM_ATTRIBUTES] = attributes.attributes.arrays()
    inputs = {"items": _file_record(items.path, len(items.ids), list(items.columns))}
    if users is not None:
        inputs["users"] = _file_record(users.path, len(users.ids), list(users.columns))
    if interactions is not None:
        inputs["interactions"] = _file_record(
            interactions.path, len(interactions.timestamps), ["user_id", "item_id", "timestamp"]
        )
    if attributes is not None:
        inputs["item_attributes"] = _file_record(
            attributes.path, attributes.rows, ["item_id", *attributes.attributes.names]
        )
    source = b.ImportSource(
        model=opts.model, command=opts.command, inputs=inputs, normalized=normalize
    )
    bundle = b.write_bundle(
        root,
        b.new_bundle_id(),
        arrays,
        dim=dim,
        counts=b.Counts(
            users=len(user_side.ids),
            items=len(items.ids),
            interactions=0 if interactions is None else len(interactions.timestamps),
        ),
        trainer={},
        trained_until=trained_until,
        item_attributes=None if attributes is None else attributes.attributes.schema(),
        metric=opts.metric,
        history_rule=b.HistoryRule(history_length=opts.history_length),
        source=source,
    )
    logger.info(
        "imported %d items%s (%s, dim %d) into %s",
        len(items.ids),
        f", {len(user_side.ids)} users" if len(user_side.ids) else " (no users)",
        opts.metric,
        dim,
        bundle,
    )
    return bundle
