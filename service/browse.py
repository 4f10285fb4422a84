"""What the console shows of users and items, without HTTP (pure functions over a bundle).

- :func:`history_rows`: a user's training window (:func:`training_window`) and their newer
  events from the state store, newest first, with the items' attributes;
- :func:`search_items`: items whose ``title`` attribute (or id, for a bundle without
  titles) contains a text, case-insensitively, most popular first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from recall.index.ids import ExternalId
from recall.service.recaller import ServingBundle
from recall.service.users import StoredUser

__all__ = ["TITLE", "history_rows", "search_items", "training_window"]

TITLE = "title"
"""The attribute :func:`search_items` matches (items.csv's ``title`` column)."""


def training_window(
    bundle: ServingBundle, user: StoredUser | None
) -> list[tuple[ExternalId, float]]:
    """A known user's training window as (item id, unix seconds), oldest first; [] for an
    unknown user (None) or a bundle without windows (schema_version 1)."""
    if user is None:
        return []
    ids = bundle.item_ids.ids[user.window].tolist()
    return list(zip(ids, user.timestamps.tolist(), strict=True))


def history_rows(
    bundle: ServingBundle, events: Sequence[tuple[ExternalId, float]], limit: int
) -> list[dict[str, Any]]:
    """The last ``limit`` of ``events`` ((item id, unix seconds), oldest first) as
    ``[{"item_id", "timestamp", "attributes"?}]``, newest first; ``attributes`` for items
    the bundle knows when it has item attributes."""
    picked = list(events)[-limit:][::-1] if limit > 0 else []
    out: list[dict[str, Any]] = [{"item_id": i, "timestamp": t} for i, t in picked]
    if bundle.attributes is None or not out:
        return out
    rows = bundle.item_ids.rows([i for i, _ in picked])
    known = rows >= 0
    for row_out, attrs in zip(
        (r for r, ok in zip(out, known.tolist(), strict=True) if ok),
        bundle.attributes.rows_as_dicts(rows[known]),
        strict=True,
    ):
        row_out["attributes"] = attrs
    return out


def search_items(bundle: ServingBundle, text: str, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` items whose title contains ``text`` (case-insensitive), most
    popular first (training interactions): ``[{"item_id", "attributes"}]`` ({} without
    item attributes). A bundle without a text ``title`` attribute matches the ids."""
    matches = _matches(bundle, text.casefold())
    order = bundle.popular_rows[matches[bundle.popular_rows]][:limit]
    ids = bundle.item_ids.ids[order].tolist()
    if bundle.attributes is None:
        return [{"item_id": i, "attributes": {}} for i in ids]
    attrs = bundle.attributes.rows_as_dicts(order)
    return [{"item_id": i, "attributes": a} for i, a in zip(ids, attrs, strict=True)]


def _matches(bundle: ServingBundle, needle: str) -> npt.NDArray[np.bool_]:
    """bool (n_items,): the items whose title (else id) contains ``needle`` (casefolded)."""
    attributes = bundle.attributes
    if attributes is not None and TITLE in attributes.names:
        column = attributes.column(TITLE)
        if column.kind in ("categorical", "multi"):
            vocabulary = cast(npt.NDArray[np.str_], column.vocabulary)
            hit = np.array([needle in v.casefold() for v in vocabulary.tolist()], dtype=bool)
            return column.items_holding(hit)
    ids = bundle.item_ids.ids.astype(str)
    found: npt.NDArray[np.bool_] = np.char.find(np.char.lower(ids), needle) >= 0
    return found
