"""Filtered search (``ItemIndex.search(..., allowed=mask)``) against a numpy oracle, for
every index kind and every strategy (exact scan, FAISS bitmap selector)."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from index import faiss_index as fi
from index.build import BuildOptions, build_index
from index.search import ItemIndex
from tests.index_data import clustered, write_vectors_bundle

N_ITEMS, N_USERS, DIM = 2000, 200, 16
K = 100  # the k the builder tunes recall for


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N_ITEMS, N_USERS, DIM, seed=5)


@pytest.fixture(scope="module", params=fi.KINDS)
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
    for name in ("scan_eligible", "scan_rows", "scan_share", "hnsw_scan_share"):
        vars(built_once).pop(name, None)


def _force(index: ItemIndex, strategy: str) -> ItemIndex:
    """``index`` with one filtered strategy forced (instance attributes)."""
    if strategy == "scan":
        index.scan_share = 1.0
    else:
        index.scan_eligible, index.scan_rows, index.scan_share = 0, 0, 0.0
        index.hnsw_scan_share = 0.0
    return index


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
@pytest.mark.parametrize("strategy", ["scan", "selector"])
def test_filtered_topk_equals_the_oracle(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray], strategy: str, share: float
) -> None:
    """Flat: equal to the oracle under both strategies. Every kind's exact scan: equal.
    ANN kinds with the bitmap selector and widened efSearch/nprobe: recall@20 >= 0.95
    against the exact filtered top-20 (measured on this catalog: see the assertion)."""
    items, users = vectors
    index = _force(built, strategy)
    allowed = _mask(share, seed=int(share * 100))
    q = users[:50]
    found = index.search_detailed(q, K, allowed=allowed)
    want_scores, want_rows = _oracle(q, items, K, allowed)
    assert found.rows.shape == (50, min(K, int(allowed.sum())))
    assert set(found.strategies) <= {strategy, "fallback"}
    _check_answer(found.scores, found.rows, q, items, allowed)
    if strategy == "scan" or index.kind == "flat":
        np.testing.assert_array_equal(found.rows, want_rows)
        np.testing.assert_allclose(found.scores, want_scores, rtol=1e-5, atol=1e-5)
    else:
        assert _recall(found.rows, want_rows) >= 0.95


@pytest.mark.parametrize("strategy", ["scan", "selector"])
def test_filter_edge_cases(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray], strategy: str
) -> None:
    """Nothing allowed: an empty answer. One item: that item. Fewer than k: all of them,
    best first. Everything allowed: the plain unfiltered search."""
    items, users = vectors
    index = _force(built, strategy)
    q = users[:50]
    nothing = np.zeros(N_ITEMS, dtype=bool)
    scores, rows = index.search(q, K, allowed=nothing)
    assert rows.shape == (50, 0) and scores.shape == (50, 0)

    one = nothing.copy()
    one[1234] = True
    scores, rows = index.search(q, K, allowed=one)
    assert rows.tolist() == [[1234]] * 50
    np.testing.assert_allclose(scores[:, 0], q @ items[1234], rtol=1e-5, atol=1e-5)

    few = nothing.copy()
    few[[3, 500, 999, 1500, 1999]] = True
    scores, rows = index.search(q, K, allowed=few)
    _, want_rows = _oracle(q, items, K, few)
    assert rows.shape == (50, 5)
    np.testing.assert_array_equal(rows, want_rows)
    _check_answer(scores, rows, q, items, few)

    everything = ~nothing  # no filter at all: the unfiltered index answer
    found = index.search_detailed(q, K, allowed=everything)
    assert found.strategies == ("index",) * 50
    np.testing.assert_array_equal(found.rows, index.search(q, K)[1])
    _, want_rows = _oracle(q, items, K, everything)
    assert found.rows.shape == (50, K)
    _check_answer(found.scores, found.rows, q, items, everything)
    if index.kind == "flat":
        np.testing.assert_array_equal(found.rows, want_rows)
    else:  # the builder's recall target
        assert _recall(found.rows, want_rows) >= 0.95


@pytest.mark.parametrize("strategy", ["scan", "selector"])
def test_filter_combined_with_exclusions(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray], strategy: str
) -> None:
    """An allowed mask AND per-query exclusions (some of them allowed items, so the
    exclusion matters): never an excluded or disallowed item; exact for scans and Flat."""
    items, users = vectors
    index = _force(built, strategy)
    allowed = _mask(0.1, seed=7)
    rng = np.random.default_rng(8)
    allowed_rows = np.flatnonzero(allowed)
    q = users[:30]
    # exclude the oracle's 5 best allowed items of each query plus random rows
    _, best = _oracle(q, items, 5, allowed)
    excl = [np.concatenate([best[i], rng.choice(N_ITEMS, 40, replace=False)]) for i in range(30)]
    found = index.search_detailed(q, K, excl, allowed=allowed)
    _, want_rows = _oracle(q, items, K, allowed, excl)
    assert found.rows.shape == (30, K)
    _check_answer(found.scores, found.rows, q, items, allowed, excl)
    if strategy == "scan" or index.kind == "flat":
        np.testing.assert_array_equal(found.rows, want_rows)
    else:
        assert _recall(found.rows, want_rows) >= 0.95
    # k wider than what is left: every remaining allowed item of the neediest query
    left = min(np.setdiff1d(allowed_rows, e).size for e in excl)
    scores, rows = index.search(q, 10_000, excl, allowed=allowed)
    assert rows.shape == (30, left)
    _check_answer(scores, rows, q, items, allowed, excl)


def test_per_query_masks_and_strategy_by_count(
    built: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    """A (B, n_items) mask filters each query by its own row; with the default thresholds
    a query with few allowed items is scanned, one with many goes to the index with a
    selector (Flat included), and an unfiltered one is plain ``index``."""
    _, users = vectors
    index = built
    index.scan_eligible = 0  # the floor for exclusions only (4096 > this catalog)
    index.scan_rows = 100  # on this 2000-item catalog: <= 100 allowed items are scanned
    index.hnsw_scan_share = 0.0
    masks = np.stack([_mask(0.02, 1), _mask(0.5, 2)])
    found = index.search_detailed(users[:2], K, allowed=masks)
    assert found.strategies[0] == "scan"
    assert found.strategies[1] in ("selector", "fallback")
    for i in range(2):
        assert masks[i][found.rows[i]].all()
    assert index.search_detailed(users[:2], K).strategies == ("index", "index")
    assert index.filter_strategy(100) == "scan" and index.filter_strategy(101) == "selector"
    # HNSW: a share floor too (2% of the catalog), so a huge catalog still scans 1% filters
    index.hnsw_scan_share = 0.1
    assert index.filter_strategy(200) == ("scan" if index.kind == "hnsw" else "selector")


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
    """HNSW efSearch grows as share**-0.75, IVF nprobe as 1/share, capped (FILTER_EF_MAX,
    nlist)."""
    hnsw = fi.SearchSettings(ef_search=100, entry_probe=4)
    assert fi.widen_for_filter("hnsw", hnsw, 1.0, None) == hnsw
    assert fi.widen_for_filter("hnsw", hnsw, 0.5, None).ef_search == 169  # 100 * 2**0.75
    assert fi.widen_for_filter("hnsw", hnsw, 0.1, None).ef_search == 563
    assert fi.widen_for_filter("hnsw", hnsw, 0.001, None).ef_search == fi.FILTER_EF_MAX
    assert fi.widen_for_filter("hnsw", hnsw, 0.5, None).entry_probe == 4
    ivf = fi.SearchSettings(nprobe=8, k_factor=2)
    assert fi.widen_for_filter("ivf-pq", ivf, 0.25, 64) == fi.SearchSettings(nprobe=32, k_factor=2)
    assert fi.widen_for_filter("ivf-flat", ivf, 0.01, 64).nprobe == 64
    assert fi.widen_for_filter("flat", fi.SearchSettings(), 0.01, None) == fi.SearchSettings()


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
