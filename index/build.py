"""The index builder: bundle -> ``index.faiss`` + the manifest's ``index`` section.

``build_index(bundle)`` reads the verified item vectors and builds the FAISS index chosen
by :mod:`recall.index.faiss_index` (``auto``: exact up to 50k items; above, both ``ivf-flat``
and ``hnsw`` are built and the faster one at the recall target is kept). It tunes the
search parameter (efSearch / nprobe, HNSW landmark entry points, the re-rank ``k_factor``
of quantized kinds, the clusters an HNSW index answers selective filters from and their
``cluster_factor``) on a sample of the bundle's real user vectors (its item vectors, the
queries of item-to-item recall, when it has no users) against exact brute force,
measures recall@10 / recall@k and single-query latency on a *disjoint* sample with the
chosen setting, then recall and latency under filters of ~50/10/1/0.1%
selectivity (``filtered``, :mod:`recall.index.filtered_recall`: the bundle's own attributes where
one fits, random masks otherwise), and writes ``index.faiss`` (and ``item_clusters.npz``)
and the updated manifest atomically (temp file + ``os.replace``, fsync). A build that
dies half-way never touches ``CURRENT``; at worst it leaves the bundle unpublishable
until it is rebuilt (the manifest's checksums no longer match), which
:func:`recall.index.verify.verify_bundle` refuses.
The next build removes the temp files (``.index.faiss.tmp-*``, ``.manifest.json.tmp-*``,
``.item_clusters.npz.tmp-*``) such a build leaves behind.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from recall.index import bundle as b
from recall.index import faiss_index as fi
from recall.index.allowed import AllowedItems
from recall.index.clusters import ItemClusters, build_clusters
from recall.index.current import inspect_current
from recall.index.exact import exact_topk, exact_topk_among, recall_at_k
from recall.index.filtered_recall import FilterCase, choose_filters, measure_filtered
from recall.index.publish import bundle_lock
from recall.index.search import FilterStrategy, ItemIndex, check_vectors
from recall.index.verify import load_attributes

logger = logging.getLogger(__name__)

__all__ = ["BuildOptions", "build_index", "measure_latency", "sample_query_rows", "tune_filtered"]


@dataclass(frozen=True)
class BuildOptions:
    """How to build: kind (``auto`` or one of :data:`recall.index.faiss_index.KINDS`), recall
    target at ``recall_k``, query samples for tuning and for measuring, and the build
    parameters of each kind (None = the default of :func:`recall.index.faiss_index.make_spec`)."""

    kind: str = "auto"
    target_recall: float = 0.95
    recall_k: int = 100
    sample_queries: int = 1000
    latency_queries: int = 200
    seed: int = 0
    hnsw_m: int = 32
    ef_construction: int = 40
    nlist: int | None = None
    pq_m: int | None = None

    def check(self) -> None:
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")
        if self.recall_k < 1 or self.sample_queries < 1 or self.latency_queries < 1:
            raise ValueError("recall_k, sample_queries and latency_queries must be >= 1")


def sample_query_rows(
    n_users: int, sample: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Two disjoint seeded samples of user rows: ``(tune, measure)``, each up to ``sample``.

    With fewer than two users both samples are the same (all users).
    """
    if n_users < 1:
        raise ValueError("no user vectors to tune and measure on")
    if n_users == 1:
        one = np.zeros(1, dtype=np.int64)
        return one, one
    take = min(2 * sample, n_users)
    rows = np.random.default_rng(seed).choice(n_users, size=take, replace=False)
    half = take // 2
    return np.sort(rows[:half]).astype(np.int64), np.sort(rows[half:]).astype(np.int64)


def measure_latency(
    searcher: ItemIndex,
    queries: npt.NDArray[np.float32],
    k: int,
    allowed: AllowedItems | None = None,
) -> tuple[float, float]:
    """Single-query latency of ``searcher.search`` (under the ``allowed`` mask) on one
    OpenMP thread: (p50, p99) ms."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        searcher.search(queries[:1], k, allowed=allowed)  # warm-up
        times = []
        for i in range(queries.shape[0]):
            t0 = time.perf_counter()
            searcher.search(queries[i : i + 1], k, allowed=allowed)
            times.append(time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)
    p50, p99 = np.percentile(np.asarray(times) * 1e3, [50, 99])
    return float(p50), float(p99)


def _tune(
    searcher: ItemIndex,
    ladders: list[list[fi.SearchSettings]],
    queries: npt.NDArray[np.float32],
    exact: npt.NDArray[np.int64],
    k: int,
    target: float,
) -> tuple[fi.SearchSettings, list[dict[str, Any]]]:
    """Climb each ladder until recall@k >= target; pick the fastest setting that met it
    (else the one with the best recall). Returns the choice and every measured step."""
    trials: list[tuple[fi.SearchSettings, float, float]] = []
    for ladder in ladders:
        for settings in ladder:
            t0 = time.perf_counter()
            _, rows = searcher.search_index(queries, k, settings=settings)
            seconds = time.perf_counter() - t0
            recall = recall_at_k(rows, exact, k)
            trials.append((settings, recall, seconds))
            logger.debug("tune %s: recall@%d %.4f in %.3f s", settings, k, recall, seconds)
            if recall >= target:
                break
    met = [t for t in trials if t[1] >= target]
    # a setting that needs no more probes/ef and no larger k_factor than another wins
    # without a timing contest (batch timings on a shared machine are noisy)
    frontier = [t for t in met if not any(_dominates(o[0], t[0]) for o in met if o is not t)]
    if frontier:
        best = min(frontier, key=lambda t: t[2])
    else:
        best = max(trials, key=lambda t: (t[1], -t[2]))
    log = [
        {**s.to_manifest(), f"recall_at_{k}": round(r, 4), "batch_seconds": round(sec, 4)}
        for s, r, sec in trials
    ]
    return best[0], log


def _dominates(a: fi.SearchSettings, b: fi.SearchSettings) -> bool:
    """``a`` costs no more than ``b`` on every knob, and is a different setting."""
    return a != b and all(
        (x or 0) <= (y or 0)
        for x, y in (
            (a.nprobe, b.nprobe),
            (a.ef_search, b.ef_search),
            (a.k_factor, b.k_factor),
            (a.entry_probe, b.entry_probe),
        )
    )


def build_index(bundle: Path, options: BuildOptions | None = None) -> dict[str, Any]:
    """Build, tune, measure and write the index of ``bundle``; return the index section.

    Raises :class:`~recall.index.bundle.BundleError` for a damaged or inconsistent bundle, or one
    that is ``CURRENT`` (published bundles are immutable), ValueError for bad options.
    """
    opts = options or BuildOptions()
    opts.check()
    with bundle_lock(bundle):
        if inspect_current(bundle.parent).bundle_id == bundle.name:
            raise b.BundleError(
                f"{bundle} is the CURRENT bundle; published bundles are immutable "
                "(build into a new bundle, or publish another one first)"
            )
        # temp files of a build or export that was killed: under the bundle's lock no
        # live writer can own one (only builds write into a bundle directory, holding it)
        for pattern in (f".{b.INDEX}.tmp-*", f".{b.MANIFEST}.tmp-*", f".{b.ITEM_CLUSTERS}.tmp-*"):
            for leftover in bundle.glob(pattern):
                leftover.unlink()
                logger.info("removed %s, left by a build that died", leftover)
        manifest = b.read_manifest(bundle)
        if manifest.id != bundle.name:
            raise b.BundleError(f"{bundle}: directory name differs from manifest id {manifest.id}")
        items = b.load_array(bundle, manifest, b.ITEM_VECTORS)
        check_vectors(bundle, b.ITEM_VECTORS, items, manifest.counts.items, manifest.dim)
        users = b.load_array(bundle, manifest, b.USER_VECTORS, mmap=True)
        check_vectors(bundle, b.USER_VECTORS, users, manifest.counts.users, manifest.dim)
        if not len(users):  # items only (imported item2vec, graph embeddings): their queries
            logger.info("%s has no user vectors: tuning on item vectors as queries", bundle)
            users = items
        attributes = load_attributes(bundle, manifest)
        filters = choose_filters(attributes, manifest.counts.items, opts.seed)
        section = _build(items, users, opts, filters)
        path = bundle / b.INDEX
        fi.write_index(section.pop("_index"), path)
        section["index_bytes"] = path.stat().st_size
        files = {**manifest.files, b.INDEX: b.file_entry(path)}
        clusters: ItemClusters | None = section.pop("_clusters")
        files.pop(b.ITEM_CLUSTERS, None)
        if clusters is not None:
            arrays = clusters.to_arrays()
            b.replace_atomically(bundle / b.ITEM_CLUSTERS, lambda tmp: b.save_array(tmp, arrays))
            files[b.ITEM_CLUSTERS] = b.file_entry(bundle / b.ITEM_CLUSTERS)
        updated = b.Manifest.model_validate(
            {**manifest.model_dump(), "files": files, "index": section}
        )
        b.write_json_atomic(bundle / b.MANIFEST, updated.model_dump_json(indent=2))
        if clusters is None:  # a rebuild as another kind: the old clusters are stale
            (bundle / b.ITEM_CLUSTERS).unlink(missing_ok=True)
        b.fsync_path(bundle)
    recall = section["recall"]
    logger.log(
        logging.INFO if recall["target_met"] else logging.WARNING,
        "built %s index of %s: recall@%d %.4f (target %.2f%s), p50 %.2f ms, %.1f s, %d bytes",
        section["kind"],
        bundle,
        recall["k"],
        recall[f"at_{recall['k']}"],
        recall["target"],
        "" if recall["target_met"] else ", NOT met",
        section["latency_ms"]["p50"],
        section["build_seconds"],
        section["index_bytes"],
    )
    return section


#: ``cluster_factor`` ladder (allowed rows scored per result), cheapest first.
_CLUSTER_FACTORS = (10, 15, 20, 30, 40, 60, 80)
#: ``filter_nprobe_power`` ladder (IVF nprobe x share ** -power), cheapest first.
_NPROBE_POWERS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.75, 1.0)


def tune_filtered(
    searcher: ItemIndex,
    settings: fi.SearchSettings,
    items: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    k: int,
    target: float,
    seed: int,
) -> tuple[fi.SearchSettings, list[dict[str, Any]]]:
    """``settings`` with the cheapest filtered-search knob whose strategy reaches
    recall@k >= target under seeded random filters (else the most thorough step), and
    every measured step. With item clusters: ``cluster_factor`` (and ``cluster_rows``, what
    it scores at this ``k``: a smaller k never scores fewer rows), at the largest share
    the clusters serve (the hardest: most allowed rows per cluster) and 10%. IVF:
    ``filter_nprobe_power`` of the bitmap selector at 50%, 10% and 1%. Others: unchanged."""
    if searcher.clusters is not None:
        strategy: FilterStrategy = "clusters"
        shares: tuple[float, ...] = (searcher.clusters_max_share, 0.1)
        ladder = [replace(settings, cluster_factor=f, cluster_rows=f * k) for f in _CLUSTER_FACTORS]
    elif searcher.kind.startswith("ivf"):
        strategy, shares = "selector", (0.5, 0.1, 0.01)
        ladder = [replace(settings, filter_nprobe_power=p) for p in _NPROBE_POWERS]
    else:
        return settings, []
    rng = np.random.default_rng(seed)
    cases = []
    for share in shares:
        allowed = AllowedItems(rng.random(items.shape[0]) < share)
        exact = exact_topk_among(queries, items, allowed.rows, k)
        if exact.shape[1]:
            cases.append((share, allowed, exact))
    trials: list[dict[str, Any]] = []
    for step in ladder:
        recalls = {}
        for share, allowed, exact in cases:
            k_case = exact.shape[1]
            found = searcher.search_detailed(
                queries, k_case, allowed=allowed, settings=step, strategy=strategy
            )
            recalls[f"share_{share}"] = round(recall_at_k(found.rows, exact, k_case), 4)
        trials.append({**step.to_manifest(), "strategy": strategy, f"recall_at_{k}": recalls})
        if min(recalls.values(), default=1.0) >= target:
            return step, trials
    return ladder[-1], trials


@dataclass(frozen=True)
class _Sample:
    """Query samples and their exact answers, shared by every candidate kind."""

    k: int
    tune_rows: npt.NDArray[np.int64]
    measure_rows: npt.NDArray[np.int64]
    tune_q: npt.NDArray[np.float32]
    measure_q: npt.NDArray[np.float32]
    tune_exact: npt.NDArray[np.int64]
    measure_exact: npt.NDArray[np.int64]


def _sample(
    items: npt.NDArray[np.float32], users: npt.NDArray[np.float32], opts: BuildOptions
) -> _Sample:
    k = min(opts.recall_k, items.shape[0])
    tune_rows, measure_rows = sample_query_rows(users.shape[0], opts.sample_queries, opts.seed)
    tune_q = np.ascontiguousarray(users[tune_rows])
    measure_q = np.ascontiguousarray(users[measure_rows])
    _, tune_exact = exact_topk(tune_q, items, k)
    _, measure_exact = exact_topk(measure_q, items, k)
    return _Sample(k, tune_rows, measure_rows, tune_q, measure_q, tune_exact, measure_exact)


def _build(
    items: npt.NDArray[np.float32],
    users: npt.NDArray[np.float32],
    opts: BuildOptions,
    filters: list[FilterCase],
) -> dict[str, Any]:
    """Build the chosen kind; for ``auto`` above the exact threshold, build each of
    :data:`recall.index.faiss_index.AUTO_CANDIDATES` and keep the one with the lowest measured
    single-query p50 among those that met the recall target (else the best recall)."""
    sample = _sample(items, users, opts)
    if opts.kind != "auto" or items.shape[0] <= fi.AUTO_FLAT_MAX_ITEMS:
        kind = fi.resolve_kind(opts.kind, items.shape[0])
        return _build_one(kind, items, opts, sample, filters)
    built = [_build_one(kind, items, opts, sample, filters) for kind in fi.AUTO_CANDIDATES]

    def rank(section: dict[str, Any]) -> tuple[bool, float]:
        recall = section["recall"]
        if recall["target_met"]:
            return (False, section["latency_ms"]["p50"])
        return (True, -recall[f"at_{recall['k']}"])

    chosen = min(built, key=rank)
    chosen["auto"] = {
        "candidates": [
            {
                "kind": c["kind"],
                "factory": c["factory"],
                "search_params": c["search_params"],
                f"recall_at_{sample.k}": c["recall"][f"at_{sample.k}"],
                "target_met": c["recall"]["target_met"],
                "latency_ms_p50": c["latency_ms"]["p50"],
                "build_seconds": c["build_seconds"],
            }
            for c in built
        ],
        "rule": "lowest single-query p50 among candidates meeting the recall target",
    }
    logger.info("auto: chose %s out of %s", chosen["kind"], [c["kind"] for c in built])
    return chosen


def _build_one(
    kind: fi.Kind,
    items: npt.NDArray[np.float32],
    opts: BuildOptions,
    sample: _Sample,
    filters: list[FilterCase],
) -> dict[str, Any]:
    """Build, tune and measure one kind; the section has the index under ``_index``."""
    n_items, dim = items.shape
    spec = fi.make_spec(
        kind,
        n_items,
        dim,
        hnsw_m=opts.hnsw_m,
        ef_construction=opts.ef_construction,
        nlist=opts.nlist,
        pq_m=opts.pq_m,
    )
    t0 = time.perf_counter()
    vectors, max_norm = fi.to_index_space(items, spec)
    index = fi.create_index(spec, vectors, seed=opts.seed)
    entry_rows = None
    clusters = None
    if spec.entry_points:
        entry_rows = fi.choose_entry_points(spec, vectors, seed=opts.seed)
    if kind == "hnsw":
        clusters = build_clusters(vectors, fi.default_nlist(n_items), seed=opts.seed)
    build_seconds = time.perf_counter() - t0
    del vectors
    logger.info("built %s (%s) over %d items in %.1f s", kind, spec.factory, n_items, build_seconds)

    k, k10 = sample.k, min(10, n_items)
    searcher = ItemIndex(index, items, kind, entry_rows=entry_rows, clusters=clusters)
    ladders = fi.tuning_ladders(kind, spec, k)
    settings, trials = _tune(
        searcher, ladders, sample.tune_q, sample.tune_exact, k, opts.target_recall
    )
    settings, filter_trials = tune_filtered(
        searcher, settings, items, sample.tune_q, k, opts.target_recall, opts.seed
    )
    _, found = searcher.search_index(sample.measure_q, k, settings=settings)
    recall_k = recall_at_k(found, sample.measure_exact, k)
    _, found10 = searcher.search_index(sample.measure_q, k10, settings=settings)
    recall_10 = recall_at_k(found10, sample.measure_exact, k10)
    timed = ItemIndex(index, items, kind, settings, entry_rows, clusters)
    p50, p99 = measure_latency(timed, sample.measure_q[: opts.latency_queries], k)
    filtered_q = sample.measure_q[: opts.latency_queries]
    filtered = measure_filtered(timed, items, filtered_q, k, filters, measure_latency)
    return {
        "_index": index,
        "_clusters": clusters,
        "kind": kind,
        "factory": spec.factory,
        "metric": spec.metric,
        "transform": spec.transform,
        "index_dim": spec.index_dim,
        "max_norm": max_norm,
        "build_params": spec.build,
        "search_params": settings.to_manifest(),
        "entry_rows": None if entry_rows is None else entry_rows.tolist(),
        "build_seconds": round(build_seconds, 3),
        "recall": {
            "k": k,
            "at_10": round(recall_10, 4),
            f"at_{k}": round(recall_k, 4),
            "target": opts.target_recall,
            "target_met": recall_k >= opts.target_recall,
            "queries": int(sample.measure_rows.size),
            "tune_queries": int(sample.tune_rows.size),
            "seed": opts.seed,
        },
        "latency_ms": {"p50": round(p50, 4), "p99": round(p99, 4), "threads": 1, "k": k},
        "filtered": filtered,
        "tuning": trials,
        "filter_tuning": filter_trials,
        "faiss_version": fi.faiss_version(),
        "built_at": datetime.now(UTC).isoformat(),
    }
