"""Top-k item search over a bundle's index: numpy in, numpy out, no HTTP.

:class:`ItemIndex` wraps a FAISS index (from :mod:`recall.index.faiss_index`) and the bundle's
item vectors. ``search`` returns ``(scores, rows)``: rows are item rows (= FAISS labels,
``item_ids[row]`` is the external id), scores the exact inner products ``items[row] . q``
recomputed in float32 from the item vectors and sorted by them, whatever the index kind.

Exclusions: an HNSW search asks FAISS for ``k + len(excluded) + 1`` items and drops the
excluded ones when that fits its queue (``efSearch``), which is exactly the answer of a
search that skips them by a selector (:func:`recall.index.faiss_index.drop_excluded` says why
and when it would not be, then the selector is used); other kinds, and HNSW beyond that,
push them into FAISS as a per-query ``IDSelectorNot`` (``SearchParameters``). When
exclusions leave at most 4096 items, those are scanned exactly instead. A filter
(``allowed``, :class:`~recall.index.allowed.AllowedItems`) picks its strategy by how many
items it leaves (:meth:`ItemIndex.filter_strategy`): an exact scan of few, the item
clusters (:mod:`recall.index.clusters`) or the index with a bitmap selector (quantized
kinds: every allowed item of the probed lists, scored exactly,
:func:`recall.index.faiss_index.probed_allowed`). When an approximate index still comes
back with fewer than the needed candidates (possible for HNSW/IVF under heavy exclusion,
or IVF with few probes), that query is answered by exact brute force. Result width:
``k' = min(k, eligible)``, where ``eligible`` is the smallest number of non-excluded items
over the batch's queries; so the result is ``k`` wide unless the catalog is smaller than
``k`` plus the exclusions. Labels are never -1.

HNSW indexes may carry landmark entry points (``entry_rows`` in the manifest): settings
with ``entry_probe`` start the level-0 search from the landmarks nearest each query
(:func:`recall.index.faiss_index.search_hnsw_from`) instead of FAISS's single greedy entry.

Thread safety: ``search`` never mutates shared state (search parameters are shared only
where FAISS just reads them, :func:`recall.index.faiss_index.search_parameters`) and FAISS
releases the GIL while it searches, so one :class:`ItemIndex` serves concurrent callers.
OpenMP threads are a process-wide FAISS setting left to the caller (the service wants
``faiss.omp_set_num_threads(1)`` for single queries).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from recall.index import bundle as b
from recall.index import faiss_index as fi
from recall.index.allowed import AllowedItems
from recall.index.clusters import ItemClusters
from recall.index.exact import exact_topk, topk_by_score

logger = logging.getLogger(__name__)

__all__ = [
    "FILTER_STRATEGIES",
    "STRATEGIES",
    "AllowedItemsLike",
    "Found",
    "ItemIndex",
    "Strategy",
    "check_vectors",
    "max_row_norm",
    "row_norms",
]

Exclude = Sequence[npt.ArrayLike | None] | None
AllowedItemsLike = AllowedItems | npt.ArrayLike | None
"""What a search takes as ``allowed``: None (every item), an :class:`AllowedItems`, or a
bool mask (n_items,) shared by the queries or (n_queries, n_items) one per query."""

#: How a query was answered: ``index`` (FAISS, exclusions as an ``IDSelectorNot``),
#: ``scan`` (exact scan of the few eligible rows), ``clusters`` (exact scan of the allowed
#: rows of the clusters nearest the query, :mod:`recall.index.clusters`), ``selector`` (FAISS
#: restricted to the allowed items by a bitmap selector, widened search parameters),
#: ``fallback`` (the index came back short: exact brute force), ``empty`` (nothing eligible).
Strategy = Literal["index", "scan", "clusters", "selector", "fallback", "empty"]
STRATEGIES: tuple[Strategy, ...] = ("index", "scan", "clusters", "selector", "fallback", "empty")
FilterStrategy = Literal["scan", "clusters", "selector"]
FILTER_STRATEGIES: tuple[FilterStrategy, ...] = ("scan", "clusters", "selector")


class Found(NamedTuple):
    """A search answer: ``scores`` (B, k') float32, ``rows`` (B, k') int64, and the
    :data:`Strategy` of each query."""

    scores: npt.NDArray[np.float32]
    rows: npt.NDArray[np.int64]
    strategies: tuple[Strategy, ...]


_NO_ROW = np.iinfo(np.int64).max


def _check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def check_vectors(bundle: Path, name: str, vectors: npt.NDArray[Any], rows: int, dim: int) -> None:
    """Raise :class:`~recall.index.bundle.BundleError` unless ``vectors`` is float32 (rows, dim)
    with only finite values."""
    if vectors.dtype != np.float32 or vectors.ndim != 2:
        raise b.BundleError(
            f"{bundle}: {name} must be float32 (n, dim), got {vectors.dtype} {vectors.shape}"
        )
    if vectors.shape != (rows, dim):
        raise b.BundleError(
            f"{bundle}: {name} has shape {vectors.shape}, manifest says ({rows}, {dim})"
        )
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise b.BundleError(
            f"{bundle}: {name} has {int(bad.sum())} row(s) with NaN/Inf (first: row {first})"
        )


def max_row_norm(vectors: npt.NDArray[Any], chunk: int = 1 << 16) -> float:
    """Largest L2 norm of the rows of ``vectors`` (n, d), in float64, read in chunks
    (the array may be a large memory map); 0 for no rows."""
    return float(row_norms(vectors, chunk).max(initial=0.0))


def row_norms(vectors: npt.NDArray[Any], chunk: int = 1 << 16) -> npt.NDArray[np.float64]:
    """L2 norms (n,) float64 of the rows of ``vectors`` (n, d), read ``chunk`` rows at a time."""
    out = np.empty(len(vectors), dtype=np.float64)
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start : start + chunk], dtype=np.float64)
        out[start : start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


class ItemIndex:
    """A searchable item index: a FAISS index plus the item vectors it was built from.

    ``item_vectors`` float32 (n_items, dim) are the bias-folded item rows (possibly a
    read-only memory map); ``index`` holds them (transformed, padded to ``index.d``) under
    labels ``0..n_items-1``.
    """

    #: When exclusions or a filter leave at most this many items, a query scans them
    #: exactly (cheaper and better than a search that steps over nearly everything).
    scan_eligible: int = 4096
    #: With item clusters, a filter leaving at most this share of the catalog (and more
    #: items than the clusters search would score) uses them; above, the index with a
    #: bitmap selector keeps its tuned recall at about its unfiltered cost. Measured by
    #: bench/filter_bench.py (docs/index.md).
    clusters_max_share: float = 0.6

    def __init__(
        self,
        index: Any,
        item_vectors: npt.NDArray[np.float32],
        kind: fi.Kind,
        settings: fi.SearchSettings | None = None,
        entry_rows: npt.NDArray[np.int64] | None = None,
        clusters: ItemClusters | None = None,
    ) -> None:
        """``entry_rows``: HNSW landmark rows
        (:func:`recall.index.faiss_index.choose_entry_points`), needed by settings with
        ``entry_probe``. ``clusters``: a partition of the items in the index space
        (:mod:`recall.index.clusters`) for filtered queries."""
        if item_vectors.ndim != 2 or item_vectors.dtype != np.float32:
            raise ValueError("item_vectors must be float32 (n_items, dim)")
        if int(index.ntotal) != item_vectors.shape[0]:
            raise ValueError(
                f"index holds {index.ntotal} vectors, item_vectors has {item_vectors.shape[0]}"
            )
        if int(index.d) < item_vectors.shape[1]:
            raise ValueError(f"index width {index.d} < item vector width {item_vectors.shape[1]}")
        self.index = index
        self.items = item_vectors
        self.kind = kind
        self.settings = settings or fi.SearchSettings()
        self.entries: fi.EntryPoints | None = None
        if entry_rows is not None and len(entry_rows):
            rows = np.asarray(entry_rows)
            if rows.ndim != 1 or rows.dtype.kind not in "iu":
                raise ValueError("entry_rows must be 1-D integer rows")
            if int(rows.min()) < 0 or int(rows.max()) >= int(index.ntotal):
                raise ValueError(f"entry_rows must be in [0, {index.ntotal})")
            self.entries = fi.EntryPoints(index, np.unique(rows.astype(np.int64)))
        if self.settings.entry_probe and self.entries is None:
            raise ValueError("settings use entry_probe but the index has no entry points")
        if clusters is not None:
            clusters.check_fits(item_vectors.shape[0], int(index.d))
        self.clusters = clusters
        self._nlist = fi.ivf_nlist(index) if kind.startswith("ivf") else None

    @classmethod
    def load(
        cls, bundle: Path, manifest: b.Manifest | None = None, *, mmap: bool = True
    ) -> ItemIndex:
        """Load a bundle's index after verifying it (raise
        :class:`~recall.index.bundle.BundleError`).

        Checks sizes and sha256 of ``item_vectors.npy`` and ``index.faiss`` before reading
        them, refuses NaN/Inf item rows, a width other than the manifest's ``dim``, an index
        of the wrong width or size, of another kind than the manifest's or with labels
        other than the item rows (:func:`recall.index.faiss_index.check_index_matches`), search
        parameters out of bounds (:func:`recall.index.faiss_index.check_search_bounds`), or a
        missing index section. With ``mmap`` the vectors
        and the index are memory-mapped read-only (pages shared between processes).
        ``manifest``: the bundle's manifest when the caller has already read it.
        """
        manifest = manifest or b.read_manifest(bundle)
        section = manifest.index
        if section is None:
            raise b.BundleError(f"{bundle}: no index (run `recall build-index {bundle}`)")
        try:
            kind = fi.check_kind(str(section.get("kind")))
            settings = fi.SearchSettings.from_manifest(dict(section.get("search_params", {})))
            index_dim = int(section["index_dim"])
            entry = section.get("entry_rows")
            entry_rows = None if entry is None else np.asarray(entry, dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise b.BundleError(f"{bundle}: invalid index section in the manifest: {e}") from None
        items = b.load_array(bundle, manifest, b.ITEM_VECTORS, mmap=mmap)
        check_vectors(bundle, b.ITEM_VECTORS, items, manifest.counts.items, manifest.dim)
        path = b.verify_file(bundle, manifest, b.INDEX)
        try:
            index = fi.read_index(path, mmap=mmap)
        except RuntimeError as e:
            raise b.BundleError(f"{bundle}: {b.INDEX} cannot be read: {e}") from None
        if int(index.d) != index_dim:
            raise b.BundleError(f"{bundle}: {b.INDEX} has width {index.d}, expected {index_dim}")
        if int(index.ntotal) != manifest.counts.items:
            raise b.BundleError(
                f"{bundle}: {b.INDEX} holds {index.ntotal} vectors, "
                f"the bundle has {manifest.counts.items} items"
            )
        if index_dim < manifest.dim:
            raise b.BundleError(f"{bundle}: index width {index_dim} < dim {manifest.dim}")
        try:
            fi.check_index_matches(index, kind)
        except ValueError as e:
            raise b.BundleError(f"{bundle}: {b.INDEX} {e}") from None
        clusters = None
        if b.ITEM_CLUSTERS in manifest.files:
            try:
                clusters = ItemClusters.from_arrays(b.map_arrays(bundle, manifest, b.ITEM_CLUSTERS))
                clusters.check_fits(manifest.counts.items, index_dim)
            except ValueError as e:
                raise b.BundleError(f"{bundle}: {b.ITEM_CLUSTERS}: {e}") from None
        try:
            loaded = cls(index, items, kind, settings, entry_rows, clusters)
            entries = 0 if loaded.entries is None else loaded.entries.rows.size
            fi.check_search_bounds(settings, kind, loaded._nlist, entries)
        except ValueError as e:
            raise b.BundleError(f"{bundle}: invalid index section in the manifest: {e}") from None
        logger.info("loaded %s index of %s (%d items)", kind, bundle, index.ntotal)
        return loaded

    @property
    def n_items(self) -> int:
        return int(self.items.shape[0])

    @property
    def dim(self) -> int:
        """Query width (bias coordinate included)."""
        return int(self.items.shape[1])

    def search(
        self,
        queries: npt.ArrayLike,
        k: int,
        exclude: Exclude = None,
        *,
        allowed: AllowedItemsLike = None,
        settings: fi.SearchSettings | None = None,
        strategy: FilterStrategy | None = None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-``k`` items by inner product for each query, best first.

        ``queries``: (B, dim) (or (dim,) for one query), finite. ``exclude``: None or one
        entry per query, each None or a 1-D array of item rows in ``[0, n_items)`` that must
        not be returned. ``allowed``: None (every item), an :class:`AllowedItems` or a bool
        mask (n_items,) shared by every query, or (B, n_items) one per query (pass an
        :class:`AllowedItems` to reuse its prepared views across calls). ``settings``
        override the tuned ones (efSearch/nprobe/k_factor/cluster_factor); ``strategy``
        forces one for filtered queries (measurement and tests).
        Returns ``(scores (B, k') float32, rows (B, k') int64)`` with
        ``k' = min(k, fewest allowed non-excluded items of any query)``; ties go to the
        lower row. Raises ValueError on bad input. :meth:`search_detailed` also says which
        strategy answered each query.
        """
        found = self.search_detailed(
            queries, k, exclude, allowed=allowed, settings=settings, strategy=strategy
        )
        return found.scores, found.rows

    def search_detailed(
        self,
        queries: npt.ArrayLike,
        k: int,
        exclude: Exclude = None,
        *,
        allowed: AllowedItemsLike = None,
        settings: fi.SearchSettings | None = None,
        strategy: FilterStrategy | None = None,
    ) -> Found:
        """:meth:`search`, plus the strategy of each query (:data:`STRATEGIES`)."""
        q = self._check_queries(queries)
        k = _check_k(k)
        if strategy == "clusters" and self.clusters is None:
            raise ValueError("this index has no item clusters")
        excluded = self._check_exclude(exclude, q.shape[0])
        allows = self._check_allowed(allowed, q.shape[0])
        counts = [self._eligible_count(a, e) for a, e in zip(allows, excluded, strict=True)]
        k_out = min(k, min(counts, default=self.n_items))
        if k_out == 0 or q.shape[0] == 0:
            empty = Found(
                np.empty((q.shape[0], 0), np.float32),
                np.empty((q.shape[0], 0), np.int64),
                ("empty",) * q.shape[0],
            )
            return empty
        scores, rows, strategies = self._index_topk(
            q, k_out, excluded, allows, counts, settings or self.settings, strategy
        )
        for i in np.flatnonzero(rows[:, -1] < 0):
            logger.debug("query %d: the index found fewer than %d items; exact fallback", i, k_out)
            e = excluded[i]
            a = allows[i]
            mask = np.zeros((1, self.n_items), dtype=bool) if a is None else ~a.mask[None, :]
            if e is not None:
                mask[0, e] = True
            s, r = exact_topk(q[i : i + 1], self.items, k_out, mask)
            scores[i], rows[i] = s[0], r[0]
            strategies[i] = "fallback"
        return Found(scores, rows, tuple(strategies))

    def filter_strategy(
        self, eligible: int, k: int, settings: fi.SearchSettings | None = None
    ) -> FilterStrategy:
        """The strategy of a filtered query for the top ``k`` of ``eligible`` allowed,
        non-excluded items: ``scan`` (exact, over those rows) up to :attr:`scan_eligible`
        items or as many as a clusters search would score anyway; ``clusters`` (the
        allowed rows of the nearest clusters, exact) up to :attr:`clusters_max_share` of
        the catalog when the index has clusters; else ``selector`` (the index with a
        bitmap selector and widened search parameters, :func:`recall.index.faiss_index.
        widen_for_filter`)."""
        if self.clusters is None:
            return "scan" if eligible <= self.scan_eligible else "selector"
        if eligible <= max(self.scan_eligible, self._cluster_rows(k, settings or self.settings)):
            return "scan"
        return "clusters" if eligible <= self.clusters_max_share * self.n_items else "selector"

    def search_index(
        self, queries: npt.ArrayLike, k: int, *, settings: fi.SearchSettings | None = None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """What the index alone finds, for measuring it: like :meth:`search` without
        exclusions and without the exact fallback, so rows may end in -1 (score -inf)
        where the index came back short. Returns (B, min(k, n_items)) arrays."""
        q = self._check_queries(queries)
        k_out = min(_check_k(k), self.n_items)
        use = settings or self.settings
        b = q.shape[0]
        scores, rows, _ = self._index_topk(
            q, k_out, [None] * b, [None] * b, [self.n_items] * b, use, None
        )
        return scores, rows

    def _cluster_rows(self, k: int, use: fi.SearchSettings) -> int:
        """Allowed rows a clusters search scores for the top ``k``."""
        per_result = (use.cluster_factor or fi.DEFAULT_CLUSTER_FACTOR) * k
        return max(use.cluster_rows or 0, per_result)

    def _index_topk(
        self,
        q: npt.NDArray[np.float32],
        k_out: int,
        excluded: list[npt.NDArray[np.int64] | None],
        allows: list[AllowedItems | None],
        counts: list[int],
        use: fi.SearchSettings,
        force: FilterStrategy | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], list[Strategy]]:
        """Ask FAISS for ``k_out * k_factor`` candidates per query (exclusions and the
        allowed items as a selector), or scan the eligible rows (all, or those of the
        nearest clusters) exactly; re-score the candidates exactly, keep the best
        ``k_out``; -1 rows sort last. ``counts``: the eligible items of each query;
        ``force``: the strategy of every filtered query (None: :meth:`filter_strategy`)."""
        n = self.n_items
        fetch = min(k_out * use.k_factor, n)
        rows = np.full((q.shape[0], fetch), -1, dtype=np.int64)
        strategies: list[Strategy] = ["index"] * q.shape[0]
        padded = fi.pad_queries(q, int(self.index.d))
        plain = [
            i
            for i, (e, a) in enumerate(zip(excluded, allows, strict=True))
            if e is None and a is None
        ]
        if plain:
            rows[plain] = self._faiss_search(padded[plain], fetch, use, None)[1]
        for i, (e, allow) in enumerate(zip(excluded, allows, strict=True)):
            if e is None and allow is None:
                continue
            want = min(fetch, counts[i])
            if allow is None:
                assert e is not None
                if counts[i] <= self.scan_eligible:  # few items left: scan them exactly
                    eligible = np.setdiff1d(np.arange(n), e, assume_unique=True)
                    rows[i, :want] = self._scan(q[i], eligible, want)
                    strategies[i] = "scan"
                    continue
                rows[i, :want] = self._search_excluding(padded[i : i + 1], want, use, e)
                continue
            strategy = force or self.filter_strategy(counts[i], want, use)
            strategies[i] = strategy
            if strategy == "selector":
                allowed_sel = fi.AllowedSelector(allow.bitmap, e, n)
                wide = fi.widen_for_filter(self.kind, use, counts[i] / n, self._nlist)
                if self.kind in fi.QUANTIZED_KINDS:  # codes pick nothing: re-rank them all
                    probed = fi.probed_allowed(
                        self.index, padded[i : i + 1], wide.nprobe or 1, allowed_sel.selector
                    )
                    found_rows = self._scan(q[i], probed, want)
                    rows[i, : found_rows.size] = found_rows
                    continue
                found = self._faiss_search(padded[i : i + 1], want, wide, allowed_sel.selector)
                rows[i, :want] = found[1][0]
                continue
            if strategy == "scan":
                eligible = allow.rows
            else:
                assert self.clusters is not None
                take = self._cluster_rows(want, use) + (0 if e is None else e.size)
                eligible = np.sort(
                    self.clusters.candidates(padded[i], allow.groups(self.clusters), take)
                )
            if e is not None:
                eligible = eligible[~np.isin(eligible, e, assume_unique=True)]
            rows[i, :want] = self._scan(q[i], eligible, want)
        short = rows < 0
        if not short.any():  # the common case: every query got all it asked for
            scores = np.einsum("bkd,bd->bk", self.items[rows], q, dtype=np.float32)
            return (*topk_by_score(scores, rows, k_out), strategies)
        safe = np.where(short, 0, rows)
        scores = np.einsum("bkd,bd->bk", self.items[safe], q, dtype=np.float32)
        scores[short] = -np.inf
        safe[short] = _NO_ROW  # sorts after every real row among equal (-inf) scores
        top_s, top_r = topk_by_score(scores, safe, k_out)
        top_r[top_r == _NO_ROW] = -1
        return top_s, top_r, strategies

    def _scan(
        self, query: npt.NDArray[np.float32], eligible: npt.NDArray[np.int64], want: int
    ) -> npt.NDArray[np.int64]:
        """Exact top-``want`` of one query (dim,) among the sorted ``eligible`` rows (unordered;
        the caller sorts); a tie at the cut goes to the lower rows.

        Scores by ``einsum`` (the caller's re-scoring too), not BLAS: OpenBLAS's matrix-vector
        kernel gives identical rows scores that differ in the last bit (measured), which
        would break ties arbitrarily; einsum scores every row alike (and skips BLAS threads).
        """
        if want >= eligible.size:
            return eligible
        scores = np.einsum("ij,j->i", self.items[eligible], query)
        top = np.argpartition(-scores, want - 1)[:want]
        if np.count_nonzero(scores >= scores[top].min()) > want:  # tie at the cut
            top = np.argsort(-scores, kind="stable")[:want]
        return np.asarray(eligible[top], dtype=np.int64)

    def _faiss_search(
        self,
        padded: npt.NDArray[np.float32],
        k: int,
        use: fi.SearchSettings,
        selector: Any | None,
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """FAISS's (distances (B, k) float32, labels (B, k) int64) for padded queries, -1
        labels where the index came back short."""
        if use.entry_probe and self.entries is not None:
            return fi.search_hnsw_from(self.index, padded, k, self.entries, use, selector)
        params = fi.search_parameters(self.kind, use, selector)
        distances, labels = self.index.search(padded, k, params=params)
        return distances, np.asarray(labels, dtype=np.int64)

    def _search_excluding(
        self,
        padded: npt.NDArray[np.float32],
        want: int,
        use: fi.SearchSettings,
        excluded: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.int64]:
        """FAISS's top ``want`` labels (want,) for one padded query (1, index_dim) without
        the ``excluded`` rows (sorted unique). HNSW asks for ``want + len(excluded) + 1``
        items (one more, so that the cut lies before the last even when every excluded row
        is among them) and drops the excluded ones when that fits its queue (the very answer
        of a selector, :func:`recall.index.faiss_index.drop_excluded`), saving the selector
        and its checks; otherwise, or when distances tie at the cut, an ``IDSelectorNot``."""
        wide = want + excluded.size + 1
        if self.kind == "hnsw" and wide <= fi.hnsw_queue(use):
            distances, labels = self._faiss_search(padded, wide, use, None)
            kept = fi.drop_excluded(distances[0], labels[0], excluded, want)
            if kept is not None:
                return kept
        kept_alive = fi.ExclusionSelector(excluded, self.n_items)  # owns the selector's buffers
        _, labels = self._faiss_search(padded, want, use, kept_alive.selector)
        return np.asarray(labels[0], dtype=np.int64)

    def _check_queries(self, queries: npt.ArrayLike) -> npt.NDArray[np.float32]:
        try:
            q = np.asarray(queries, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f"queries must be a float array: {e}") from None
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (B, {self.dim}), got {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or Inf")
        return np.ascontiguousarray(q)

    def _check_allowed(
        self, allowed: AllowedItemsLike, n_queries: int
    ) -> list[AllowedItems | None]:
        """Each query's allowed items, None where every item is allowed (no filter)."""
        if allowed is None:
            return [None] * n_queries
        if isinstance(allowed, AllowedItems):
            if allowed.n_items != self.n_items:
                raise ValueError(
                    f"allowed covers {allowed.n_items} items, the index {self.n_items}"
                )
            return [None if allowed.everything else allowed] * n_queries
        mask = np.asarray(allowed)
        if mask.dtype != np.bool_:
            raise ValueError(f"allowed must be a bool mask, got {mask.dtype}")
        if mask.ndim == 1 and mask.shape[0] == self.n_items:
            return self._check_allowed(AllowedItems(mask), n_queries)
        if mask.shape != (n_queries, self.n_items):
            raise ValueError(
                f"allowed must have shape ({self.n_items},) or ({n_queries}, {self.n_items}), "
                f"got {mask.shape}"
            )
        return [None if row.all() else AllowedItems(row) for row in mask]

    def _eligible_count(
        self, allow: AllowedItems | None, excluded: npt.NDArray[np.int64] | None
    ) -> int:
        """Items a query may return: allowed and not excluded."""
        if allow is None:
            return self.n_items - (0 if excluded is None else excluded.size)
        if excluded is None:
            return allow.count
        return allow.count - int(np.count_nonzero(allow.mask[excluded]))

    def _check_exclude(
        self, exclude: Exclude, n_queries: int
    ) -> list[npt.NDArray[np.int64] | None]:
        if exclude is None:
            return [None] * n_queries
        if len(exclude) != n_queries:
            raise ValueError(f"exclude has {len(exclude)} entries for {n_queries} queries")
        out: list[npt.NDArray[np.int64] | None] = []
        for rows in exclude:
            if rows is None:
                out.append(None)
                continue
            arr = np.asarray(rows)
            if arr.size == 0:
                out.append(None)
                continue
            if arr.ndim != 1 or arr.dtype.kind not in "iu":
                raise ValueError(f"exclude entries must be 1-D integer rows, got {arr.dtype}")
            if arr.size > 1 and not (arr[1:] > arr[:-1]).all():  # often sorted already
                arr = np.unique(arr)
            if int(arr[0]) < 0 or int(arr[-1]) >= self.n_items:
                raise ValueError(f"exclude rows must be in [0, {self.n_items})")
            out.append(arr.astype(np.int64, copy=False))
        return out
