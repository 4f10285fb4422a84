"""Exact top-k by inner product (numpy brute force) and recall against it.

The oracle of the index builder (what an approximate index is measured against) and the
last-resort path of :mod:`recall.index.search` when an approximate index cannot fill ``k`` results.
It uses numpy only, so it is independent of FAISS.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["exact_topk", "exact_topk_among", "recall_at_k", "topk_by_score"]

#: Scores matrix budget per chunk of queries (float32 entries), about 256 MB.
_CHUNK_ENTRIES = 1 << 26


def topk_by_score(
    scores: npt.NDArray[np.float32], rows: npt.NDArray[np.int64], k: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Keep the ``k`` best of each row of ``scores`` (B, m), highest first, ties by row id.

    ``rows`` (B, m) int64 are the item rows the scores belong to. Returns
    ``(scores (B, k), rows (B, k))``; ``k <= m`` is required.
    """
    if scores.shape[0] == 1:  # one query (the service's case): plain indexing is cheaper
        top = np.lexsort((rows[0], -scores[0]))[:k]
        return scores[:, top], rows[:, top]
    order = np.lexsort((rows, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, -1), np.take_along_axis(rows, order, -1)


def exact_topk(
    queries: npt.NDArray[np.float32],
    items: npt.NDArray[np.float32],
    k: int,
    exclude: npt.NDArray[np.bool_] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact top-``k`` items by inner product, highest first (ties broken by lower row).

    ``queries`` (B, d) and ``items`` (n, d) float32; ``exclude`` an optional bool mask
    (B, n) of items that must not be returned for each query. ``k`` must not exceed the
    number of eligible items of any query. Returns ``(scores (B, k) float32, rows (B, k)
    int64)``; scores are computed in float32 as ``items @ query``.
    """
    n_queries, n_items = queries.shape[0], items.shape[0]
    if not 1 <= k <= n_items:
        raise ValueError(f"k must be in [1, {n_items}], got {k}")
    out_scores = np.empty((n_queries, k), dtype=np.float32)
    out_rows = np.empty((n_queries, k), dtype=np.int64)
    chunk = max(1, _CHUNK_ENTRIES // max(n_items, 1))
    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        scores = (
            np.asarray(queries[start:stop], dtype=np.float32)
            @ np.asarray(items, dtype=np.float32).T
        )
        if exclude is not None:
            scores[exclude[start:stop]] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n_items else None
        cand = part if part is not None else np.broadcast_to(np.arange(n_items), scores.shape)
        cand_rows = np.ascontiguousarray(cand, dtype=np.int64)
        cand_scores = np.take_along_axis(scores, cand_rows, 1)
        # argpartition is not stable: refill ties at the k-th score with the lowest rows.
        kth = cand_scores.min(axis=1, keepdims=True)
        ties = (scores == kth).sum(axis=1) > (cand_scores == kth).sum(axis=1)
        for i in np.flatnonzero(ties):
            tied = np.flatnonzero(scores[i] >= kth[i, 0])
            better = tied[scores[i, tied] > kth[i, 0]]
            equal = tied[scores[i, tied] == kth[i, 0]][: k - better.size]
            cand_rows[i] = np.concatenate([better, equal])
            cand_scores[i] = scores[i, cand_rows[i]]
        top_s, top_r = topk_by_score(cand_scores, cand_rows, k)
        out_scores[start:stop], out_rows[start:stop] = top_s, top_r
    return out_scores, out_rows


def exact_topk_among(
    queries: npt.NDArray[np.float32],
    items: npt.NDArray[np.float32],
    rows: npt.NDArray[np.int64],
    k: int,
) -> npt.NDArray[np.int64]:
    """The exact filtered answer: the top ``min(k, m)`` item rows among ``rows`` (m,)
    ascending, for each query (B, d), best first, ties to the lower row (as
    :func:`exact_topk`). Returns (B, min(k, m)) int64 item rows."""
    take = min(k, rows.size)
    if take == 0:
        return np.empty((queries.shape[0], 0), dtype=np.int64)
    _, local = exact_topk(queries, items[rows], take)
    return np.asarray(rows[local], dtype=np.int64)


def recall_at_k(found: npt.NDArray[np.int64], exact: npt.NDArray[np.int64], k: int) -> float:
    """Mean over queries of ``|found[:, :k] ∩ exact[:, :k]| / k`` (rows (B, >=k) int64)."""
    if found.shape[0] != exact.shape[0]:
        raise ValueError(f"{found.shape[0]} result rows vs {exact.shape[0]} exact rows")
    if found.shape[0] == 0:
        raise ValueError("no queries")
    hits = [np.intersect1d(f[:k], e[:k]).size for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits)) / k
