"""Filter specs -> an "allowed" bool mask over item rows.

A filter is a JSON object: attribute name -> condition object, every condition must hold
(AND); a condition object holds one or more operators of
:meth:`recall.index.attributes.ItemAttributes.mask` (AND as well)::

    {"genres": {"any": ["Comedy", "Drama"]}, "year": {"gte": 1990, "lt": 2000}}

The mask goes to :meth:`recall.index.search.ItemIndex.search` as ``allowed``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from recall.index.attributes import AttributeFilterError, ItemAttributes

__all__ = ["FilterError", "compile_filter"]


class FilterError(ValueError):
    """A filter that cannot be applied (HTTP: 422 invalid_input); the message says why."""


def compile_filter(
    spec: Mapping[str, Mapping[str, object]], attributes: ItemAttributes | None
) -> npt.NDArray[np.bool_]:
    """The items matching every condition of ``spec``: bool (n_items,).

    Raises :class:`FilterError` for a bundle without attributes, an empty filter or an
    empty condition, a condition that is not an object, and (re-raised with the same
    message) every :class:`~recall.index.attributes.AttributeFilterError`: unknown attribute,
    operator or operand type.
    """
    if attributes is None:
        raise FilterError("this bundle has no item attributes: filters cannot be applied")
    if not isinstance(spec, Mapping):
        raise FilterError(f"filter must be an object, got {type(spec).__name__}")
    if not spec:
        raise FilterError(
            f"filter is empty: give at least one condition; attributes: {attributes.describe()}"
        )
    allowed = np.ones(attributes.n_items, dtype=bool)
    for name, condition in spec.items():
        if not isinstance(condition, Mapping):
            raise FilterError(
                f'{name}: a condition is an object like {{"any": [...]}} or '
                f'{{"gte": 1990}}, got {condition!r}'
            )
        if not condition:
            raise FilterError(f"{name}: empty condition; give an operator (any, none, gte, ...)")
        for op, operand in condition.items():
            try:
                allowed &= attributes.mask(str(name), str(op), operand)
            except AttributeFilterError as e:
                raise FilterError(str(e)) from None
    return allowed
