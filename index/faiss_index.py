"""Every FAISS choice of the project in one place: kinds, factory strings, the MIPS
transform, search parameters and selectors, reading and writing index files.

Kinds (all rank by inner product; the scores callers see are recomputed exactly from the
item vectors, see :mod:`recall.index.search`):

- ``flat``: ``IndexFlatIP``, exact.
- ``hnsw``: ``HNSW<M>,Flat`` in L2 over the transformed vectors (below).
- ``ivf-flat`` / ``ivf-sq8`` / ``ivf-pq``: ``IVF<nlist>,{Flat,SQ8,PQ<m>}`` in L2 over the
  transformed vectors. Measured on clustered vectors of unequal norm (docs/index.md), the
  transform beats ``METRIC_INNER_PRODUCT`` for IVF too (IVF1024,Flat at 100k items,
  nprobe=64: recall@100 0.998 vs 0.913), because inner-product k-means lets a few
  large-norm centroids attract most queries.
- ``auto``: ``flat`` up to :data:`AUTO_FLAT_MAX_ITEMS` items; above, the builder builds
  every kind of :data:`AUTO_CANDIDATES` and keeps the one with the lowest measured
  single-query latency at the recall target (:mod:`recall.index.build`). Neither wins everywhere:
  on a trained bundle both reach recall@100 0.99 at ~2k q/s; on clustered synthetic
  vectors IVF reached 0.976 at 1M items where HNSW stayed below 0.91 (docs/index.md).

MIPS -> L2 transform (Bachrach et al., RecSys 2014): with ``M = max_i |x_i|`` an item
``x`` becomes ``[x, sqrt(M^2 - |x|^2)]`` and a query ``q`` becomes ``[q, 0]``. Every item
then has norm ``M`` and ``|q' - x'|^2 = |q|^2 + M^2 - 2 q.x``: the L2 order is the inner
product order. Queries only need zero padding, so a loaded index needs nothing but its
width. Product quantization also pads with zero columns to a multiple of the number of
sub-quantizers; zeros change neither inner products nor distances.

Reading uses ``IO_FLAG_MMAP_IFC`` (faiss >= 1.10): in faiss 1.15.1 it maps the file
read-only and shared (``r--s``) for Flat, HNSW (vectors and graph) and IVF lists, so
service workers share the pages; ``IO_FLAG_MMAP`` alone maps only IVF lists and copies
Flat/HNSW into anonymous memory. A mapped index must not be modified.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import faiss
import numpy as np
import numpy.typing as npt

from recall.index import bundle as b
from recall.index.clusters import kmeans_centroids

logger = logging.getLogger(__name__)

# The type stubs shipped with faiss-cpu 1.15.1 lack SearchParametersHNSW and give
# IDSelectorBitmap a (n, bitmap) signature its Python wrapper does not accept: call those
# through an untyped alias.
_faiss: Any = faiss

Kind = Literal["flat", "hnsw", "ivf-flat", "ivf-sq8", "ivf-pq"]
KINDS: tuple[Kind, ...] = get_args(Kind)
KIND_CHOICES: tuple[str, ...] = ("auto", *KINDS)
Transform = Literal["none", "mips-l2"]

#: Kinds whose index ranks by compressed codes: their filtered candidates are re-ranked
#: exactly, every one of them (:func:`probed_allowed`).
QUANTIZED_KINDS: tuple[Kind, ...] = ("ivf-sq8", "ivf-pq")

#: ``auto`` builds an exact index up to this many items: 50k x 65 floats is a ~13 MB scan,
#: about 1 ms a query on one core (memory reads ~12 GB/s on one thread of the machine
#: of docs/performance.md), and needs no tuning.
AUTO_FLAT_MAX_ITEMS = 50_000
#: What ``auto`` builds and compares above that size (ivf-flat first: it is cheap to build).
AUTO_CANDIDATES: tuple[Kind, ...] = ("ivf-flat", "hnsw")

#: Above this share of excluded items, a query's exclusions go in a bitmap (n/8 bytes)
#: rather than a hash set (IDSelectorBatch).
_BITMAP_SHARE = 1 / 64

_HNSW_EF_LADDER = (16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)
_NPROBE_LADDER = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_K_FACTORS = {"ivf-flat": (1,), "ivf-sq8": (1, 2), "ivf-pq": (1, 2, 4, 8)}
_ENTRY_PROBES = (4,)


@dataclass(frozen=True)
class IndexSpec:
    """What to build: the FAISS index over item vectors of width ``dim``.

    ``index_dim`` is the FAISS width: ``dim``, plus one for the ``mips-l2`` transform,
    plus zero padding for product quantization. ``build`` holds the build parameters
    (``M``, ``efConstruction``, ``nlist``, ``pq_m``, ``train_size``), FAISS names.
    """

    kind: Kind
    factory: str
    metric: Literal["inner_product", "l2"]
    transform: Transform
    dim: int
    index_dim: int
    build: dict[str, int]

    @property
    def entry_points(self) -> int:
        """How many landmark entry points an HNSW index gets (0: none)."""
        return self.build.get("entry_points", 0)

    @property
    def faiss_metric(self) -> int:
        ip = self.metric == "inner_product"
        return int(faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2)


@dataclass(frozen=True)
class SearchSettings:
    """Search-time parameters: ``efSearch`` (hnsw), ``nprobe`` (ivf-*), ``k_factor``,
    ``entry_probe`` (hnsw landmarks), ``cluster_factor`` (filtered search by clusters).

    ``k_factor`` > 1 fetches ``k * k_factor`` candidates and keeps the ``k`` with the best
    exact inner product (a re-rank from the item vectors, for quantized kinds).
    ``cluster_factor``, ``cluster_rows``: a filtered search by item clusters scores
    ``max(cluster_rows, cluster_factor * k)`` allowed rows (:mod:`recall.index.clusters`; the
    builder tunes the factor at its recall k and sets ``cluster_rows`` to what that k
    scores, so a smaller k keeps the tuned recall; None: :data:`DEFAULT_CLUSTER_FACTOR`,
    no minimum).
    ``filter_nprobe_power``: a filtered IVF search probes ``nprobe * share ** -power``
    lists (None: :data:`FILTER_NPROBE_POWER`).
    """

    ef_search: int | None = None
    nprobe: int | None = None
    k_factor: int = 1
    entry_probe: int | None = None
    cluster_factor: int | None = None
    cluster_rows: int | None = None
    filter_nprobe_power: float | None = None

    def to_manifest(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {"k_factor": self.k_factor}
        for name, value in (
            ("efSearch", self.ef_search),
            ("nprobe", self.nprobe),
            ("entry_probe", self.entry_probe),
            ("cluster_factor", self.cluster_factor),
            ("cluster_rows", self.cluster_rows),
            ("filter_nprobe_power", self.filter_nprobe_power),
        ):
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_manifest(cls, params: dict[str, Any]) -> SearchSettings:
        """Parse the ``search_params`` of a manifest's index section (raise ValueError)."""
        names = ("efSearch", "nprobe", "k_factor", "entry_probe", "cluster_factor", "cluster_rows")
        unknown = set(params) - {*names, "filter_nprobe_power"}
        if unknown:
            raise ValueError(f"unknown search parameter(s) {sorted(unknown)}")
        values = {k: params.get(k) for k in names}
        for name, value in values.items():
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"search parameter {name} must be an int >= 1, got {value!r}")
        power = params.get("filter_nprobe_power")
        if power is not None and (
            isinstance(power, bool) or not isinstance(power, int | float) or not 0 < power <= 2
        ):
            raise ValueError(f"filter_nprobe_power must be a number in (0, 2], got {power!r}")
        return cls(
            ef_search=values["efSearch"],
            nprobe=values["nprobe"],
            k_factor=values["k_factor"] or 1,
            entry_probe=values["entry_probe"],
            cluster_factor=values["cluster_factor"],
            cluster_rows=values["cluster_rows"],
            filter_nprobe_power=None if power is None else float(power),
        )


def resolve_kind(kind: str, n_items: int) -> Kind:
    """The concrete kind for ``kind`` (one of :data:`KIND_CHOICES`) and a catalog size;
    ``auto`` above :data:`AUTO_FLAT_MAX_ITEMS` resolves to the first of
    :data:`AUTO_CANDIDATES` (the builder measures them all)."""
    if kind == "auto":
        return "flat" if n_items <= AUTO_FLAT_MAX_ITEMS else AUTO_CANDIDATES[0]
    return check_kind(kind)


def default_nlist(n_items: int) -> int:
    """IVF list count: a power of two near ``4 sqrt(n)``, at most ``n / 39`` (k-means needs
    about 39 training points per centroid)."""
    target = max(1.0, min(4.0 * math.sqrt(n_items), n_items / 39.0))
    return 1 << math.floor(math.log2(target))


def make_spec(
    kind: Kind,
    n_items: int,
    dim: int,
    *,
    hnsw_m: int = 32,
    ef_construction: int = 40,
    nlist: int | None = None,
    pq_m: int | None = None,
) -> IndexSpec:
    """The :class:`IndexSpec` of ``kind`` for ``n_items`` vectors of width ``dim``."""
    if kind == "flat":
        return IndexSpec(kind, "Flat", "inner_product", "none", dim, dim, {})
    d = dim + 1  # the mips-l2 coordinate
    if kind == "hnsw":
        if hnsw_m < 2 or ef_construction < 1:
            raise ValueError("hnsw needs M >= 2 and efConstruction >= 1")
        entry = min(n_items, max(16, min(1024, round(math.sqrt(n_items)))))
        build = {"M": hnsw_m, "efConstruction": ef_construction, "entry_points": entry}
        return IndexSpec(kind, f"HNSW{hnsw_m},Flat", "l2", "mips-l2", dim, d, build)
    lists = nlist if nlist is not None else default_nlist(n_items)
    if not 1 <= lists <= n_items:
        raise ValueError(f"nlist must be in [1, {n_items}], got {lists}")
    if kind == "ivf-flat":
        code = "Flat"
    elif kind == "ivf-sq8":
        code = "SQ8"
    else:
        m = pq_m if pq_m is not None else math.ceil(d / 2)
        if m < 1:
            raise ValueError(f"pq_m must be >= 1, got {m}")
        if n_items < 256:
            raise ValueError(f"ivf-pq needs >= 256 items to train its codebooks, got {n_items}")
        d = math.ceil(d / m) * m
        code = f"PQ{m}x8"
    train = min(n_items, max(64 * lists, 65_536 if kind == "ivf-pq" else 0))
    build = {"nlist": lists, "train_size": train}
    if kind == "ivf-pq":
        build["pq_m"] = int(code[2:-2])
    return IndexSpec(kind, f"IVF{lists},{code}", "l2", "mips-l2", dim, d, build)


def to_index_space(
    items: npt.NDArray[np.float32], spec: IndexSpec
) -> tuple[npt.NDArray[np.float32], float]:
    """Item vectors (n, dim) -> FAISS input (n, index_dim) float32, and the max norm ``M``.

    Applies the ``mips-l2`` coordinate ``sqrt(M^2 - |x|^2)`` (computed in float64) when the
    spec asks for it, then zero padding.
    """
    n = items.shape[0]
    out = np.zeros((n, spec.index_dim), dtype=np.float32)
    out[:, : spec.dim] = items
    max_norm = 0.0
    if spec.transform == "mips-l2":
        sq = np.einsum("ij,ij->i", items, items, dtype=np.float64)
        max_norm = float(np.sqrt(sq.max())) if n else 0.0
        out[:, spec.dim] = np.sqrt(np.maximum(max_norm * max_norm - sq, 0.0))
    return out, max_norm


def pad_queries(queries: npt.NDArray[np.float32], index_dim: int) -> npt.NDArray[np.float32]:
    """Queries (B, dim) -> (B, index_dim) float32, C-contiguous, zero-padded."""
    if queries.shape[1] == index_dim:
        return np.ascontiguousarray(queries, dtype=np.float32)
    out = np.zeros((queries.shape[0], index_dim), dtype=np.float32)
    out[:, : queries.shape[1]] = queries
    return out


def create_index(spec: IndexSpec, vectors: npt.NDArray[np.float32], *, seed: int = 0) -> Any:
    """Train (on a seeded sample) and fill a FAISS index; ``vectors`` are (n, index_dim).

    Row ``i`` of ``vectors`` gets FAISS label ``i``.
    """
    index: Any = faiss.index_factory(spec.index_dim, spec.factory, spec.faiss_metric)
    if spec.kind == "hnsw":
        index.hnsw.efConstruction = spec.build["efConstruction"]
    if not index.is_trained:
        ivf: Any = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        if spec.kind == "ivf-pq":
            # on by default from the factory, unused by our search, and slow to train
            index.do_polysemous_training = False
        rng = np.random.default_rng(seed)
        n_train = spec.build["train_size"]
        sample = vectors
        if n_train < vectors.shape[0]:
            sample = vectors[np.sort(rng.choice(vectors.shape[0], n_train, replace=False))]
        index.train(np.ascontiguousarray(sample))
    index.add(np.ascontiguousarray(vectors))
    return index


def choose_entry_points(spec: IndexSpec, vectors: npt.NDArray[np.float32], *, seed: int = 0) -> Any:
    """Landmark items for HNSW entry: the item nearest each of ``spec.entry_points`` k-means
    centroids of the index-space ``vectors`` (n, index_dim). Returns sorted unique int64 rows.

    FAISS's HNSW enters level 0 at one point found greedily from the top of the graph; on
    clustered vectors after the MIPS transform that walk can end in the wrong cluster
    (measured: 3-10% of queries with recall@100 < 0.3 at 100k items). Starting from the
    landmarks nearest the query (``SearchSettings.entry_probe``) removes those misses.
    """
    n = vectors.shape[0]
    count = spec.entry_points
    if count >= n:
        return np.arange(n, dtype=np.int64)
    centroids = kmeans_centroids(vectors, count, seed=seed)
    _, nearest = faiss.knn(centroids, vectors, 1)
    return np.unique(nearest[:, 0]).astype(np.int64)


class EntryPoints:
    """Landmark rows of an HNSW index and their index-space vectors (read from the index)."""

    def __init__(self, index: Any, rows: npt.NDArray[np.int64]) -> None:
        """``rows``: unique int64 labels in ``[0, index.ntotal)``."""
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.labels = self.rows.astype(np.int32)  # FAISS's node ids
        self.vectors = np.vstack([index.reconstruct(int(r)) for r in self.rows]).astype(np.float32)
        self.sq_norms = np.einsum("ij,ij->i", self.vectors, self.vectors)

    def nearest(
        self, padded: npt.NDArray[np.float32], probe: int
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]]:
        """The ``probe`` landmarks nearest (L2) each padded query (B, index_dim):
        ``(labels (B, probe) int32, squared distances (B, probe) float32)``, C-contiguous."""
        probe = min(probe, self.rows.size)
        d = (padded * padded).sum(1)[:, None] + self.sq_norms[None, :] - 2 * padded @ self.vectors.T
        if probe == d.shape[1]:
            return np.ascontiguousarray(np.broadcast_to(self.labels, d.shape)), d
        top = np.argpartition(d, probe - 1, axis=1)[:, :probe]
        if len(d) == 1:  # one query (the service's): plain indexing, no take_along_axis
            return self.labels[top], d[:, top[0]]
        return self.labels[top], np.take_along_axis(d, top, 1)


def search_hnsw_from(
    index: Any,
    padded: npt.NDArray[np.float32],
    k: int,
    entries: EntryPoints,
    settings: SearchSettings,
    selector: Any | None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """HNSW level-0 search of padded queries (B, index_dim) from their nearest landmarks,
    one shared candidate queue per query. Returns (squared L2 distances (B, k) float32,
    labels (B, k) int64), ascending, -1 labels when short."""
    probe = settings.entry_probe or 1
    nearest, nearest_d = entries.nearest(padded, probe)
    n = padded.shape[0]
    distances = np.empty((n, k), dtype=np.float32)
    labels = np.empty((n, k), dtype=np.int64)
    params = search_parameters("hnsw", settings, selector)
    x = np.ascontiguousarray(padded, dtype=np.float32)
    index.search_level_0(
        n,
        faiss.swig_ptr(x),
        k,
        faiss.swig_ptr(nearest),
        faiss.swig_ptr(nearest_d),
        faiss.swig_ptr(distances),
        faiss.swig_ptr(labels),
        nearest.shape[1],
        2,  # search_type 2: all entry points in one queue
        params,
    )
    return distances, labels


def search_parameters(kind: Kind, settings: SearchSettings, selector: Any | None) -> Any:
    """The ``faiss.SearchParameters*`` of one search: without a selector one shared object
    per (kind, settings), which FAISS only reads (never set anything on it); with one, a
    fresh object for this call."""
    if selector is None:
        return _shared_parameters(kind, settings)
    params = _new_parameters(kind, settings)
    params.sel = selector
    return params


@functools.lru_cache(maxsize=64)
def _shared_parameters(kind: Kind, settings: SearchSettings) -> Any:
    return _new_parameters(kind, settings)


def _new_parameters(kind: Kind, settings: SearchSettings) -> Any:
    if kind == "hnsw":
        params = _faiss.SearchParametersHNSW()
        if settings.ef_search is not None:
            params.efSearch = settings.ef_search
    elif kind.startswith("ivf"):
        params = faiss.SearchParametersIVF()
        if settings.nprobe is not None:
            params.nprobe = settings.nprobe
    else:
        params = faiss.SearchParameters()
    return params


@functools.lru_cache(maxsize=64)
def hnsw_queue(settings: SearchSettings) -> int:
    """The ``efSearch`` an HNSW search with ``settings`` runs with (FAISS's default for
    ``SearchParametersHNSW`` when unset)."""
    return int(_shared_parameters("hnsw", settings).efSearch)


def drop_excluded(
    distances: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    excluded: npt.NDArray[np.int64],
    want: int,
) -> npt.NDArray[np.int64] | None:
    """The first ``want`` labels (-1 padded) that are not ``excluded`` (sorted unique rows)
    of one HNSW answer (distances (m,) ascending, labels (m,)) asked for ``m > want +
    len(excluded)`` items without a selector, when that is exactly what FAISS answers for
    ``want`` items with an ``IDSelectorNot(excluded)``; None when it may not be.

    Why it is the same answer (faiss/impl/HNSW.cpp, ``search_from_candidates``): the walk
    (candidate queue, visited nodes, stopping rule) never looks at the selector nor at k
    while ``k <= efSearch`` (the queue holds ``max(efSearch, k)``); the selector only gates
    the result heap, a bounded heap that keeps a node when it is strictly nearer than its
    current worst. So both heaps draw from the same visited nodes: the selector's keeps the
    ``want`` nearest non-excluded ones, this one the ``m`` nearest of all, which hold them
    (at most ``len(excluded)`` of the ``m`` are excluded) when the ``want``-th is strictly
    nearer than the ``m``-th. The two can differ only when distances tie at the cut (which
    of the tied nodes a bounded heap keeps depends on the order they came and left in):
    then None, and the caller asks FAISS with the selector."""
    if excluded.size:
        at = np.minimum(np.searchsorted(excluded, labels), excluded.size - 1)
        keep = (labels >= 0) & (excluded[at] != labels)
    else:
        keep = labels >= 0
    members = np.flatnonzero(keep)
    if members.size < want:  # the walk reached fewer nodes than asked: all of them are here
        out = np.full(want, -1, dtype=np.int64)
        out[: members.size] = labels[members]
        return out
    cut = distances[members[want - 1]]
    if labels[-1] >= 0 and not cut < distances[-1]:
        return None  # a node tied with the cut may have been left out of the m
    if members.size > want and not distances[members[want]] > cut:
        return None  # two non-excluded nodes tie at the cut
    return labels[members[:want]]


def probed_allowed(
    index: Any, padded_query: npt.NDArray[np.float32], nprobe: int, selector: Any
) -> npt.NDArray[np.int64]:
    """Every item of an IVF index's ``nprobe`` lists nearest ``padded_query`` (1, index_dim)
    that ``selector`` passes, ascending rows (m,) int64: a range search with an unbounded
    radius, so the codes' approximate distances choose nothing."""
    params = faiss.SearchParametersIVF()
    params.nprobe = nprobe
    params.sel = selector
    _, _, labels = index.range_search(padded_query, float(np.finfo(np.float32).max), params=params)
    return np.sort(np.asarray(labels, dtype=np.int64))


class ExclusionSelector:
    """``IDSelectorNot`` over the rows to exclude: a hash set (``IDSelectorBatch``) for a few
    rows, a bitmap (``IDSelectorBitmap``, n/8 bytes) for many. Keeps its buffers alive."""

    def __init__(self, rows: npt.NDArray[np.int64], n_items: int) -> None:
        """``rows``: unique int64 item rows in ``[0, n_items)``."""
        self._bitmap: npt.NDArray[np.uint8] | None = None
        if rows.size > n_items * _BITMAP_SHARE:
            mask = np.zeros(n_items, dtype=bool)
            mask[rows] = True
            self._bitmap = np.packbits(mask, bitorder="little")
            # one-argument form: n = len(bitmap) bytes; the wrapper keeps the array alive
            self._inner: Any = _faiss.IDSelectorBitmap(self._bitmap)
        else:
            self._inner = _faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
        self.selector = faiss.IDSelectorNot(self._inner)


class AllowedSelector:
    """``IDSelectorBitmap`` over the items a query may return, AND not the excluded rows
    (:class:`ExclusionSelector`) when there are any. Keeps its buffers alive."""

    def __init__(
        self,
        bitmap: npt.NDArray[np.uint8],
        excluded: npt.NDArray[np.int64] | None = None,
        n_items: int = 0,
    ) -> None:
        """``bitmap``: the allowed items, packed little-endian (:attr:`recall.index.allowed.
        AllowedItems.bitmap`); ``excluded``: unique rows in ``[0, n_items)``."""
        self._bitmap = bitmap
        self._allowed: Any = _faiss.IDSelectorBitmap(bitmap)
        self._excluded = None if excluded is None else ExclusionSelector(excluded, n_items)
        self.selector: Any = self._allowed
        if self._excluded is not None:
            self.selector = _faiss.IDSelectorAnd(self._allowed, self._excluded.selector)


#: Filtered HNSW search: efSearch grows as ``ef / share ** FILTER_EF_POWER`` up to
#: ``FILTER_EF_MAX`` (the walk crosses every node, only allowed ones enter the results).
#: Measured at 200k clustered items (tuned ef 256, recall@100 0.959 unfiltered): at 50%
#: ef 512 gave 0.970, at 10% ef 1024 0.952 and 2048 0.989; ``1/sqrt(share)`` fell short
#: at 10%, ``1/share`` overshot, so 0.75.
FILTER_EF_POWER = 0.75
FILTER_EF_MAX = 4096
#: Filtered IVF search: nprobe grows as ``nprobe / share ** power`` (the index builder
#: tunes ``SearchSettings.filter_nprobe_power``; this is the default). IVF checks the
#: selector before computing a distance, so a wider probe costs mostly list walking.
#: Measured at 1M clustered items (IVF2048, nprobe 8, recall@100 0.94): 0.5 gave 0.96 at
#: 50%, 0.98 at 10%, 0.997 at 1%; 0.4 gave 0.952, 0.968, 0.969 at 10-20% more q/s.
FILTER_NPROBE_POWER = 0.5
#: Allowed rows per result a clusters search scores when the builder did not tune it.
DEFAULT_CLUSTER_FACTOR = 30


def widen_for_filter(
    kind: Kind, settings: SearchSettings, share: float, nlist: int | None
) -> SearchSettings:
    """Search settings for a query restricted to ``share`` (0, 1] of the items by a
    selector: HNSW efSearch scaled by ``share ** -FILTER_EF_POWER`` (capped at
    :data:`FILTER_EF_MAX`), IVF nprobe by ``share ** -settings.filter_nprobe_power``
    (default :data:`FILTER_NPROBE_POWER`, capped at ``nlist``)."""
    share = min(1.0, max(share, 1e-9))
    if kind == "hnsw":
        ef = settings.ef_search or 16
        wide = max(ef, min(FILTER_EF_MAX, math.ceil(ef / share**FILTER_EF_POWER)))
        return replace(settings, ef_search=wide)
    if kind.startswith("ivf"):
        probe = settings.nprobe or 1
        power = settings.filter_nprobe_power or FILTER_NPROBE_POWER
        wide = math.ceil(probe / share**power)
        return replace(settings, nprobe=max(probe, min(nlist or wide, wide)))
    return settings


def ivf_nlist(index: Any) -> int:
    """The number of inverted lists of an IVF index."""
    return int(faiss.extract_index_ivf(index).nlist)


def index_bytes(index: Any) -> int:
    """Serialized size of a FAISS index, bytes."""
    return int(faiss.serialize_index(index).size)


def write_index(index: Any, path: Path) -> None:
    """Write ``index`` to ``path`` atomically (:func:`recall.index.bundle.replace_atomically`)."""
    b.replace_atomically(path, lambda tmp: faiss.write_index(index, str(tmp)))


def read_index(path: Path, *, mmap: bool = True) -> Any:
    """Read an index file, memory-mapped read-only and shared when ``mmap``.

    Call only on a file whose size and sha256 were verified
    (:func:`recall.index.bundle.verify_file`).
    """
    flags = faiss.IO_FLAG_MMAP_IFC if mmap else 0
    return faiss.read_index(str(path), flags)


def tuning_ladders(kind: Kind, spec: IndexSpec, k: int) -> list[list[SearchSettings]]:
    """Search settings to try for results of size ``k``: one ladder per ``k_factor``, each
    cheapest first (the builder climbs each until the recall target is met)."""
    if kind == "flat":
        return [[SearchSettings()]]
    if kind == "hnsw":
        efs = sorted({max(ef, k) for ef in (*_HNSW_EF_LADDER, 1536, 2048)})
        probes: tuple[int | None, ...] = (None, *_ENTRY_PROBES) if spec.entry_points else (None,)
        return [[SearchSettings(ef_search=ef, entry_probe=p) for ef in efs] for p in probes]
    nlist = spec.build["nlist"]
    nprobes = sorted({min(p, nlist) for p in _NPROBE_LADDER} | {nlist})
    return [[SearchSettings(nprobe=p, k_factor=f) for p in nprobes] for f in _K_FACTORS[kind]]


def faiss_version() -> str:
    return str(faiss.__version__)


def check_kind(value: str) -> Kind:
    """Raise ValueError unless ``value`` is a concrete kind."""
    if value not in KINDS:
        raise ValueError(f"unknown index kind {value!r}; choose one of {', '.join(KIND_CHOICES)}")
    return value


#: The FAISS classes a file of each kind reads back as (``read_index`` returns Flat as
#: ``IndexFlatIP``); anything else, an ``IndexIDMap`` included, is not what the kind says.
_CLASSES: dict[Kind, tuple[str, ...]] = {
    "flat": ("IndexFlat", "IndexFlatIP"),
    "hnsw": ("IndexHNSWFlat",),
    "ivf-flat": ("IndexIVFFlat",),
    "ivf-sq8": ("IndexIVFScalarQuantizer",),
    "ivf-pq": ("IndexIVFPQ",),
}
#: The largest ``efSearch`` a manifest may ask for: FAISS keeps an ``efSearch``-long queue
#: per query (the builder tunes up to 2048; filtered search widens to FILTER_EF_MAX).
MAX_EF_SEARCH = 1 << 16
#: The largest ``k_factor`` (candidates fetched per result; the builder tunes up to 8).
MAX_K_FACTOR = 64


def check_index_matches(index: Any, kind: Kind) -> None:
    """Raise ValueError unless the FAISS ``index`` is what ``kind`` builds: its class, its
    metric (inner product for flat, L2 over the transformed vectors otherwise) and, for IVF,
    a quantizer of ``nlist`` centroids and inverted lists whose labels are each row
    ``0..ntotal-1`` exactly once (Flat and HNSW label rows implicitly)."""
    name = type(index).__name__
    if name not in _CLASSES[kind]:
        wanted = " or ".join(_CLASSES[kind])
        raise ValueError(f"is a {name}, the manifest's kind {kind} is {wanted}")
    metric = faiss.METRIC_INNER_PRODUCT if kind == "flat" else faiss.METRIC_L2
    if int(index.metric_type) != metric:
        raise ValueError(f"has metric {index.metric_type}, kind {kind} needs {metric}")
    if kind.startswith("ivf"):
        _check_ivf_labels(faiss.extract_index_ivf(index), int(index.ntotal))


def _check_ivf_labels(ivf: Any, n: int) -> None:
    """The inverted lists of ``ivf`` hold each label of ``0..n-1`` exactly once."""
    if int(ivf.quantizer.ntotal) != int(ivf.nlist):
        raise ValueError(f"has {ivf.quantizer.ntotal} centroids for {ivf.nlist} lists")
    seen = np.zeros(n, dtype=bool)
    lists = ivf.invlists
    for j in range(int(ivf.nlist)):
        size = int(lists.list_size(j))
        if size == 0:
            continue
        pointer = lists.get_ids(j)
        ids = faiss.rev_swig_ptr(pointer, size).astype(np.int64)  # a copy
        lists.release_ids(j, pointer)
        if int(ids.min()) < 0 or int(ids.max()) >= n:
            raise ValueError(f"labels items outside rows [0, {n}) (list {j})")
        if seen[ids].any() or np.unique(ids).size != size:
            raise ValueError(f"labels an item row twice (list {j})")
        seen[ids] = True
    if not seen.all():
        raise ValueError(f"leaves item row {int(np.flatnonzero(~seen)[0])} unlabelled")


def check_search_bounds(
    settings: SearchSettings, kind: Kind, nlist: int | None, entry_points: int
) -> None:
    """Raise ValueError unless ``settings`` are sane for an index of ``kind`` with ``nlist``
    inverted lists (IVF) and ``entry_points`` landmarks (HNSW): ``efSearch`` <=
    :data:`MAX_EF_SEARCH`, ``nprobe`` <= nlist, ``entry_probe`` <= entry_points,
    ``k_factor`` <= :data:`MAX_K_FACTOR`."""
    if settings.ef_search is not None and settings.ef_search > MAX_EF_SEARCH:
        raise ValueError(f"efSearch {settings.ef_search} is above {MAX_EF_SEARCH}")
    if settings.nprobe is not None and nlist is not None and settings.nprobe > nlist:
        raise ValueError(f"nprobe {settings.nprobe} is above the index's {nlist} lists")
    if settings.entry_probe is not None and settings.entry_probe > max(entry_points, 1):
        raise ValueError(
            f"entry_probe {settings.entry_probe} is above the index's {entry_points} entry points"
        )
    if settings.k_factor > MAX_K_FACTOR:
        raise ValueError(f"k_factor {settings.k_factor} is above {MAX_K_FACTOR}")
