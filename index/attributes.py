"""``item_attributes.npz`` (bundle schema_version 2, optional): the item columns of items.csv.

Every column of the training data's items file other than the id, one per attribute, in a
columnar, pickle-free form (n = n_items; missing values are -1 codes / empty lists / NaN):

- ``categorical``: ``<name>.vocabulary`` unicode (n_values,) sorted, unique;
  ``<name>.codes`` int32 (n,) into the vocabulary, -1 = missing;
- ``multi`` (``|``-separated, like genres): ``<name>.vocabulary`` as above;
  ``<name>.indptr`` int64 (n + 1,) CSR over item rows; ``<name>.codes`` int32 (nnz,);
- ``numeric``: ``<name>.values`` float64 (n,), NaN = missing.

The manifest's ``item_attributes`` lists ``{"name", "kind"}`` per column, in order.
:meth:`ItemAttributes.mask` turns one condition into a bool mask over item rows;
:meth:`ItemAttributes.rows_as_dicts` gives the attributes of some rows for an answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from recall.index.columns import KINDS, SEPARATOR, Kind, type_column

__all__ = [
    "KINDS",
    "OPS",
    "AttributeFilterError",
    "Column",
    "ItemAttributes",
    "Kind",
    "valid_name",
]

OPS = ("any", "none", "gte", "gt", "lte", "lt")
RANGE_OPS = ("gte", "gt", "lte", "lt")

_NAME = re.compile(r"[^\x00-\x1f\x7f/\\]{1,128}")
_PARTS: dict[str, tuple[str, ...]] = {
    "categorical": ("vocabulary", "codes"),
    "multi": ("vocabulary", "indptr", "codes"),
    "numeric": ("values",),
}


class AttributeFilterError(ValueError):
    """A condition on item attributes that cannot be applied (HTTP: 422 invalid_input)."""


def valid_name(name: str) -> bool:
    """An attribute name fit for the bundle: 1-128 characters, no control characters, no
    ``/`` or ``\\``, not ``.`` or ``..``."""
    return bool(_NAME.fullmatch(name)) and name not in (".", "..")


@dataclass(frozen=True)
class Column:
    """One attribute: its kind and arrays (see the module docstring); unused arrays are None."""

    name: str
    kind: Kind
    vocabulary: npt.NDArray[np.str_] | None = None  # categorical, multi
    codes: npt.NDArray[np.int32] | None = None  # categorical (n,), multi (nnz,)
    indptr: npt.NDArray[np.int64] | None = None  # multi (n + 1,)
    values: npt.NDArray[np.float64] | None = None  # numeric (n,)

    def arrays(self) -> dict[str, np.ndarray]:
        """This column's entries of ``item_attributes.npz``."""
        return {f"{self.name}.{part}": getattr(self, part) for part in _PARTS[self.kind]}

    def items_holding(self, hit: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """bool (n_items,): the items of this categorical or multi column holding at least
        one vocabulary value where ``hit`` (bool, (len(vocabulary),)) is True; an item
        whose value is missing holds none."""
        codes = cast(npt.NDArray[np.int32], self.codes)
        wanted = np.concatenate([[False], hit])  # slot 0: missing (code -1)
        held: npt.NDArray[np.bool_] = wanted[codes.astype(np.int64) + 1]
        if self.kind == "categorical":
            return held
        indptr = cast(npt.NDArray[np.int64], self.indptr)
        running = np.concatenate([[0], np.cumsum(held, dtype=np.int64)])
        has: npt.NDArray[np.bool_] = running[indptr[1:]] > running[indptr[:-1]]
        return has


@dataclass(frozen=True)
class ItemAttributes:
    """Every item attribute of a bundle, checked (build with :meth:`from_arrays`)."""

    n_items: int
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Attribute names, in the manifest's order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """The column ``name``; :class:`AttributeFilterError` when there is none."""
        for c in self.columns:
            if c.name == name:
                return c
        raise AttributeFilterError(f"unknown attribute {name!r}; known: {self.describe()}")

    def kind(self, name: str) -> Kind:
        return self.column(name).kind

    def describe(self) -> str:
        """``"genres (multi), year (numeric), ..."`` for error messages."""
        return ", ".join(f"{c.name} ({c.kind})" for c in self.columns) or "none"

    def schema(self) -> list[dict[str, str]]:
        """The manifest's ``item_attributes``: ``[{"name", "kind"}, ...]``."""
        return [{"name": c.name, "kind": c.kind} for c in self.columns]

    def arrays(self) -> dict[str, np.ndarray]:
        """The contents of ``item_attributes.npz``."""
        out: dict[str, np.ndarray] = {}
        for c in self.columns:
            out.update(c.arrays())
        return out

    # ------------------------------------------------------------------------ filtering

    def mask(self, name: str, op: str, operand: object) -> npt.NDArray[np.bool_]:
        """Items whose attribute ``name`` satisfies ``op operand``: bool (n_items,).

        ``any`` / ``none`` take a non-empty list (strings for categorical and multi
        columns, numbers for numeric ones): the item has at least one / none of them.
        ``gte`` / ``gt`` / ``lte`` / ``lt`` take a number, numeric columns only. A missing
        value never matches ``any`` or a range and always matches ``none``. Raises
        :class:`AttributeFilterError` naming the problem.
        """
        column = self.column(name)
        if op not in OPS:
            raise AttributeFilterError(
                f"{name}: unknown operator {op!r}; use one of {', '.join(OPS)}"
            )
        if op in RANGE_OPS:
            if column.kind != "numeric":
                raise AttributeFilterError(
                    f"{name}: {op!r} applies to numeric attributes only, {name} is "
                    f"{column.kind}; known: {self.describe()}"
                )
            bound = _number(name, op, operand)
            values = cast(npt.NDArray[np.float64], column.values)
            with np.errstate(invalid="ignore"):  # NaN compares False: missing never matches
                if op == "gte":
                    return values >= bound
                if op == "gt":
                    return values > bound
                if op == "lte":
                    return values <= bound
                return values < bound
        matched = self._any(column, op, operand)
        return matched if op == "any" else ~matched

    def _any(self, column: Column, op: str, operand: object) -> npt.NDArray[np.bool_]:
        """Items holding at least one value of the list ``operand`` (missing: False)."""
        name = column.name
        if not isinstance(operand, list | tuple):
            raise AttributeFilterError(f"{name}: {op!r} takes a list of values, got {operand!r}")
        if not operand:
            raise AttributeFilterError(f"{name}: {op!r} needs at least one value")
        if column.kind == "numeric":
            wanted = np.array([_number(name, op, v) for v in operand], dtype=np.float64)
            return np.isin(cast(npt.NDArray[np.float64], column.values), wanted)
        bad = [v for v in operand if not isinstance(v, str)]
        if bad:
            raise AttributeFilterError(
                f"{name} is {column.kind}: {op!r} takes strings, got {bad[0]!r}"
            )
        vocabulary = cast(npt.NDArray[np.str_], column.vocabulary)
        # Compared at the vocabulary's own width: a longer value (or one holding NUL, which
        # '<U' would drop) matches nothing, and is never allowed to widen the vocabulary to
        # its length (a 100 kB value would copy every title to 400 kB each).
        width = vocabulary.dtype.itemsize // 4
        fits = [v for v in operand if len(v) <= width and "\x00" not in v]
        wanted = np.array(fits, dtype=vocabulary.dtype)
        where = np.searchsorted(vocabulary, wanted)
        found = where < len(vocabulary)
        found[found] = vocabulary[where[found]] == wanted[found]
        hit = np.zeros(len(vocabulary), dtype=bool)
        hit[where[found]] = True
        return column.items_holding(hit)

    # ------------------------------------------------------------------------- display

    def rows_as_dicts(self, rows: Sequence[int] | np.ndarray) -> list[dict[str, Any]]:
        """The attributes of each item row: str (categorical), list[str] (multi), float
        (numeric); missing attributes are left out."""
        out: list[dict[str, Any]] = [{} for _ in range(len(rows))]
        picked = np.asarray(rows, dtype=np.int64)
        for c in self.columns:
            if c.kind == "numeric":
                values = cast(npt.NDArray[np.float64], c.values)[picked]
                for d, v in zip(out, values.tolist(), strict=True):
                    if not math.isnan(v):
                        d[c.name] = v
                continue
            vocabulary = cast(npt.NDArray[np.str_], c.vocabulary)
            codes = cast(npt.NDArray[np.int32], c.codes)
            if c.kind == "categorical":
                for d, code in zip(out, codes[picked].tolist(), strict=True):
                    if code >= 0:
                        d[c.name] = str(vocabulary[code])
                continue
            indptr = cast(npt.NDArray[np.int64], c.indptr)
            for d, row in zip(out, picked.tolist(), strict=True):
                item_codes = codes[int(indptr[row]) : int(indptr[row + 1])]
                if len(item_codes):
                    d[c.name] = [str(v) for v in vocabulary[item_codes]]
        return out

    # ---------------------------------------------------------------------- construction

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        schema: Sequence[Any],
        n_items: int,
    ) -> ItemAttributes:
        """Check the contents of ``item_attributes.npz`` against the manifest's schema
        (entries with ``name`` and ``kind``, as mappings or attributes) and build it.

        Raises :class:`ValueError` naming the first problem: an invalid or repeated name,
        an unknown kind, keys other than the schema's, wrong dtypes or shapes, vocabularies
        not sorted unique unicode, codes out of range, an indptr not running monotonically
        from 0 to nnz, infinite numeric values (NaN is allowed: missing).
        """
        columns: list[Column] = []
        expected: set[str] = set()
        for entry in schema:
            name, kind = _entry(entry)
            if not isinstance(name, str) or not valid_name(name):
                raise ValueError(f"invalid attribute name {name!r}")
            if name in (c.name for c in columns):
                raise ValueError(f"attribute {name!r} appears twice")
            if kind not in KINDS:
                raise ValueError(f"attribute {name!r}: unknown kind {kind!r}")
            keys = {f"{name}.{part}" for part in _PARTS[kind]}
            missing = sorted(keys - set(arrays))
            if missing:
                raise ValueError(f"attribute {name!r} ({kind}): missing {', '.join(missing)}")
            expected |= keys
            columns.append(_column(name, cast(Kind, kind), arrays, n_items))
        extra = sorted(set(arrays) - expected)
        if extra:
            raise ValueError(f"arrays not in the schema: {', '.join(extra)}")
        return cls(n_items=n_items, columns=tuple(columns))

    @classmethod
    def from_raw(
        cls,
        raw: Mapping[str, np.ndarray],
        n_items: int,
        kinds: Mapping[str, Kind] | None = None,
    ) -> ItemAttributes:
        """Encode raw columns (each (n_items,): float64 with NaN = missing, or unicode
        with "" = missing) as the kinds ``kinds`` gives, else as
        :func:`recall.index.columns.type_column` infers them (numeric when >= 99% of the
        non-blank values are finite numbers, the rest made missing; multi when a value holds
        ``|``; else categorical).
        Names that :func:`valid_name` refuses raise :class:`ValueError`."""
        columns = []
        for name, values in raw.items():
            if not valid_name(name):
                raise ValueError(f"invalid attribute name {name!r}")
            if values.shape != (n_items,):
                raise ValueError(f"{name}: shape {values.shape}, expected ({n_items},)")
            typed, column_type = type_column(name, values, (kinds or {}).get(name))
            columns.append(_encode(name, column_type.kind, typed))
        return cls(n_items=n_items, columns=tuple(columns))


# ---------------------------------------------------------------------------- helpers


def _entry(entry: Any) -> tuple[Any, Any]:
    if isinstance(entry, Mapping):
        return entry.get("name"), entry.get("kind")
    return getattr(entry, "name", None), getattr(entry, "kind", None)


def _number(name: str, op: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AttributeFilterError(f"{name}: {op!r} takes numbers, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise AttributeFilterError(f"{name}: {op!r} takes finite numbers, got {value!r}")
    return number


def _array(
    arrays: Mapping[str, np.ndarray], key: str, dtype: type[np.generic], shape: tuple[int, ...]
) -> np.ndarray:
    a = arrays[key]
    if a.dtype != dtype or a.shape != shape:
        raise ValueError(
            f"{key} must be {np.dtype(dtype)} of shape {shape}, got {a.dtype} {a.shape}"
        )
    return a


def _vocabulary(arrays: Mapping[str, np.ndarray], key: str) -> npt.NDArray[np.str_]:
    v = arrays[key]
    if v.ndim != 1 or v.dtype.kind != "U":
        raise ValueError(f"{key} must be 1-D unicode, got {v.dtype} {v.shape}")
    if len(v) > 1 and not bool((v[1:] > v[:-1]).all()):
        raise ValueError(f"{key} is not sorted and unique")
    return cast(npt.NDArray[np.str_], v)


def _column(name: str, kind: Kind, arrays: Mapping[str, np.ndarray], n_items: int) -> Column:
    """One column's arrays, checked."""
    if kind == "numeric":
        values = _array(arrays, f"{name}.values", np.float64, (n_items,))
        if np.isinf(values).any():
            raise ValueError(f"{name}.values holds an infinite value (NaN = missing is allowed)")
        return Column(name, kind, values=values)
    vocabulary = _vocabulary(arrays, f"{name}.vocabulary")
    if kind == "categorical":
        codes = _array(arrays, f"{name}.codes", np.int32, (n_items,))
        low = -1
    else:
        codes = arrays[f"{name}.codes"]
        if codes.dtype != np.int32 or codes.ndim != 1:
            raise ValueError(f"{name}.codes must be 1-D int32, got {codes.dtype} {codes.shape}")
        indptr = _array(arrays, f"{name}.indptr", np.int64, (n_items + 1,))
        if int(indptr[0]) != 0 or int(indptr[-1]) != len(codes):
            raise ValueError(
                f"{name}.indptr must run from 0 to {len(codes)}, "
                f"runs from {int(indptr[0])} to {int(indptr[-1])}"
            )
        if (np.diff(indptr) < 0).any():
            raise ValueError(f"{name}.indptr decreases (not a CSR)")
        low = 0
    if len(codes) and (int(codes.min()) < low or int(codes.max()) >= len(vocabulary)):
        raise ValueError(f"{name}.codes out of range [{low}, {len(vocabulary)})")
    if kind == "categorical":
        return Column(name, kind, vocabulary=vocabulary, codes=codes)
    return Column(name, kind, vocabulary=vocabulary, codes=codes, indptr=indptr)


def _encode(name: str, kind: Kind, values: np.ndarray) -> Column:
    """One typed column (float64 for numeric, else unicode) -> a :class:`Column`."""
    if kind == "numeric":
        return Column(name, "numeric", values=values.astype(np.float64))
    text = np.char.strip(values)
    if kind == "multi":
        return _encode_multi(name, text)
    vocabulary, inverse = np.unique(text, return_inverse=True)
    codes = inverse.astype(np.int32).reshape(-1)
    if len(vocabulary) and vocabulary[0] == "":  # sorted first: the missing value
        vocabulary, codes = vocabulary[1:], codes - 1
    return Column(name, "categorical", vocabulary=vocabulary.astype(str), codes=codes)


def _encode_multi(name: str, text: npt.NDArray[np.str_]) -> Column:
    """``|``-separated values -> CSR over items (tokens trimmed, blanks and repeats dropped)."""
    lists = [sorted({t.strip() for t in v.split(SEPARATOR)} - {""}) for v in text.tolist()]
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
    tokens = np.array([t for x in lists for t in x], dtype=str)
    vocabulary, codes = np.unique(tokens, return_inverse=True)
    indptr = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return Column(
        name,
        "multi",
        vocabulary=vocabulary.astype(str),
        codes=codes.astype(np.int32).reshape(-1),
        indptr=indptr,
    )
