"""Filtered recall for the index builder: filters of ~50%, 10%, 1%, 0.1% selectivity,
recall@10 / recall@k against the exact filtered top-k, single-query p50, the strategy.

Filters come from the bundle's own attributes where one matches a selectivity within a
factor of :data:`TOLERANCE` (one ``any`` value of a categorical/multi column, or a
``gte`` quantile of a numeric one, whichever share is nearest the target), else from a
seeded random mask (each item allowed with probability ``s``). The chosen filter is
recorded, so a reader can tell which.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from recall.index.allowed import AllowedItems
from recall.index.attributes import ItemAttributes
from recall.index.exact import exact_topk_among, recall_at_k
from recall.index.search import ItemIndex

logger = logging.getLogger(__name__)

__all__ = ["SELECTIVITIES", "FilterCase", "choose_filters", "measure_filtered"]

SELECTIVITIES = (0.5, 0.1, 0.01, 0.001)
#: An attribute filter stands for a selectivity when its share is within this factor.
TOLERANCE = 1.5


@dataclass(frozen=True)
class FilterCase:
    """One measured filter: the target selectivity, the mask (n_items,) and what it is
    (a filter spec, or ``"random"``)."""

    selectivity: float
    mask: npt.NDArray[np.bool_]
    source: dict[str, Any] | str


def _attribute_candidates(
    attributes: ItemAttributes, target: float
) -> list[tuple[float, dict[str, Any]]]:
    """(share, filter spec) of single-condition filters near ``target``."""
    n = attributes.n_items
    out: list[tuple[float, dict[str, Any]]] = []
    for column in attributes.columns:
        if column.kind == "numeric":
            values = cast(npt.NDArray[np.float64], column.values)
            present = values[~np.isnan(values)]
            if present.size == 0:
                continue
            bound = float(np.quantile(present, max(0.0, 1.0 - target * n / present.size)))
            share = float(np.count_nonzero(values >= bound)) / n
            out.append((share, {column.name: {"gte": bound}}))
            continue
        codes = cast(npt.NDArray[np.int32], column.codes)
        vocabulary = cast(npt.NDArray[np.str_], column.vocabulary)
        counts = np.bincount(codes[codes >= 0], minlength=len(vocabulary))
        if counts.size == 0:
            continue
        best = int(np.argmin(np.abs(np.log(np.maximum(counts, 1) / (target * n)))))
        out.append((float(counts[best]) / n, {column.name: {"any": [str(vocabulary[best])]}}))
    return out


def choose_filters(
    attributes: ItemAttributes | None,
    n_items: int,
    seed: int,
    selectivities: tuple[float, ...] = SELECTIVITIES,
) -> list[FilterCase]:
    """One filter per selectivity that leaves at least one item (see the module doc)."""
    rng = np.random.default_rng(seed)
    cases = []
    for s in selectivities:
        if s * n_items < 1:
            continue
        found: FilterCase | None = None
        if attributes is not None:
            near = [
                (abs(math.log(share / s)), share, spec)
                for share, spec in _attribute_candidates(attributes, s)
                if share > 0 and abs(math.log(share / s)) <= math.log(TOLERANCE)
            ]
            if near:
                _, _, spec = min(near, key=lambda t: t[0])
                name, condition = next(iter(spec.items()))
                op, operand = next(iter(condition.items()))
                found = FilterCase(s, attributes.mask(name, op, operand), spec)
        if found is None:
            mask = rng.random(n_items) < s
            if not mask.any():
                mask[rng.integers(n_items)] = True
            found = FilterCase(s, mask, "random")
        cases.append(found)
    return cases


def measure_filtered(
    searcher: ItemIndex,
    items: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    cases: list[FilterCase],
    latency: Any,
) -> list[dict[str, Any]]:
    """Per filter: recall@10 and recall@k of ``searcher.search(..., allowed=mask)`` against
    the exact filtered top-k (k capped at the allowed count), p50 ms from ``latency``
    (``(searcher, queries, k, allowed) -> (p50, p99)``) and the strategies used (most
    frequent first, joined by ``+``). The mask is prepared once (:class:`AllowedItems`),
    as the service's filter cache does for a filter that comes back."""
    out = []
    for case in cases:
        allowed = AllowedItems(case.mask)
        exact = exact_topk_among(queries, items, allowed.rows, k)
        k_case = exact.shape[1]
        found = searcher.search_detailed(queries, k_case, allowed=allowed)
        k10 = min(10, k_case)
        p50, _ = latency(searcher, queries, k_case, allowed)
        used = Counter(found.strategies).most_common()
        row = {
            "selectivity": case.selectivity,
            "share": round(allowed.count / allowed.n_items, 6),
            "allowed_items": allowed.count,
            "filter": case.source,
            "recall_at_10": round(recall_at_k(found.rows, exact, k10), 4),
            f"recall_at_{k}": round(recall_at_k(found.rows, exact, k_case), 4),
            "p50_ms": round(p50, 4),
            "strategy": "+".join(s for s, _ in used),
            "queries": int(queries.shape[0]),
        }
        logger.info("filtered %s", row)
        out.append(row)
    return out
