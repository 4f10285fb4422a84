"""Mapping between external ids and dense rows (numpy only).

An :class:`IdMap` holds the external ids of a bundle (``item_ids.npy``, ``user_ids.npy``)
and answers "which row is this id?" for single ids and for batches. It keeps no Python dict:
a sorted view of the ids plus ``np.searchsorted`` costs a few bytes per id, even at 10^7 ids.

Ids are typed: an int64 map holds integer ids, a ``'<U'`` map holds string ids. Lookups
never raise on odd input; a value of the wrong kind simply matches nothing.

Every id that enters (HTTP requests, events, availability, the trainer's input data) is
at most :data:`MAX_ID_BYTES` bytes of UTF-8 and holds no NUL (:func:`id_problem` says
why one is refused): numpy's fixed-width strings drop trailing NULs, so ``"723\\x00"``
would name item ``"723"`` in a lookup and another id in the state store. A lookup costs
O(len(id)) per id at the map's own width: a query longer than the map's widest id cannot
match, and is never widened to (nor widens the map to) its length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["CANONICAL_INT_PATTERN", "MAX_ID_BYTES", "ExternalId", "IdMap", "id_problem"]

#: A canonical decimal integer: no sign on zero, no leading zeros, no "+", no spaces.
#: The data loader types an id column as int64 exactly when every id matches this.
CANONICAL_INT_PATTERN = r"^(0|-?[1-9][0-9]*)$"
_CANONICAL_INT = re.compile(r"(0|-?[1-9][0-9]*)")  # used with fullmatch

ExternalId = int | str
"""An external id exactly as the bundle types it (int64 or str): the one id type of the
server (the state store, the recall core); 7 and ``"7"`` are different ids.
"""

MAX_ID_BYTES = 256
"""The longest id accepted anywhere, in bytes of its UTF-8 encoding."""


def id_problem(value: str) -> str | None:
    """Why string id ``value`` is refused (longer than :data:`MAX_ID_BYTES` bytes of
    UTF-8, or holding a NUL), or None when it is acceptable. O(len(value))."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        return f"an id is at most {MAX_ID_BYTES} bytes of UTF-8, got {size} bytes"
    if "\x00" in value:
        return "an id may not contain NUL (U+0000)"
    return None


_INT64_MIN = int(np.iinfo(np.int64).min)
_INT64_MAX = int(np.iinfo(np.int64).max)


def _int_key(value: object) -> int | None:
    """The int64 key of one query value for an int map, or None when it cannot match."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        key = int(value)
    elif isinstance(value, str):
        if len(value) > 20 or _CANONICAL_INT.fullmatch(value) is None:
            return None
        key = int(value)
    else:
        return None
    return key if _INT64_MIN <= key <= _INT64_MAX else None


def _str_key(value: object) -> str | None:
    """The string key of one query value for a str map, or None when it cannot match."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    return None


_SORTED_LOOKUP_FROM = 512
"""From this many ids on, queries are sorted before the binary search, which then walks
memory in order (10,000 random ids in a 1M-id map: 0.6 ms instead of 1.8 ms)."""


class IdMap:
    """External ids <-> dense rows.

    ``ids`` is a 1-D array of unique ids, int64 or unicode (``'<U'``), never object dtype;
    row ``i`` is ``ids[i]``. Other signed/unsigned integer arrays are converted to int64
    when every value fits. The array is kept as a read-only view (no copy); when it is
    already sorted (as the data loader writes it) no sorted copy is made either. The caller
    must not modify the array afterwards.
    """

    ids: npt.NDArray[Any]

    def __init__(self, ids: npt.NDArray[Any]) -> None:
        """Raise ValueError when ``ids`` is not 1-D, has object/other dtype or duplicates."""
        if not isinstance(ids, np.ndarray):
            raise ValueError(f"ids must be a numpy array, got {type(ids).__name__}")
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        kind = ids.dtype.kind
        if kind in "iu":
            if kind == "u" and ids.size and int(ids.max()) > _INT64_MAX:
                raise ValueError("unsigned ids do not fit int64")
            if ids.dtype != np.int64:
                ids = ids.astype(np.int64)
        elif kind != "U":
            raise ValueError(f"ids must be int64 or unicode ('<U'), got dtype {ids.dtype}")
        view = ids.view()
        view.flags.writeable = False
        self.ids = view
        self._is_int = kind in "iu"

        order: npt.NDArray[np.int64] | None
        if view.size < 2 or bool(np.all(view[1:] > view[:-1])):
            order, sorted_ids = None, view  # already strictly increasing: unique, no copy
        else:
            order = np.argsort(view, kind="stable").astype(np.int64, copy=False)
            sorted_ids = view[order]
            dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
            if dup.size:
                raise ValueError(
                    f"ids must be unique: {sorted_ids[dup[0]]!r} appears more than once "
                    f"({dup.size} duplicate(s) in all)"
                )
            sorted_ids.flags.writeable = False
        self._order = order
        self._sorted = sorted_ids
        # str maps: queries are keyed at the map's own width (characters of its widest id)
        self._width = 0 if self._is_int else view.dtype.itemsize // 4

    def __len__(self) -> int:
        """Number of ids (= rows)."""
        return int(self.ids.shape[0])

    def __repr__(self) -> str:
        kind = "int64" if self._is_int else "str"
        return f"IdMap(n={len(self)}, kind={kind})"

    @property
    def is_int(self) -> bool:
        """True for an int64 map, False for a string map."""
        return self._is_int

    def _keys(self, ids: Iterable[object] | npt.NDArray[Any]) -> tuple[npt.NDArray[Any], Any]:
        """Query keys in this map's dtype, plus a bool mask of the ones that can match."""
        if isinstance(ids, np.ndarray):
            arr = ids.reshape(-1)
            kind = arr.dtype.kind
            if self._is_int and kind == "i":
                return arr.astype(np.int64, copy=False), True
            if self._is_int and kind == "u":
                ok = arr <= _INT64_MAX
                return np.where(ok, arr, 0).astype(np.int64), ok
            if not self._is_int and kind in "iuU":
                return self._at_width(arr if kind == "U" else arr.astype(str))
            values: list[object] = arr.tolist()
        elif isinstance(ids, str | bytes):
            raise TypeError("rows() takes a sequence of ids; use row() for a single id")
        else:
            values = list(ids)
        if self._is_int and all(type(v) is int for v in values):  # bools are not ids
            try:  # the common case, vectorized: plain ints within int64
                return np.asarray(values, dtype=np.int64), True
            except OverflowError:
                pass  # some beyond int64: they match nothing, key by key below
        if self._is_int:
            int_keys = [_int_key(v) for v in values]
            ok_list = [k is not None for k in int_keys]
            keys = np.array([0 if k is None else k for k in int_keys], dtype=np.int64)
        else:
            str_keys = [self._fitting(_str_key(v)) for v in values]
            ok_list = [k is not None for k in str_keys]
            keys = np.array(["" if k is None else k for k in str_keys], dtype=self._sorted.dtype)
        return keys, np.array(ok_list, dtype=bool)

    def _fitting(self, key: str | None) -> str | None:
        """``key`` when a str map could hold it (no longer than its widest id, no NUL: a
        fixed-width string would drop a trailing one), else None. O(len(key))."""
        if key is None or len(key) > self._width or "\x00" in key:
            return None
        return key

    def _at_width(self, arr: npt.NDArray[np.str_]) -> tuple[npt.NDArray[np.str_], Any]:
        """``'<U'`` queries at this map's width, and which of them can match (those that
        were no wider): searching a narrower map with wider keys would copy the whole map
        to the keys' width."""
        if arr.dtype.itemsize <= self._sorted.dtype.itemsize:
            return arr, True
        ok = np.char.str_len(arr) <= self._width
        return arr.astype(self._sorted.dtype), ok  # too long ones are cut, but not ok

    def rows(self, ids: Iterable[object] | npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        """Rows of many ids: int64 ``(len(ids),)``, ``-1`` where an id is unknown.

        Accepts a list (or any iterable) of ints/strings, or an ndarray (flattened). An int
        map also accepts canonical digit strings ("42"); a str map also accepts ints (via
        ``str()``). Bools, floats, non-canonical strings ("042", "abc") and other values
        match nothing.
        """
        if type(ids) is list and len(ids) == 1:  # one id (a recall's user): no arrays
            row = self.row(ids[0])
            return np.array([-1 if row is None else row], dtype=np.int64)
        keys, ok = self._keys(ids)
        n = int(keys.shape[0])
        if n == 0 or len(self) == 0:
            return np.full(n, -1, dtype=np.int64)
        if n >= _SORTED_LOOKUP_FROM:  # sorted queries walk the table in order: cache-friendly
            order = np.argsort(keys, kind="stable")
            pos = np.empty(n, dtype=np.int64)
            pos[order] = np.searchsorted(self._sorted, keys[order])
        else:
            pos = np.searchsorted(self._sorted, keys)
        np.minimum(pos, len(self) - 1, out=pos)
        hit = (self._sorted[pos] == keys) & ok
        rows = pos if self._order is None else self._order[pos]
        return np.where(hit, rows, -1).astype(np.int64, copy=False)

    def row(self, id: int | str) -> int | None:
        """Row of one id, or None when it is unknown (or of a kind that cannot match):
        what :meth:`rows` gives for it among many, in one binary search without arrays."""
        key = _int_key(id) if self._is_int else self._fitting(_str_key(id))
        n = len(self)
        if key is None or n == 0:
            return None
        pos = int(self._sorted.searchsorted(key))
        if pos == n or self._sorted[pos] != key:
            return None
        return pos if self._order is None else int(self._order[pos])

    def canonical(self, value: int | str) -> int | str:
        """``value`` typed as this map types its ids when it can be (the key :meth:`rows`
        matches it by: "42" -> 42 for an int map, 42 -> "42" for a str map), else
        unchanged (an id of a kind that cannot match, e.g. a new user's own id)."""
        key = _int_key(value) if self.is_int else _str_key(value)
        return value if key is None else key

    def __contains__(self, id: object) -> bool:
        return int(self.rows([id])[0]) >= 0
