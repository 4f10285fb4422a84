"""The service core without HTTP: recall and lookups against a real bundle and FAISS."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from recall.index.tower import AGE_FEATURES, FeatureError
from recall.service.core import RecallCore
from recall.service.domain_errors import InvalidRequest, UnknownId
from recall.service.recaller import (
    RecallQuery,
    RecallResult,
    ServingBundle,
    Source,
    similar,
    vector_of,
    vectors_of,
)
from recall.trainer.data import Dataset

MAX_K = 1000


def recall(bundle: ServingBundle, query: RecallQuery, max_k: int) -> RecallResult:
    """The recall production runs (:meth:`RecallCore.recall`; a user with no stored events)."""
    return RecallCore(max_k).recall(bundle, query).result


@pytest.fixture(scope="module")
def bundle(published_root: Path) -> ServingBundle:
    return ServingBundle.load(published_root / (published_root / "CURRENT").read_text().strip())


def exact_top_k(
    bundle: ServingBundle, query: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(bundle.item_vectors) @ query
    if exclude is not None and len(exclude):
        scores[exclude] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return order, scores[order]


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_recall_by_user_equals_exact_ranking(bundle: ServingBundle, exclude_seen: bool) -> None:
    for row in (0, 7, len(bundle.user_ids) - 1):
        user_id = bundle.user_ids.ids[row].item()
        result = recall(
            bundle, RecallQuery(user_id=user_id, k=20, exclude_seen=exclude_seen), MAX_K
        )
        rows, scores = exact_top_k(
            bundle,
            np.asarray(bundle.user_vectors[row]),
            20,
            bundle.seen(row) if exclude_seen else None,
        )
        assert result.source is Source.USER
        assert result.item_ids == bundle.item_ids.ids[rows].tolist()
        np.testing.assert_allclose(result.scores, scores, rtol=1e-5, atol=1e-5)
        if exclude_seen:
            seen_ids = set(bundle.item_ids.ids[bundle.seen(row)].tolist())
            assert not seen_ids & set(result.item_ids)


def test_recall_by_full_training_history_equals_recall_by_user(
    bundle: ServingBundle, synthetic: Dataset
) -> None:
    for row in (3, 50):
        user_id = bundle.user_ids.ids[row].item()
        history = bundle.item_ids.ids[_history(synthetic, row)].tolist()
        features = {n: v[row].item() for n, v in synthetic.user_features.items()}
        by_user = recall(bundle, RecallQuery(user_id=user_id, k=30), MAX_K)
        by_history = recall(bundle, RecallQuery(history=history, features=features, k=30), MAX_K)
        assert by_history.source is Source.HISTORY
        assert by_history.item_ids == by_user.item_ids
        np.testing.assert_allclose(by_history.scores, by_user.scores, atol=1e-4)


def _history(dataset: Dataset, user_row: int) -> np.ndarray:
    """The user's training items in time order (everything but the last two)."""
    from recall.trainer.split import leave_last_out

    split = leave_last_out(
        dataset.user_rows, dataset.item_rows, dataset.timestamps, dataset.n_users
    )
    return split.history(user_row)


def test_exclusions_still_return_k_items(bundle: ServingBundle) -> None:
    user_id = bundle.user_ids.ids[0].item()
    first = recall(bundle, RecallQuery(user_id=user_id, k=10), MAX_K)
    again = recall(bundle, RecallQuery(user_id=user_id, k=10, exclude=first.item_ids[:5]), MAX_K)
    assert len(again.item_ids) == 10
    assert not set(first.item_ids[:5]) & set(again.item_ids)
    assert again.item_ids[:5] == first.item_ids[5:]


def test_unknown_user_gets_404_or_the_popular_fallback(bundle: ServingBundle) -> None:
    with pytest.raises(UnknownId):
        recall(bundle, RecallQuery(user_id="nobody", k=5), MAX_K)
    result = recall(bundle, RecallQuery(user_id="nobody", k=5, fallback="popular"), MAX_K)
    assert result.source is Source.POPULAR
    expected = bundle.item_ids.ids[np.argsort(-bundle.popularity, kind="stable")[:5]].tolist()
    assert result.item_ids == expected
    excluded = recall(
        bundle,
        RecallQuery(user_id="nobody", k=5, fallback="popular", exclude=expected[:2]),
        MAX_K,
    )
    assert excluded.item_ids[:3] == expected[2:]


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1])
def test_k_out_of_range_is_invalid(bundle: ServingBundle, k: int) -> None:
    with pytest.raises(InvalidRequest, match="k must be"):
        recall(bundle, RecallQuery(vector=[0.0] * bundle.dim, k=k), MAX_K)


@pytest.mark.parametrize(
    ("fill", "size_change", "message"),
    [(0.0, -1, "must have"), (0.0, 1, "must have"), (np.nan, 0, "finite"), (np.inf, 0, "finite")],
)
def test_bad_vectors_are_invalid(
    bundle: ServingBundle, fill: float, size_change: int, message: str
) -> None:
    vector = [fill] * (bundle.dim + size_change)
    with pytest.raises(InvalidRequest, match=message):
        recall(bundle, RecallQuery(vector=vector, k=5), MAX_K)


def test_raw_vector_recall_equals_exact(bundle: ServingBundle) -> None:
    query = np.random.default_rng(0).normal(size=bundle.dim).astype(np.float32)
    result = recall(bundle, RecallQuery(vector=query.tolist(), k=15), MAX_K)
    rows, scores = exact_top_k(bundle, query, 15)
    assert result.item_ids == bundle.item_ids.ids[rows].tolist()
    np.testing.assert_allclose(result.scores, scores, rtol=1e-5, atol=1e-5)


def test_similar_items_exclude_the_item_itself(bundle: ServingBundle) -> None:
    item_id = bundle.item_ids.ids[4].item()
    result = similar(bundle, item_id, 10, MAX_K)
    assert result.source is Source.ITEM and len(result.item_ids) == 10
    assert item_id not in result.item_ids
    query = np.array(bundle.item_vectors[4])
    query[-1] = 0
    rows, _ = exact_top_k(bundle, query, 10, np.array([4]))
    assert result.item_ids == bundle.item_ids.ids[rows].tolist()
    with pytest.raises(UnknownId):
        similar(bundle, "no-such-item", 10, MAX_K)


def test_vector_lookup_in_request_order_with_missing(bundle: ServingBundle) -> None:
    ids = bundle.item_ids.ids
    request = [ids[3].item(), "missing", ids[0].item(), ids[3].item()]
    vectors, found = vectors_of(bundle, "items", request)
    np.testing.assert_array_equal(found, [True, False, True, True])
    np.testing.assert_array_equal(vectors[[0, 2, 3]], np.asarray(bundle.item_vectors)[[3, 0, 3]])
    assert np.isnan(vectors[1]).all()
    user_id = bundle.user_ids.ids[2].item()
    assert vector_of(bundle, "users", str(user_id))[0] == user_id  # typed as the bundle has it
    np.testing.assert_array_equal(vector_of(bundle, "users", user_id)[1], bundle.user_vectors[2])
    with pytest.raises(UnknownId):
        vector_of(bundle, "users", "nobody")


# --- no input may produce a 500 (issue 8 §4): every bad input is a domain error ---


@pytest.mark.parametrize("age", [1e308, -1e308, 10**40, 10**400, 3.5e38])
def test_numeric_feature_beyond_float32_is_invalid_naming_it(
    bundle: ServingBundle, age: float
) -> None:
    history = bundle.item_ids.ids[:2].tolist()
    with pytest.raises(InvalidRequest, match="feature 'age'"):
        recall(bundle, RecallQuery(history=history, features={"age": age}, k=3), MAX_K)


def test_tower_never_returns_a_non_finite_vector(bundle: ServingBundle) -> None:
    history = [np.arange(2)]
    assert np.isfinite(bundle.tower.encode(history, [{"age": 3e30}])).all()
    with pytest.raises(FeatureError, match="'age'"):
        bundle.tower.encode(history, [{"age": 1e308}])
    # a tower whose first layer weighs age by 1e10: a float32 age overflows inside it
    tower = copy.copy(bundle.tower)
    spec = tower.spec
    age_column = spec.input_width - AGE_FEATURES - len(spec.numeric)
    assert spec.numeric[0].name == "age"
    w_t, bias = tower.layers[0]
    w_t = w_t.copy()
    w_t[age_column] = 1e10
    tower.layers = [(w_t, bias), *tower.layers[1:]]
    assert np.isfinite(tower.encode(history, [{"age": 40.0}])).all()
    with pytest.raises(FeatureError, match="out of float32 range"):
        tower.encode(history, [{"age": 1e30}])


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"shoe": 3}, "unknown feature"),
        ({"gender": 5}, "'gender' is categorical"),
        ({"gender": 1.5}, "'gender' is categorical"),
        ({"age": "old"}, "'age' is numeric"),
        ({"age": "30"}, "'age' is numeric"),
        ({"age": True}, "'age' is numeric"),
    ],
)
def test_unknown_or_mistyped_features_are_invalid_listing_the_known_ones(
    bundle: ServingBundle, features: dict[str, object], message: str
) -> None:
    query = RecallQuery(history=bundle.item_ids.ids[:2].tolist(), features=features, k=3)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match=message) as caught:
        recall(bundle, query, MAX_K)
    for known in ("gender (categorical)", "country (categorical)", "age (numeric)"):
        assert known in caught.value.message


def test_a_category_the_vocabulary_lacks_is_out_of_vocabulary(bundle: ServingBundle) -> None:
    history = bundle.item_ids.ids[:3].tolist()
    unknown = recall(bundle, RecallQuery(history=history, features={"gender": "X"}, k=20), MAX_K)
    missing = recall(bundle, RecallQuery(history=history, features={"gender": None}, k=20), MAX_K)
    known = recall(bundle, RecallQuery(history=history, features={"gender": "F"}, k=20), MAX_K)
    assert unknown.item_ids == missing.item_ids and unknown.scores == missing.scores
    assert known.scores != missing.scores


@pytest.mark.parametrize("history", [[], ["ghost", -7]])
def test_history_without_a_known_item_is_like_an_unknown_user(
    bundle: ServingBundle, history: list[int | str]
) -> None:
    with pytest.raises(UnknownId, match="no item of the history"):
        recall(bundle, RecallQuery(history=history, k=5), MAX_K)
    fallback = recall(bundle, RecallQuery(history=history, k=5, fallback="popular"), MAX_K)
    by_unknown_user = recall(bundle, RecallQuery(user_id="ghost", k=5, fallback="popular"), MAX_K)
    assert fallback.source is Source.POPULAR
    assert fallback.item_ids == by_unknown_user.item_ids


@pytest.mark.parametrize("fill", [3e38, 3e37, 1e39])
def test_vector_whose_scores_could_overflow_is_invalid(bundle: ServingBundle, fill: float) -> None:
    with pytest.raises(InvalidRequest, match="float32"):
        recall(bundle, RecallQuery(vector=[fill] * bundle.dim, k=5), MAX_K)
    # far inside the bound: still served, with finite scores
    ok = recall(bundle, RecallQuery(vector=[1e6] * bundle.dim, k=5), MAX_K)
    assert np.isfinite(ok.scores).all()


def test_unknown_ids_are_echoed_as_a_short_prefix(bundle: ServingBundle) -> None:
    long_id = "x" * 1_000_000
    for call in (
        lambda: recall(bundle, RecallQuery(user_id=long_id, k=5), MAX_K),
        lambda: similar(bundle, long_id, 5, MAX_K),
        lambda: vector_of(bundle, "items", long_id),
    ):
        with pytest.raises(UnknownId) as caught:
            call()
        assert len(caught.value.message) < 120 and caught.value.message.endswith("…")


def test_mapped_vectors_are_plain_read_only_views(bundle: ServingBundle) -> None:
    """The memory-mapped vectors are plain ndarrays (no memmap subclass code on every
    slice of a recall) over the shared map, and they still refuse writes."""
    for vectors in (bundle.user_vectors, bundle.item_vectors):
        assert type(vectors) is np.ndarray and isinstance(vectors.base, np.memmap)
        assert type(vectors[:3]) is np.ndarray and not vectors.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            vectors[0, 0] = 0.0
