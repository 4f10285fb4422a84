"""Search over a built index: exact equality for Flat, exclusions, validation, threads."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from recall.index import faiss_index as fi
from recall.index.build import BuildOptions, build_index
from recall.index.exact import exact_topk, exact_topk_among
from recall.index.search import ItemIndex
from tests.index_data import clustered, write_vectors_bundle

N_ITEMS, N_USERS, DIM = 2000, 300, 16


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N_ITEMS, N_USERS, DIM, seed=3)


def _built(root: Path, vectors: tuple[np.ndarray, np.ndarray], kind: str) -> ItemIndex:
    bundle = write_vectors_bundle(root, *vectors)
    build_index(bundle, BuildOptions(kind=kind, sample_queries=100, latency_queries=10))
    index = ItemIndex.load(bundle)
    index.scan_eligible = 0  # always exercise the FAISS selector path here
    return index


@pytest.fixture(scope="module")
def flat(
    tmp_path_factory: pytest.TempPathFactory, vectors: tuple[np.ndarray, np.ndarray]
) -> ItemIndex:
    return _built(tmp_path_factory.mktemp("flat"), vectors, "flat")


@pytest.fixture(scope="module")
def hnsw(
    tmp_path_factory: pytest.TempPathFactory, vectors: tuple[np.ndarray, np.ndarray]
) -> ItemIndex:
    return _built(tmp_path_factory.mktemp("hnsw"), vectors, "hnsw")


def _numpy_topk(
    queries: np.ndarray, items: np.ndarray, k: int, exclude: list[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle, written independently of index.exact: full argsort of q @ items.T."""
    scores = queries.astype(np.float64) @ items.astype(np.float64).T
    if exclude is not None:
        for i, rows in enumerate(exclude):
            scores[i, rows] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def test_flat_equals_numpy_exact_topk(
    flat: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = vectors
    scores, rows = flat.search(users, 100)
    want_scores, want_rows = _numpy_topk(users, items, 100)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    assert scores.shape == rows.shape == (N_USERS, 100)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert flat.kind == "flat"


def test_index_exact_agrees_with_numpy(vectors: tuple[np.ndarray, np.ndarray]) -> None:
    items, users = vectors
    scores, rows = exact_topk(users, items, 50)
    want_scores, want_rows = _numpy_topk(users, items, 50)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_exact_topk_breaks_ties_by_lower_row() -> None:
    items = np.ones((6, 2), dtype=np.float32)
    items[4] = 2.0
    scores, rows = exact_topk(np.ones((1, 2), dtype=np.float32), items, 3)
    np.testing.assert_array_equal(rows, [[4, 0, 1]])
    np.testing.assert_array_equal(scores, [[4.0, 2.0, 2.0]])


def _exclusions(rng: np.random.Generator, n_queries: int) -> list[np.ndarray]:
    # sizes cover the hash-set selector (few rows) and the bitmap selector (many rows)
    sizes = rng.choice([0, 1, 5, 40, 300, 1500], size=n_queries)
    return [rng.choice(N_ITEMS, size=s, replace=False) for s in sizes]


def test_flat_with_exclusions_equals_brute_force(
    flat: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = vectors
    excl = _exclusions(np.random.default_rng(0), 60)
    scores, rows = flat.search(users[:60], 100, exclude=excl)
    want_scores, want_rows = _numpy_topk(users[:60], items, 100, excl)
    assert rows.shape == (60, 100)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_hnsw_with_exclusions_returns_k_items_none_excluded(
    hnsw: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = vectors
    excl = _exclusions(np.random.default_rng(1), 60)
    scores, rows = hnsw.search(users[:60], 100, exclude=excl)
    assert rows.shape == (60, 100)
    assert (rows >= 0).all()
    for i, e in enumerate(excl):
        assert not np.isin(rows[i], e).any()
        assert np.unique(rows[i]).size == 100
    # scores are the true inner products, sorted
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", items[rows], users[:60]), rtol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_hnsw_scores_are_true_inner_products(
    hnsw: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = vectors
    scores, rows = hnsw.search(users[:20], 10)
    np.testing.assert_allclose(scores, np.einsum("bkd,bd->bk", items[rows], users[:20]), rtol=1e-5)


@pytest.mark.parametrize("fixture", ["flat", "hnsw"])
def test_few_eligible_items_are_scanned_exactly_and_k_shrinks(
    request: pytest.FixtureRequest, fixture: str, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    loaded: ItemIndex = request.getfixturevalue(fixture)
    index = ItemIndex(loaded.index, loaded.items, loaded.kind, loaded.settings)
    assert index.scan_eligible >= 50  # few eligible items: scanned exactly
    items, users = vectors
    keep = np.array([3, 500, 999, 1500, 1999])
    only_five = np.setdiff1d(np.arange(N_ITEMS), keep)
    almost_all = np.setdiff1d(np.arange(N_ITEMS), np.arange(0, N_ITEMS, 40))  # 50 left
    scores, rows = index.search(users[:2], 10, exclude=[only_five, almost_all])
    assert rows.shape == (2, 5)  # k' = fewest eligible items of any query
    np.testing.assert_array_equal(np.sort(rows[0]), keep)
    want_scores, want_rows = _numpy_topk(users[:2], items, 5, [only_five, almost_all])
    np.testing.assert_array_equal(rows, want_rows)
    assert (rows >= 0).all()
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_k_larger_than_catalog_returns_every_item(flat: ItemIndex) -> None:
    q = np.ones(DIM + 1, dtype=np.float32)
    _, rows = flat.search(q, N_ITEMS + 10)
    assert rows.shape == (1, N_ITEMS)
    assert np.unique(rows).size == N_ITEMS


def test_short_index_results_fall_back_to_exact(
    hnsw: ItemIndex, vectors: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    items, users = vectors
    excl = [np.setdiff1d(np.arange(N_ITEMS), np.arange(0, N_ITEMS, 20))]  # 100 left
    with caplog.at_level(logging.DEBUG, logger="recall.index.search"):
        _, rows = hnsw.search(users[:1], 100, exclude=excl)  # the graph strands the search
    assert "exact fallback" in caplog.text
    assert rows.shape == (1, 100) and (rows >= 0).all()
    _, want_rows = _numpy_topk(users[:1], items, 100, excl)
    np.testing.assert_array_equal(rows, want_rows)


def test_everything_excluded_returns_empty(flat: ItemIndex) -> None:
    scores, rows = flat.search(np.ones((1, DIM + 1)), 5, exclude=[np.arange(N_ITEMS)])
    assert scores.shape == rows.shape == (1, 0)


@pytest.mark.parametrize(
    ("queries", "k", "exclude", "message"),
    [
        (np.ones((2, DIM)), 5, None, "shape"),
        (np.ones((2, DIM + 1, 1)), 5, None, "shape"),
        (np.full((1, DIM + 1), np.nan), 5, None, "NaN"),
        (np.full((1, DIM + 1), np.inf), 5, None, "NaN or Inf"),
        (np.ones((1, DIM + 1)), 0, None, "k must be"),
        (np.ones((1, DIM + 1)), True, None, "k must be"),
        (np.ones((1, DIM + 1)), 2.5, None, "k must be"),
        (np.ones((2, DIM + 1)), 5, [None], "2 queries"),
        (np.ones((1, DIM + 1)), 5, [np.array([N_ITEMS])], "in \\[0"),
        (np.ones((1, DIM + 1)), 5, [np.array([-1])], "in \\[0"),
        (np.ones((1, DIM + 1)), 5, [np.array([0.5])], "integer"),
        ([["a"] * (DIM + 1)], 5, None, "float array"),
    ],
)
def test_invalid_input_is_a_clear_value_error(
    flat: ItemIndex, queries: object, k: object, exclude: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        flat.search(queries, k, exclude=exclude)  # type: ignore[arg-type]


def test_concurrent_searches_agree_with_serial(
    hnsw: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    _, users = vectors
    excl = _exclusions(np.random.default_rng(2), N_USERS)
    serial = [hnsw.search(users[i], 50, exclude=[excl[i]])[1] for i in range(N_USERS)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda i: hnsw.search(users[i], 50, exclude=[excl[i]])[1], range(N_USERS))
        )
    for a, b in zip(serial, results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_search_settings_override_and_raw_index_results(
    hnsw: ItemIndex, vectors: tuple[np.ndarray, np.ndarray]
) -> None:
    items, users = vectors
    low = fi.SearchSettings(ef_search=10)
    _, raw = hnsw.search_index(users[:50], 100, settings=low)
    _, full = hnsw.search(users[:50], 100, settings=low)
    assert (full >= 0).all()  # the public search never returns -1
    _, exact = _numpy_topk(users[:50], items, 100)
    assert raw.shape == (50, 100)
    assert np.mean([np.isin(r, e).mean() for r, e in zip(raw, exact, strict=True)]) < 1.0


def test_exact_topk_among_answers_in_item_rows(vectors: tuple[np.ndarray, np.ndarray]) -> None:
    """The exact filtered answer: item rows of the best allowed items, k capped at how
    many are allowed, (B, 0) for none; the same as a full scan with the rest masked."""
    items, users = vectors
    rows = np.arange(3, items.shape[0], 7, dtype=np.int64)
    blocked = np.ones((5, items.shape[0]), dtype=bool)
    blocked[:, rows] = False
    _, want = exact_topk(users[:5], items, 20, blocked)
    np.testing.assert_array_equal(exact_topk_among(users[:5], items, rows, 20), want)
    assert exact_topk_among(users[:5], items, rows[:3], 20).shape == (5, 3)
    assert exact_topk_among(users[:5], items, rows[:0], 20).shape == (5, 0)


def _hnsw_over(items: np.ndarray) -> ItemIndex:
    """An HNSW ItemIndex over ``items`` with landmarks, built without a bundle."""
    spec = fi.make_spec("hnsw", items.shape[0], items.shape[1], ef_construction=40)
    space, _ = fi.to_index_space(items, spec)
    entry = fi.choose_entry_points(spec, space)
    index = ItemIndex(fi.create_index(spec, space), items, "hnsw", entry_rows=entry)
    index.scan_eligible = 0
    return index


def _selector_answer(
    index: ItemIndex, queries: np.ndarray, k: int, exclude: list[np.ndarray], use: fi.SearchSettings
) -> list[set[int]]:
    """The rows FAISS itself returns with the exclusions as an IDSelectorNot (the oracle of
    the search that drops them afterwards)."""
    out = []
    padded = fi.pad_queries(queries, int(index.index.d))
    for i, rows in enumerate(exclude):
        kept_alive = fi.ExclusionSelector(np.unique(rows).astype(np.int64), index.n_items)
        one = padded[i : i + 1]
        if use.entry_probe:
            assert index.entries is not None
            _, labels = fi.search_hnsw_from(
                index.index, one, k, index.entries, use, kept_alive.selector
            )
        else:
            params = fi.search_parameters("hnsw", use, kept_alive.selector)
            _, labels = index.index.search(one, k, params=params)
        out.append({int(r) for r in labels[0]})
    return out


@pytest.mark.parametrize("entry_probe", [None, 4])
@pytest.mark.parametrize("duplicates", [1, 4])
def test_hnsw_exclusions_answer_as_faiss_with_a_selector(
    vectors: tuple[np.ndarray, np.ndarray], entry_probe: int | None, duplicates: int
) -> None:
    """Dropping the excluded rows from a wider search gives exactly the rows of FAISS's own
    selector search, within the queue (k + excluded <= efSearch) and beyond it; with every
    item vector repeated (``duplicates``), distances tie at the cut and the search must see
    it and ask the selector."""
    items, users = vectors
    items = np.repeat(items[: N_ITEMS // duplicates], duplicates, axis=0)
    index = _hnsw_over(items)
    use = fi.SearchSettings(ef_search=48, entry_probe=entry_probe)
    rng = np.random.default_rng(7)
    k, n = 20, 80
    sizes = rng.choice([0, 1, 5, 20, 27, 28, 60], size=n)  # 27 fits efSearch 48 with k 20
    # exclude items the query would rank high, so the drop really removes results
    near = np.argsort(-(users[:n] @ items.T), axis=1)[:, :100]
    exclude = [rng.choice(near[i], size=s, replace=False) for i, s in enumerate(sizes)]
    _, rows = index.search(users[:n], k, exclude=exclude, settings=use)
    want = _selector_answer(index, users[:n], k, exclude, use)
    assert [set(r.tolist()) for r in rows] == want


def test_drop_excluded_refuses_a_tie_at_the_cut() -> None:
    labels = np.array([4, 9, 2, 7, 5, 8], dtype=np.int64)
    excluded = np.array([2, 9], dtype=np.int64)
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=np.float32)
    np.testing.assert_array_equal(fi.drop_excluded(distances, labels, excluded, 3), [4, 7, 5])
    # the 3rd kept ties with the last of the m asked: a node left out may tie with it
    tied_last = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.6], dtype=np.float32)
    assert fi.drop_excluded(tied_last, labels, excluded, 3) is None
    # two kept nodes tie at the cut (the answer is short of m): a selector's heap may have
    # kept the other one
    short = np.array([4, 9, 2, 7, 5, 8, -1], dtype=np.int64)
    tied_kept = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.5, np.finfo(np.float32).max], np.float32)
    assert fi.drop_excluded(tied_kept, short, excluded, 3) is None
    # fewer non-excluded nodes than wanted: the walk reached no more, padded with -1
    np.testing.assert_array_equal(fi.drop_excluded(tied_kept, short, excluded, 5), [4, 7, 5, 8, -1])


def test_shared_search_parameters_never_carry_a_selector(hnsw: ItemIndex) -> None:
    """Parameters without a selector are one object per settings, shared by every search
    (and thread): a search with a selector gets its own, so none leaks into the next."""
    use = fi.SearchSettings(ef_search=64)
    shared = fi.search_parameters("hnsw", use, None)
    assert fi.search_parameters("hnsw", use, None) is shared and shared.efSearch == 64
    kept_alive = fi.ExclusionSelector(np.arange(5, dtype=np.int64), hnsw.n_items)
    own = fi.search_parameters("hnsw", use, kept_alive.selector)
    assert own is not shared and own.sel is not None and shared.sel is None
    assert fi.hnsw_queue(use) == 64 and fi.hnsw_queue(fi.SearchSettings()) == 16


@pytest.mark.parametrize("queries", [1, 3])
def test_entry_points_nearest_are_the_probe_closest_landmarks(queries: int) -> None:
    """What :func:`recall.index.faiss_index.search_hnsw_from` enters level 0 from: the
    ``probe`` landmarks nearest each query and their squared L2 distances, in the int32
    and float32 C-contiguous arrays FAISS reads (one query has a path of its own)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2000, 9)).astype(np.float32)
    index = fi.create_index(fi.IndexSpec("flat", "Flat", "l2", "none", 9, 9, {}), x)
    rows = np.unique(rng.integers(0, 2000, 64)).astype(np.int64)
    entries = fi.EntryPoints(index, rows)
    q = rng.standard_normal((queries, 9)).astype(np.float32)
    exact = ((q[:, None, :] - x[rows][None]) ** 2).sum(-1)  # (queries, landmarks)
    for probe in (1, 4, rows.size):
        labels, dist = entries.nearest(q, probe)
        assert labels.shape == dist.shape == (queries, probe)
        assert labels.dtype == np.int32 and dist.dtype == np.float32
        assert labels.flags.c_contiguous and dist.flags.c_contiguous
        for j in range(queries):
            assert sorted(labels[j].tolist()) == sorted(rows[np.argsort(exact[j])[:probe]])
            at = np.searchsorted(rows, labels[j])
            np.testing.assert_allclose(dist[j], exact[j, at], rtol=1e-4, atol=1e-4)
