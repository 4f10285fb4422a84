"""Index benchmark: kind x search parameter -> recall@100, queries/s, build time, bytes.

Runs the project's own code paths (:mod:`recall.index.faiss_index` to build, :class:`ItemIndex`
to search, so exact re-scoring is included) on structured vectors: bias-folded item rows
``[w, b]`` clustered around topics, with log-normal norms like softmax weights, and user
rows ``[u, 1]`` near a topic (ANN timings on iid Gaussian vectors mean nothing: there
HNSW is no faster than Flat at equal recall). Or, with ``--bundle``, on a trained
bundle's own item and user vectors.

    .venv/bin/python bench/index_bench.py --sizes 100000 1000000 --out bench/results/index.json

Single-thread q/s: one query per call, ``faiss.omp_set_num_threads(1)`` (the service's
setting). Batched q/s: all queries in batches of 256 on every core. Recall@k: against
exact brute force (numpy) over ``--queries`` user vectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._results import finish, header  # noqa: E402
from recall.index import bundle as b  # noqa: E402
from recall.index import faiss_index as fi  # noqa: E402
from recall.index.exact import exact_topk, recall_at_k  # noqa: E402
from recall.index.search import ItemIndex  # noqa: E402

logger = logging.getLogger("bench.index")

K = 100


def structured_vectors(
    n_items: int,
    n_users: int,
    dim: int = 64,
    seed: int = 0,
    *,
    norm_sigma: float = 0.2,
    bias_sigma: float = 0.08,
) -> tuple[np.ndarray, np.ndarray]:
    """Bias-folded items (n_items, dim + 1) and users (n_users, dim + 1), float32.

    Two-level topics (``~sqrt(n)/2`` topics in ``topics/16`` groups) around one shared
    direction, topic sizes from a Dirichlet (unequal), item directions near their topic,
    norms log-normal(0, ``norm_sigma``), bias normal(0, ``bias_sigma``); users near a
    topic, norm ~13. The defaults match a bundle trained by ``recall train`` on
    ``recall synth --items 50000`` (w norm p1/p50/p99 0.77/1.11/1.66, bias +-0.19, user
    norm ~13, median pairwise cosine 0.38). ``norm_sigma=0.35, bias_sigma=0.6`` is a
    much harder regime for HNSW (see docs/index.md).
    """
    rng = np.random.default_rng(seed)
    n_topics = max(8, round(n_items**0.5 / 2))
    n_groups = max(2, n_topics // 16)
    shared = rng.standard_normal(dim)
    groups = shared + rng.standard_normal((n_groups, dim))
    topics = groups[rng.integers(n_groups, size=n_topics)] + 0.8 * rng.standard_normal(
        (n_topics, dim)
    )
    share = rng.dirichlet(np.full(n_topics, 0.7))
    topic = rng.choice(n_topics, size=n_items, p=share)
    items = np.empty((n_items, dim + 1), dtype=np.float32)
    norm = rng.lognormal(0.0, norm_sigma, n_items)
    step = 200_000
    for s in range(0, n_items, step):
        e = min(s + step, n_items)
        w = topics[topic[s:e]] + 0.9 * rng.standard_normal((e - s, dim))
        w *= (norm[s:e] / np.linalg.norm(w, axis=1))[:, None]
        items[s:e, :dim] = w
    items[:, dim] = bias_sigma * rng.standard_normal(n_items)
    user_topic = rng.choice(n_topics, size=n_users, p=share)
    u = topics[user_topic] + 1.0 * rng.standard_normal((n_users, dim))
    u *= (rng.lognormal(np.log(13.0), 0.1, n_users) / np.linalg.norm(u, axis=1))[:, None]
    users = np.hstack([u, np.ones((n_users, 1))]).astype(np.float32)
    return items, users


def _bundle_vectors(path: Path, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    manifest = b.read_manifest(path)
    items = np.ascontiguousarray(b.load_array(path, manifest, b.ITEM_VECTORS))
    users = b.load_array(path, manifest, b.USER_VECTORS, mmap=True)
    rows = np.random.default_rng(seed).choice(users.shape[0], n_queries, replace=False)
    return items, np.ascontiguousarray(users[np.sort(rows)])


def _single_qps(index: ItemIndex, queries: np.ndarray, settings: fi.SearchSettings) -> float:
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        index.search(queries[:1], K, settings=settings)
        t0 = time.perf_counter()
        for i in range(queries.shape[0]):
            index.search(queries[i : i + 1], K, settings=settings)
        return queries.shape[0] / (time.perf_counter() - t0)
    finally:
        faiss.omp_set_num_threads(threads)


def _batch_qps(index: ItemIndex, queries: np.ndarray, settings: fi.SearchSettings) -> float:
    t0 = time.perf_counter()
    for s in range(0, queries.shape[0], 256):
        index.search(queries[s : s + 256], K, settings=settings)
    return queries.shape[0] / (time.perf_counter() - t0)


def _settings_grid(kind: fi.Kind, spec: fi.IndexSpec, n_items: int) -> list[fi.SearchSettings]:
    if kind == "flat":
        return [fi.SearchSettings()]
    if kind == "hnsw":
        efs = (128, 192, 256, 384, 512, 768)
        return [fi.SearchSettings(ef_search=ef, entry_probe=p) for p in (None, 4) for ef in efs]
    nlist = spec.build["nlist"]
    probes = [p for p in (16, 32, 64, 128, 256) if p <= nlist]
    factors = {"ivf-flat": (1,), "ivf-sq8": (1, 2), "ivf-pq": (1, 4)}[kind]
    return [fi.SearchSettings(nprobe=p, k_factor=f) for f in factors for p in probes]


def bench_kind(
    kind: fi.Kind,
    items: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    single_queries: int,
    build_opts: dict[str, int],
) -> list[dict[str, Any]]:
    """Build one index over ``items`` and measure each search setting of its grid."""
    n_items, dim = items.shape
    spec = fi.make_spec(kind, n_items, dim, **build_opts)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    vectors, _ = fi.to_index_space(items, spec)
    index = fi.create_index(spec, vectors)
    entry_rows = fi.choose_entry_points(spec, vectors) if spec.entry_points else None
    build_seconds = time.perf_counter() - t0
    del vectors
    size = fi.index_bytes(index)
    logger.info(
        "%s %s: built in %.1f s, %.1f MB", n_items, spec.factory, build_seconds, size / 2**20
    )
    searcher = ItemIndex(index, items, kind, entry_rows=entry_rows)
    rows = []
    for settings in _settings_grid(kind, spec, n_items):
        _, found = searcher.search_index(queries, K, settings=settings)
        recall = recall_at_k(found, exact, K)
        _, found10 = searcher.search_index(queries, 10, settings=settings)
        recall10 = recall_at_k(found10, exact, 10)
        single = _single_qps(searcher, queries[:single_queries], settings)
        batch = _batch_qps(searcher, queries, settings)
        row = {
            "n_items": n_items,
            "kind": kind,
            "factory": spec.factory,
            "build_params": spec.build,
            "search_params": settings.to_manifest(),
            "recall_at_100": round(recall, 4),
            "recall_at_10": round(recall10, 4),
            "qps_single_thread": round(single, 1),
            "qps_batched": round(batch, 1),
            "build_seconds": round(build_seconds, 1),
            "index_bytes": size,
            "bytes_vs_flat": round(size / (n_items * dim * 4), 3),
        }
        logger.info("%s", json.dumps(row))
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the result rows."""
    head = (
        "| items | kind | factory | search | recall@100 | recall@10 | q/s 1 thread "
        "| q/s batched | build s | MB | vs Flat |\n"
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["search_params"].items() if k != "k_factor")
        params = params.replace("entry_probe", "entry")
        if r["search_params"].get("k_factor", 1) > 1:
            params += f", k_factor={r['search_params']['k_factor']}"
        lines.append(
            f"| {r['n_items']:,} | {r['kind']} | {r['factory']} | {params or '-'} "
            f"| {r['recall_at_100']:.3f} | {r['recall_at_10']:.3f} "
            f"| {r['qps_single_thread']:,.0f} | {r['qps_batched']:,.0f} "
            f"| {r['build_seconds']:.1f} | {r['index_bytes'] / 2**20:.1f} "
            f"| {r['bytes_vs_flat']:.0%} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64, help="without the bias coordinate")
    parser.add_argument("--queries", type=int, default=1000, help="for recall and batch q/s")
    parser.add_argument("--single-queries", type=int, default=500, help="for 1-thread q/s")
    parser.add_argument("--kinds", nargs="+", default=list(fi.KINDS), choices=fi.KINDS)
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--bundle", type=Path, help="use a trained bundle's vectors instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    head = header(
        "index_bench",
        omp_threads=faiss.omp_get_max_threads(),
        numpy=np.__version__,
        faiss=faiss.__version__,
    )
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    sizes = [0] if args.bundle else args.sizes
    for n_items in sizes:
        if args.bundle:
            items, queries = _bundle_vectors(args.bundle, args.queries, args.seed)
        else:
            items, queries = structured_vectors(n_items, args.queries, args.dim, args.seed)
        norms = np.linalg.norm(items, axis=1)
        logger.info(
            "%d items x %d, norms p1/p50/p99 %s", *items.shape, np.percentile(norms, [1, 50, 99])
        )
        t0 = time.perf_counter()
        _, exact = exact_topk(queries, items, K)
        logger.info(
            "exact top-%d of %d queries in %.1f s", K, queries.shape[0], time.perf_counter() - t0
        )
        for kind in args.kinds:
            build_opts = {"hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}
            single = args.single_queries if kind != "flat" else min(args.single_queries, 100)
            rows.extend(bench_kind(kind, items, queries, exact, single, build_opts))
    result = {
        **head,
        "seconds": round(time.perf_counter() - started, 1),
        "data": str(args.bundle)
        if args.bundle
        else "structured_vectors (clustered, unequal norms)",
        "dim": int(items.shape[1]),
        "queries": args.queries,
        "single_thread_queries": args.single_queries,
        "k": K,
        "rows": rows,
    }
    finish(args.out, result, format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
