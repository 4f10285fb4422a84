"""Filtered search (``ItemIndex.search(..., allowed=mask)``) against a numpy oracle, for
every index kind and every strategy (exact scan, item clusters, FAISS bitmap selector)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
import pytest

from recall.index import faiss_index as fi
from recall.index.allowed import AllowedItems
from recall.index.build import BuildOptions, build_index
from recall.index.search import FILTER_STRATEGIES, FilterStrategy, ItemIndex
from recall.service.recaller import ServingBundle, Source, answer
from tests.index_data import clustered, write_vectors_bundle

N_ITEMS, N_USERS, DIM = 2000, 200, 16
K = 100  # the k the builder tunes recall for
F = TypeVar("F", bound=Callable[..., Any])


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N_ITEMS, N_USERS, DIM, seed=5)


#: The kinds whose builder makes item clusters (the ``clusters`` strategy needs them).
CLUSTERED_KINDS = ("hnsw",)
#: The kinds whose FAISS search ranks by compressed codes.
QUANTIZED_KINDS = ("ivf-sq8", "ivf-pq")


def for_kinds(*kinds: str) -> Callable[[F], F]:
    """Run the decorated test for these index kinds only (default: every kind)."""

    def mark(test: F) -> F:
        test.kinds = kinds  # type: ignore[attr-defined]
        return test

    return mark


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every kind for every test; with ``strategy``, every strategy the kind has."""
    if "built_once" not in metafunc.fixturenames:
        return
    if "strategy" not in metafunc.fixturenames:
        kinds = getattr(metafunc.function, "kinds", fi.KINDS)
        metafunc.parametrize("built_once", kinds, indirect=True, scope="module")
        return
    pairs = [
        pytest.param(kind, strategy, id=f"{kind}-{strategy}")
        for kind in fi.KINDS
        for strategy in FILTER_STRATEGIES
        if strategy != "clusters" or kind in CLUSTERED_KINDS
    ]
    metafunc.parametrize(("built_once", "strategy"), pairs, indirect=["built_once"], scope="module")


@pytest.fixture(scope="module")
def built_once(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    vectors: tuple[np.ndarray, np.ndarray],
) -> ItemIndex:
    """Each kind, built and tuned by the real builder to recall@100 0.99 unfiltered (so
    the >= 0.95 checks below do not hinge on which setting a timed tuning picked)."""
    bundle = write_vectors_bundle(tmp_path_factory.mktemp(request.param), *vectors)
    opts = BuildOptions(
        kind=request.param, target_recall=0.99, sample_queries=100, latency_queries=5
    )
    build_index(bundle, opts)
    return ItemIndex.load(bundle)


@pytest.fixture
def built(built_once: ItemIndex) -> Iterator[ItemIndex]:
    """The module's index; the strategy thresholds a test sets are undone after it."""
    yield built_once
    for name in ("scan_eligible", "clusters_max_share"):
        vars(built_once).pop(name, None)


def _oracle(
    queries: np.ndarray,
    items: np.ndarray,
    k: int,
    allowed: np.ndarray,
    exclude: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among allowed, non-excluded items: float64 scores, full stable argsort
    (ties to the lower row), written independently of index.exact."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    scores[:, ~allowed] = -np.inf
    for i, rows in enumerate(exclude or []):
        scores[i, rows] = -np.inf
    eligible = int(np.isfinite(scores).sum(axis=1).min())
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, eligible)]
    return np.take_along_axis(scores, order, 1), order


def _mask(share: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(N_ITEMS) < share


def _check_answer(
    scores: np.ndarray,
    rows: np.ndarray,
    queries: np.ndarray,
    items: np.ndarray,
    allowed: np.ndarray,
    exclude: list[np.ndarray] | None = None,
) -> None:
    """What holds for every strategy: allowed, not excluded, unique, no -1, true inner
    products, best first."""
    assert (rows >= 0).all()
    assert allowed[rows].all()
    for i, r in enumerate(rows):
        assert np.unique(r).size == r.size
        if exclude is not None:
            assert not np.isin(r, exclude[i]).any()
    np.testing.assert_allclose(
        scores, np.einsum("bkd,bd->bk", items[rows], queries), rtol=1e-5, atol=1e-5
    )
    assert (np.diff(scores, axis=1) <= 0).all()


def _recall(rows: np.ndarray, want: np.ndarray) -> float:
    return float(
        np.mean([np.intersect1d(r, w).size / w.size for r, w in zip(rows, want, strict=True)])
    )


@pytest.mark.parametrize("share", [0.5, 0.1, 0.02])
def test_filtered_topk_equals_the_oracle(
    built: ItemIndex,
    vectors: tuple[np.ndarray, np.ndarray],
    strategy: FilterStrategy,
    share: float,
) -> None:
    """Flat: equal to the oracle under every strategy. Every kind's exact scan: equal.
    ANN kinds with the bitmap selector and widened efSearch/nprobe, and HNSW's item
    clusters: recall@100 >= 0.95 against the exact filtered top-100."""
    items, users = vectors
    index = built
    allowed = _mask(share, seed=int(share * 100))
    q = users[:50]
    found = index.search_detailed(q, K, allowed=allowed, strategy=strategy)
    want_scores, want_rows = _oracle(q, items, K, allowed)
    assert found.rows.shape == (50, min(K, int(allowed.sum())))
    assert set(found.strategies) <= {strategy, "fallback"}
    _check_answer(found.scores, found.rows, q, items, allowed)
    if strategy == "scan" or index.kind == "flat":
        np.testing.assert_array_equal(found.rows, want_rows)
        np.testing.assert_allclose(found.scores, want_scores, rtol=1e-5, atol=1e-5)
    else:
        assert _recall(found.rows, want_rows) >= 0.95


@for_kinds(*QUANTIZED_KINDS)
@pytest.mark.parametrize("share", [0.5, 0.1])
def test_quantized_filtered_answers_are_exact_among_the_probed_items(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray], share: float
) -> None:
    """IVF-SQ8 and IVF-PQ under the bitmap selector re-rank every allowed item of the
    probed lists by its exact inner product (not the top ``k * k_factor`` by code
    distance): probing every list, the answer is the oracle's, rows and scores, even
    with ``k_factor`` 1; exclusions included."""
    items, users = vectors
    every_list = replace(built.settings, nprobe=fi.ivf_nlist(built.index), k_factor=1)
    allowed = _mask(share, seed=21)
    q = users[:50]
    exclude = [np.flatnonzero(allowed)[i : i + 3] for i in range(50)]
    for excl in (None, exclude):
        found = built.search_detailed(
            q, K, excl, allowed=allowed, settings=every_list, strategy="selector"
        )
        assert found.strategies == ("selector",) * 50
        want_scores, want_rows = _oracle(q, items, K, allowed, excl)
        np.testing.assert_array_equal(found.rows, want_rows)
        np.testing.assert_allclose(found.scores, want_scores, rtol=1e-5, atol=1e-5)


def test_filter_edge_cases(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray], strategy: FilterStrategy
) -> None:
    """Nothing allowed: an empty answer. One item: that item. Fewer than k: all of them,
    best first. Everything allowed: the plain unfiltered search."""
    items, users = vectors
    index = built
    q = users[:50]
    nothing = np.zeros(N_ITEMS, dtype=bool)
    scores, rows = index.search(q, K, allowed=nothing, strategy=strategy)
    assert rows.shape == (50, 0) and scores.shape == (50, 0)

    one = nothing.copy()
    one[1234] = True
    scores, rows = index.search(q, K, allowed=one, strategy=strategy)
    assert rows.tolist() == [[1234]] * 50
    np.testing.assert_allclose(scores[:, 0], q @ items[1234], rtol=1e-5, atol=1e-5)

    few = nothing.copy()
    few[[3, 500, 999, 1500, 1999]] = True
    scores, rows = index.search(q, K, allowed=few, strategy=strategy)
    _, want_rows = _oracle(q, items, K, few)
    assert rows.shape == (50, 5)
    np.testing.assert_array_equal(rows, want_rows)
    _check_answer(scores, rows, q, items, few)

    everything = ~nothing  # no filter at all: the unfiltered index answer
    found = index.search_detailed(q, K, allowed=everything, strategy=strategy)
    assert found.strategies == ("index",) * 50
    np.testing.assert_array_equal(found.rows, index.search(q, K)[1])
    _, want_rows = _oracle(q, items, K, everything)
    assert found.rows.shape == (50, K)
    _check_answer(found.scores, found.rows, q, items, everything)
    if index.kind == "flat":
        np.testing.assert_array_equal(found.rows, want_rows)
    else:  # the builder's recall target
        assert _recall(found.rows, want_rows) >= 0.95


def test_filter_combined_with_exclusions(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray], strategy: FilterStrategy
) -> None:
    """An allowed mask AND per-query exclusions (some of them allowed items, so the
    exclusion matters): never an excluded or disallowed item; exact for scans and Flat."""
    items, users = vectors
    index = built
    allowed = _mask(0.1, seed=7)
    rng = np.random.default_rng(8)
    allowed_rows = np.flatnonzero(allowed)
    q = users[:30]
    # exclude the oracle's 5 best allowed items of each query plus random rows
    _, best = _oracle(q, items, 5, allowed)
    excl = [np.concatenate([best[i], rng.choice(N_ITEMS, 40, replace=False)]) for i in range(30)]
    found = index.search_detailed(q, K, excl, allowed=allowed, strategy=strategy)
    _, want_rows = _oracle(q, items, K, allowed, excl)
    assert found.rows.shape == (30, K)
    assert set(found.strategies) <= {strategy, "fallback"}
    _check_answer(found.scores, found.rows, q, items, allowed, excl)
    if strategy == "scan" or index.kind == "flat":
        np.testing.assert_array_equal(found.rows, want_rows)
    else:
        assert _recall(found.rows, want_rows) >= 0.95
    # k wider than what is left: every remaining allowed item of the neediest query
    left = min(np.setdiff1d(allowed_rows, e).size for e in excl)
    scores, rows = index.search(q, 10_000, excl, allowed=allowed, strategy=strategy)
    assert rows.shape == (30, left)
    _check_answer(scores, rows, q, items, allowed, excl)


def test_per_query_masks_and_strategy_by_count(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    """A (B, n_items) mask filters each query by its own row; a query with few allowed
    items is scanned, one with more goes to the clusters (HNSW, up to
    ``clusters_max_share``) or to the index with a selector (Flat included), and an
    unfiltered one is plain ``index``."""
    _, users = vectors
    index = built
    index.scan_eligible = 100  # on this 2000-item catalog: <= 100 allowed items are scanned
    settings = replace(index.settings, cluster_factor=1, cluster_rows=None)  # k rows
    masks = np.stack([_mask(0.02, 1), _mask(0.3, 2), _mask(0.9, 3)])
    found = index.search_detailed(users[:3], 10, allowed=masks, settings=settings)
    middle = "clusters" if index.clusters is not None else "selector"
    assert found.strategies[0] == "scan"
    assert found.strategies[1] in (middle, "fallback")
    assert found.strategies[2] in ("selector", "fallback")
    for i in range(3):
        assert masks[i][found.rows[i]].all()
    assert index.search_detailed(users[:2], K).strategies == ("index", "index")
    assert index.filter_strategy(100, K) == "scan"
    if index.clusters is None:
        assert index.filter_strategy(101, K) == "selector"
        return
    factor = index.settings.cluster_factor  # tuned by the builder at k = K
    assert factor is not None and index.settings.cluster_rows == factor * K
    # a clusters search scores max(cluster_rows, cluster_factor * k) rows: up to that
    # many eligible items, scanning them all is the same work, and exact
    settings = replace(index.settings, cluster_factor=2, cluster_rows=300)
    assert index.filter_strategy(300, 10, settings) == "scan"
    assert index.filter_strategy(301, 10, settings) == "clusters"
    assert index.filter_strategy(400, 200, settings) == "scan"
    assert index.filter_strategy(401, 200, settings) == "clusters"
    top = int(index.clusters_max_share * N_ITEMS)
    assert index.filter_strategy(top, 1, settings) == "clusters"
    assert index.filter_strategy(top + 1, 1, settings) == "selector"


def test_prepared_filter_is_reused_and_equals_a_raw_mask(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    """An :class:`AllowedItems` answers as its raw mask does, across calls and batches,
    and keeps its views (no second bitmap or cluster grouping)."""
    _, users = vectors
    mask = _mask(0.3, 11)
    allowed = AllowedItems(mask)
    assert (built.clusters is not None) == (built.kind in CLUSTERED_KINDS)
    for strategy in FILTER_STRATEGIES:
        if strategy == "clusters" and built.clusters is None:
            continue
        raw = built.search(users[:20], K, allowed=mask, strategy=strategy)
        prepared = built.search(users[:20], K, allowed=allowed, strategy=strategy)
        np.testing.assert_array_equal(raw[1], prepared[1])
    bitmap = allowed.bitmap
    built.search(users[:5], K, allowed=allowed, strategy="selector")
    assert allowed.bitmap is bitmap
    if built.clusters is not None:
        groups = allowed.groups(built.clusters)
        built.search(users[:5], K, allowed=allowed, strategy="clusters")
        assert allowed.groups(built.clusters) is groups
    with pytest.raises(ValueError, match="covers"):
        built.search(users[:2], K, allowed=AllowedItems(np.ones(N_ITEMS + 1, dtype=bool)))
    if built.clusters is None:
        with pytest.raises(ValueError, match="no item clusters"):
            built.search(users[:2], K, allowed=allowed, strategy="clusters")


def test_invalid_masks_are_value_errors(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    _, users = vectors
    with pytest.raises(ValueError, match="bool"):
        built.search(users[:2], K, allowed=np.ones(N_ITEMS, dtype=np.int8))
    with pytest.raises(ValueError, match="shape"):
        built.search(users[:2], K, allowed=np.ones(N_ITEMS - 1, dtype=bool))
    with pytest.raises(ValueError, match="shape"):
        built.search(users[:2], K, allowed=np.ones((3, N_ITEMS), dtype=bool))


def test_widened_search_parameters() -> None:
    """HNSW efSearch grows as share**-0.75, IVF nprobe as share**-0.5, capped
    (FILTER_EF_MAX, nlist)."""
    hnsw = fi.SearchSettings(ef_search=100, entry_probe=4)
    assert fi.widen_for_filter("hnsw", hnsw, 1.0, None) == hnsw
    assert fi.widen_for_filter("hnsw", hnsw, 0.5, None).ef_search == 169  # 100 * 2**0.75
    assert fi.widen_for_filter("hnsw", hnsw, 0.1, None).ef_search == 563
    assert fi.widen_for_filter("hnsw", hnsw, 0.001, None).ef_search == fi.FILTER_EF_MAX
    assert fi.widen_for_filter("hnsw", hnsw, 0.5, None).entry_probe == 4
    ivf = fi.SearchSettings(nprobe=8, k_factor=2)
    assert fi.widen_for_filter("ivf-pq", ivf, 0.25, 64) == fi.SearchSettings(nprobe=16, k_factor=2)
    assert fi.widen_for_filter("ivf-flat", ivf, 0.01, 64).nprobe == 64  # 80, capped
    assert fi.widen_for_filter("ivf-flat", ivf, 0.1, 64).nprobe == 26
    assert fi.widen_for_filter("flat", fi.SearchSettings(), 0.01, None) == fi.SearchSettings()
    tuned = fi.SearchSettings(nprobe=8, filter_nprobe_power=0.4)  # the builder's power wins
    assert fi.widen_for_filter("ivf-flat", tuned, 0.01, 2048).nprobe == 51  # 8 * 100**0.4


def test_filtered_knobs_round_trip_through_the_manifest() -> None:
    tuned = fi.SearchSettings(
        ef_search=512, cluster_factor=20, cluster_rows=2000, filter_nprobe_power=0.4
    )
    assert fi.SearchSettings.from_manifest(tuned.to_manifest()) == tuned
    for bad in (
        {"filter_nprobe_power": 0},
        {"filter_nprobe_power": True},
        {"filter_nprobe_power": "0.4"},
        {"filter_nprobe_power": 3.0},
        {"cluster_rows": 0},
        {"cluster_factor": 2.5},
        {"cluster_factor": True},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            fi.SearchSettings.from_manifest(bad)


def test_scan_breaks_ties_at_the_cut_by_lower_row() -> None:
    """Twenty identical allowed items, k cuts through them: the lowest rows win, as in
    the oracle (a partial sort alone would pick arbitrary ones)."""
    items, users = clustered(500, 4, DIM, seed=9)
    items[100:400:15] = items[50]  # 20 copies of row 50's vector at rows 100, 115, ...
    flat = faiss.IndexFlatIP(items.shape[1])
    flat.add(items)
    index = ItemIndex(flat, items, "flat")
    allowed = np.zeros(500, dtype=bool)
    allowed[100:400:15] = True
    allowed[[1, 2, 3]] = True
    _, rows = index.search(users, 10, allowed=allowed)
    _, want = _oracle(users, items, 10, allowed)
    np.testing.assert_array_equal(rows, want)
    assert index.search_detailed(users, 10, allowed=allowed).strategies == ("scan",) * 4


def test_the_service_answers_filters_from_the_bundles_clusters(tmp_path: Path) -> None:
    """A served HNSW bundle (ServingBundle: verified, item_clusters.npz checked) answers a
    filter AND the disabled items (54% of 10,000 items: over the 4,096 a scan takes) from
    its clusters, through prepared sets; allowed, enabled items only, recall@10 >= 0.95."""
    n = 10_000
    items, users = clustered(n, 50, DIM, seed=12)
    path = write_vectors_bundle(tmp_path, items, users)
    build_index(path, BuildOptions(kind="hnsw", sample_queries=50, latency_queries=5))
    bundle = ServingBundle.load(path)
    assert bundle.index.clusters is not None
    rng = np.random.default_rng(13)
    matches = AllowedItems(rng.random(n) < 0.6)
    available = AllowedItems(rng.random(n) < 0.9)
    allowed = matches.intersect(available)
    want_mask = matches.mask & available.mask
    recalls = []
    for u in range(20):
        result = answer(bundle, 10, Source.VECTOR, users[u], np.empty(0, np.int64), allowed)
        assert result.strategy == "clusters"
        rows = bundle.item_ids.rows(result.item_ids)
        assert want_mask[rows].all()
        _, exact = _oracle(users[u : u + 1], items, 10, want_mask)
        recalls.append(np.intersect1d(rows, exact[0]).size / 10)
    assert np.mean(recalls) >= 0.95
    assert matches.intersect(available) is allowed  # kept for the next request
