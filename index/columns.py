"""Column typing for side files: is an items.csv / users.csv column numeric or not?

The rule, for a column nobody declared: it is **numeric when at least 99%**
(:data:`NUMERIC_SHARE`) **of its non-blank values parse as finite numbers, and at least
one does**; the other non-blank values become missing, counted, and logged as a warning
with up to :data:`MAX_EXAMPLES` of them. Otherwise it is ``multi`` when a value holds
``|`` (item attributes only), else ``categorical``. A column a Parquet file stores as
numbers is numeric (its infinite values made missing). A declared kind (``--item-schema
year=numeric,genres=multi``, ``item_schema`` / ``user_schema`` in the TOML config) skips
the rule: a column declared numeric keeps every value that parses, whatever the share.

What happened to each column is a :class:`ColumnType`, written into the bundle's manifest
(``trainer.columns``) and shown by ``GET /v1/model``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

__all__ = [
    "KINDS",
    "MAX_EXAMPLES",
    "NUMERIC_SHARE",
    "USER_KINDS",
    "ColumnType",
    "Kind",
    "SchemaError",
    "parse_schema",
    "type_column",
]

logger = logging.getLogger(__name__)

Kind = Literal["categorical", "multi", "numeric"]
KINDS: tuple[str, ...] = get_args(Kind)
USER_KINDS: tuple[str, ...] = ("categorical", "numeric")  # the tower has no multi feature
SEPARATOR = "|"
NUMERIC_SHARE = 0.99  # of the non-blank values, that must be finite numbers
MAX_EXAMPLES = 5  # values made missing, quoted in the warning and the manifest
_CHUNK = 4096  # values cast at once while parsing a text column


class SchemaError(ValueError):
    """A declared column schema that is malformed or names an unknown kind."""


def parse_schema(
    spec: str | Mapping[str, Any] | None, allowed: Sequence[str] = KINDS
) -> dict[str, Kind]:
    """``"year=numeric,genres=multi"`` (or the mapping ``{"year": "numeric", ...}``) ->
    ``{column: kind}``; None or ``""`` -> ``{}``. Raises :class:`SchemaError` for an entry
    that is not ``name=kind``, a blank or repeated name, or a kind not in ``allowed``."""
    if spec is None:
        return {}
    if isinstance(spec, str):
        pairs: list[tuple[str, Any]] = []
        for entry in (e.strip() for e in spec.split(",")):
            if not entry:
                continue
            name, sep, kind = entry.partition("=")
            if not sep:
                raise SchemaError(f"{entry!r}: expected column=kind (kinds: {', '.join(allowed)})")
            pairs.append((name.strip(), kind.strip()))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        raise SchemaError(f"expected 'column=kind,...' or a table of column = kind, got {spec!r}")
    out: dict[str, Kind] = {}
    for name, kind in pairs:
        if not isinstance(name, str) or not name.strip():
            raise SchemaError(f"blank column name in {spec!r}")
        if name in out:
            raise SchemaError(f"column {name!r} declared twice")
        if kind not in allowed:
            raise SchemaError(
                f"column {name!r}: unknown kind {kind!r}; use one of {', '.join(allowed)}"
            )
        out[name] = cast(Kind, kind)
    return out


@dataclass(frozen=True)
class ColumnType:
    """How one column was typed: its kind, whether it was declared, and the non-blank
    values that were not finite numbers of a numeric column (made missing)."""

    name: str
    kind: Kind
    declared: bool
    made_missing: int = 0  # non-blank values turned missing (numeric columns only)
    examples: tuple[str, ...] = ()  # up to MAX_EXAMPLES of them, distinct, in row order

    def as_dict(self) -> dict[str, Any]:
        """The manifest's / ``/v1/model``'s entry for this column."""
        return {
            "name": self.name,
            "kind": self.kind,
            "declared": self.declared,
            "made_missing": self.made_missing,
            "examples": list(self.examples),
        }


def type_column(
    name: str,
    values: np.ndarray,
    declared: Kind | None = None,
    allowed: Sequence[str] = KINDS,
    where: str = "",
) -> tuple[np.ndarray, ColumnType]:
    """Type one raw column, shape (n,): float64 (NaN = missing) or unicode ("" = missing).

    Returns the values as the kind wants them, float64 (NaN = missing) for numeric,
    unicode as given for the others (numbers written out, "" = missing), and the
    :class:`ColumnType`. ``declared`` overrides the rule; ``where`` (a file) prefixes the
    warning logged when values are made missing.
    """
    if values.dtype.kind not in "fU":
        raise ValueError(f"{name}: raw values must be float64 or unicode, got {values.dtype}")
    if declared in ("categorical", "multi"):
        text_values = values if values.dtype.kind == "U" else _written_out(values)
        return text_values, ColumnType(name, declared, True)
    parsed: tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]] | None
    if values.dtype.kind == "f":
        numbers = values.astype(np.float64)
        present = ~np.isnan(numbers)
        parsed = numbers, np.isinf(numbers)  # a number type: numeric, whatever it holds
        shown = numbers[parsed[1]].astype(str)
    else:
        text = np.char.strip(values)
        present = text != ""
        n_present = int(present.sum())
        tolerated = None if declared else int((1 - NUMERIC_SHARE) * n_present + 1e-9)
        parsed = _parse(text, present, tolerated)
        shown = text[parsed[1]] if parsed is not None else text[:0]
    if parsed is None:  # not numeric by the rule
        many = "multi" in allowed and _holds_separator(values[present])
        return values, ColumnType(name, "multi" if many else "categorical", False)
    numbers, bad = parsed
    numbers[bad] = np.nan
    n_present, n_bad = int(present.sum()), int(bad.sum())
    n_numbers = n_present - n_bad
    examples = tuple(dict.fromkeys(shown.tolist()))[:MAX_EXAMPLES]
    if n_bad:
        logger.warning(
            "%scolumn %r is numeric (%s): %d of its %d non-blank values are not finite "
            "numbers and are made missing, e.g. %s",
            f"{where}: " if where else "",
            name,
            "declared" if declared else f"{n_numbers / n_present:.2%} are numbers",
            n_bad,
            n_present,
            ", ".join(map(repr, examples)),
        )
    return numbers, ColumnType(name, "numeric", declared is not None, n_bad, examples)


def _parse(
    text: npt.NDArray[np.str_], present: npt.NDArray[np.bool_], tolerated: int | None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]] | None:
    """Stripped ``text`` (n,) as float64 (NaN where blank or bad) and the bad mask (n,):
    non-blank values that are not finite numbers; None as soon as more than ``tolerated``
    are bad (None: no limit). Casts :data:`_CHUNK` values at a time, one by one only in a
    chunk that holds a bad value, so a column of numbers costs a few vectorized casts and
    a column of words stops after about ``tolerated`` values."""
    given = text[present]
    parsed = np.empty(given.shape, dtype=np.float64)
    n_bad = 0
    for start in range(0, len(given), _CHUNK):
        chunk = given[start : start + _CHUNK]
        try:
            part = chunk.astype(np.float64)
        except ValueError:
            part = np.array([_number(v) for v in chunk.tolist()], dtype=np.float64)
        parsed[start : start + len(chunk)] = part
        n_bad += int((~np.isfinite(part)).sum())
        if tolerated is not None and n_bad > tolerated:
            return None
    if tolerated is not None and n_bad == len(given):  # not one number (or no value)
        return None
    numbers = np.full(text.shape, np.nan, dtype=np.float64)
    numbers[present] = parsed
    return numbers, present & ~np.isfinite(numbers)


def _number(value: str) -> float:
    """``value`` as a float (the spellings numpy's string cast reads); NaN when it is not."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def _holds_separator(text: npt.NDArray[np.str_]) -> bool:
    return bool(np.char.find(text, SEPARATOR).max(initial=-1) >= 0)


def _written_out(values: npt.NDArray[np.float64]) -> npt.NDArray[np.str_]:
    """Numbers as text for a column declared categorical: ``1995.0`` -> ``"1995"``,
    NaN -> ``""``."""
    words = [
        "" if math.isnan(v) else str(int(v)) if v.is_integer() else repr(v) for v in values.tolist()
    ]
    return np.asarray(words, dtype=str) if words else np.zeros(0, dtype="<U1")
