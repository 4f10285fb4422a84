"""The item-mean history rule of bundles without a user tower, against numpy, and the
manifest fields that choose it."""

from __future__ import annotations

import numpy as np
import pytest

from recall.index import bundle as b
from recall.index.item_mean import ItemMean
from recall.index.tower import FeatureError

RNG = np.random.default_rng(0)
ITEMS = RNG.standard_normal((50, 6)).astype(np.float32)


def test_mean_of_the_last_items_across_chunks() -> None:
    """More histories than one chunk; only the last history_length items count."""
    rule = ItemMean(ITEMS, history_length=4, normalize=False)
    histories = [RNG.integers(50, size=RNG.integers(1, 9)) for _ in range(2500)]
    expected = np.stack([ITEMS[h[-4:]].astype(np.float64).mean(axis=0) for h in histories])
    np.testing.assert_allclose(rule.encode(histories), expected, rtol=1e-5, atol=1e-6)


def test_cosine_normalizes_and_a_cancelled_history_stays_zero() -> None:
    items = np.array([[1.0, 0.0], [-1.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    rule = ItemMean(items, history_length=10, normalize=True)
    vectors = rule.encode([np.array([0, 2]), np.array([0, 1])])
    np.testing.assert_allclose(vectors[0], np.array([4.0, 4.0]) / np.hypot(4.0, 4.0), rtol=1e-6)
    np.testing.assert_array_equal(vectors[1], [0.0, 0.0])
    assert rule.norm_bound() == 1.0


def test_features_are_refused() -> None:
    rule = ItemMean(ITEMS, history_length=4, normalize=False)
    with pytest.raises(FeatureError, match="takes no user features"):
        rule.encode([np.array([1])], [{"age": 30}])


def test_refresh_blends_the_stored_vector_with_the_fresh_items() -> None:
    """u stands for min(m, L - f) items; f >= L events replace it; m = 0 is a full window."""
    rule = ItemMean(ITEMS, history_length=4, normalize=False)
    stored = RNG.standard_normal((3, 6)).astype(np.float32)
    fresh = [np.array([7]), np.array([1, 2, 3, 4, 5]), np.array([9, 10])]
    got = rule.refresh(stored, np.array([3, 2, 0]), fresh)
    f64 = ITEMS.astype(np.float64)
    expected = [
        (3 * stored[0] + f64[7]) / 4,
        f64[[2, 3, 4, 5]].mean(axis=0),  # the newest 4 events only
        (2 * stored[2] + f64[9] + f64[10]) / 4,  # m = 0: a full window, L - f = 2 remain
    ]
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_the_manifest_takes_a_history_rule_or_a_tower_and_cosine_only_with_a_rule() -> None:
    entry = {"sha256": "0" * 64, "bytes": 1}
    base = {
        "id": "20260101T000000Z-aaaaaa",
        "created_at": "2026-01-01T00:00:00Z",
        "dim": 4,
        "counts": {"users": 0, "items": 1, "interactions": 0},
    }
    rule = {"rule": "item_mean", "history_length": 50}
    b.Manifest.model_validate({**base, "files": {}, "history_rule": rule, "metric": "cosine"})
    with pytest.raises(ValueError, match="or a history_rule, not both"):
        b.Manifest.model_validate({**base, "files": {b.USER_TOWER: entry}, "history_rule": rule})
    with pytest.raises(ValueError, match="metric cosine needs a history_rule"):
        b.Manifest.model_validate({**base, "files": {b.USER_TOWER: entry}, "metric": "cosine"})
