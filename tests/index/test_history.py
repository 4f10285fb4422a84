"""Bundle schema_version 2: ``user_history.npz`` and ``trained_until`` against the raw input
files, the tower invariant (a known user's vector is recomputable from the stored window and
features), and schema_version 1 bundles still loading and serving."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import pytest

from recall.index import bundle as b
from recall.index.current import CURRENT, read_current
from recall.index.history import UserHistory
from recall.index.publish import publish
from recall.index.tower import FeatureError
from recall.service.app import create_app
from recall.service.recaller import ServingBundle
from recall.trainer.data import Dataset
from recall.trainer.split import MIN_INTERACTIONS_TO_HOLD_OUT
from tests.index.test_verify import copy_bundle, edit_manifest
from tests.live import live_server, settings

TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def bundle(trained_root: Path) -> ServingBundle:
    """The trained model's export: what the trainer writes is under test here."""
    return ServingBundle.load(trained_root / (trained_root / CURRENT).read_text().strip())


@pytest.fixture(scope="module")
def raw(synthetic_dir: Path) -> dict[int, list[tuple[float, int]]]:
    """interactions.csv read with the csv module: user id -> [(timestamp, item id)]."""
    per_user: dict[int, list[tuple[float, int]]] = defaultdict(list)
    with (synthetic_dir / "interactions.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            per_user[int(row["user_id"])].append((float(row["timestamp"]), int(row["item_id"])))
    return per_user


def history_of(bundle: ServingBundle) -> UserHistory:
    assert bundle.history is not None
    return bundle.history


def test_a_trained_bundle_is_schema_version_2(bundle: ServingBundle) -> None:
    assert bundle.manifest.schema_version == 2
    assert b.USER_HISTORY in bundle.manifest.files
    assert set(bundle.manifest.files) == {*b.TRAINER_FILES, b.ITEM_ATTRIBUTES, b.INDEX}
    history = history_of(bundle)
    assert history.n_users == len(bundle.user_ids)
    for array in history.arrays().values():  # shared pages of the file, not per-worker copies
        assert isinstance(array.base, np.memmap) and not array.flags.writeable


def test_windows_are_the_last_training_items_in_time_order(
    bundle: ServingBundle, raw: dict[int, list[tuple[float, int]]]
) -> None:
    """Per the quality protocol: order by (timestamp, item id), hold out the last two of a
    user with >= 3 interactions, keep the last history_length of the rest."""
    history, length = history_of(bundle), bundle.tower.spec.history_length
    assert set(raw) == set(bundle.user_ids.ids.tolist())
    full_windows = 0
    for user_id, events in raw.items():
        ordered = sorted(events)
        training = ordered[:-2] if len(ordered) >= MIN_INTERACTIONS_TO_HOLD_OUT else ordered
        expected = training[-length:]
        row = bundle.user_ids.row(user_id)
        assert row is not None
        items, timestamps = history.window(row)
        assert items.dtype == np.int32 and timestamps.dtype == np.float64
        assert bundle.item_ids.ids[items].tolist() == [item for _, item in expected]
        assert timestamps.tolist() == [t for t, _ in expected]
        full_windows += len(training) > length
    assert full_windows > 0  # some windows are cut to history_length (the cut is tested)
    assert np.diff(history.indptr).max() == length


def test_trained_until_is_the_last_timestamp_of_the_input(
    bundle: ServingBundle, raw: dict[int, list[tuple[float, int]]]
) -> None:
    last = max(t for events in raw.values() for t, _ in events)
    assert bundle.trained_until == bundle.manifest.trained_until == last
    # the newest interactions are held out (test items), so the windows end before it
    assert float(history_of(bundle).timestamps.max()) < last


def test_stored_features_are_the_encoded_users_csv(
    bundle: ServingBundle, synthetic: Dataset
) -> None:
    """The stored rows are what TowerSpec.encode_features makes of each users.csv row."""
    spec, history = bundle.tower.spec, history_of(bundle)
    assert [c.name for c in spec.categorical] and [n.name for n in spec.numeric]
    for row in range(synthetic.n_users):
        values = {
            name: float(column[row]) if column.dtype.kind == "f" else str(column[row])
            for name, column in synthetic.user_features.items()
        }
        categorical, numeric = spec.encode_features(values)
        stored_categorical, stored_numeric = history.features(row)
        np.testing.assert_array_equal(stored_categorical, categorical)
        np.testing.assert_allclose(stored_numeric, numeric, rtol=1e-6, atol=1e-6)
    assert (history.categorical > 0).any()  # values the vocabularies know


def test_every_user_vector_is_recomputable_from_window_and_features(
    bundle: ServingBundle,
) -> None:
    """The invariant the fresh-events path relies on, for every user of the bundle."""
    history = history_of(bundle)
    users = range(history.n_users)
    windows = [history.window(u)[0] for u in users]
    recomputed = bundle.tower.encode_encoded(windows, history.categorical, history.numeric)
    np.testing.assert_allclose(recomputed, np.asarray(bundle.user_vectors), **TOLERANCE)
    one = bundle.tower.encode_encoded([windows[3]], *(f[None] for f in history.features(3)))
    np.testing.assert_allclose(one[0], bundle.user_vectors[3], **TOLERANCE)


def test_a_newer_event_moves_the_vector(bundle: ServingBundle) -> None:
    history = history_of(bundle)
    items, _ = history.window(0)
    newer = np.r_[items, (items[-1] + 1) % bundle.tower.spec.n_items]
    moved = bundle.tower.encode_encoded([newer], *(f[None] for f in history.features(0)))
    assert not np.allclose(moved[0], bundle.user_vectors[0], **TOLERANCE)


def test_encode_is_encode_encoded_of_the_encoded_features(
    bundle: ServingBundle, synthetic: Dataset
) -> None:
    """Raw users.csv values through encode give the stored vectors too (one code path)."""
    history = history_of(bundle)
    features = [
        {
            name: float(column[row]) if column.dtype.kind == "f" else str(column[row])
            for name, column in synthetic.user_features.items()
        }
        for row in range(history.n_users)
    ]
    windows = [history.window(u)[0] for u in range(history.n_users)]
    np.testing.assert_allclose(
        bundle.tower.encode(windows, features), np.asarray(bundle.user_vectors), **TOLERANCE
    )


def test_encode_encoded_refuses_what_the_tower_cannot_take(bundle: ServingBundle) -> None:
    tower, history = bundle.tower, history_of(bundle)
    window = [history.window(0)[0]]
    categorical, numeric = history.categorical[:1].copy(), history.numeric[:1].copy()
    with pytest.raises(ValueError, match="categorical must be integer rows of shape"):
        tower.encode_encoded(window, categorical[0], numeric)
    with pytest.raises(ValueError, match="numeric must have shape"):
        tower.encode_encoded(window, categorical, numeric[:, :0])
    for bad in (-1, len(tower.spec.categorical[0].vocabulary) + 1):
        wrong = categorical.copy()
        wrong[0, 0] = bad
        with pytest.raises(ValueError, match="categorical rows of feature 0 out of range"):
            tower.encode_encoded(window, wrong, numeric)
    with pytest.raises(ValueError, match="history holds item rows out of range"):
        tower.encode_encoded([np.array([tower.spec.n_items])], categorical, numeric)
    with pytest.raises(FeatureError, match="out of float32 range"):
        tower.encode_encoded(window, categorical, np.full_like(numeric, np.nan))
    assert tower.encode_encoded(
        [], np.zeros((0, categorical.shape[1]), np.int64), numeric[:0]
    ).shape == (
        0,
        bundle.dim,
    )


def make_v1(bundle: Path) -> Path:
    """Turn a copy of a v2 bundle into the schema_version 1 bundle an older trainer wrote."""
    v2_only = (b.USER_HISTORY, b.ITEM_ATTRIBUTES)
    for name in v2_only:
        (bundle / name).unlink()
    files = {n: e for n, e in b.read_manifest(bundle).files.items() if n not in v2_only}
    edit_manifest(bundle, schema_version=1, trained_until=None, files=files, item_attributes=None)
    return bundle


def test_a_v1_bundle_still_loads_publishes_and_serves(published_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    bundle = make_v1(copy_bundle(published_root, root))
    v2 = ServingBundle.load(published_root / (published_root / CURRENT).read_text().strip())
    loaded = ServingBundle.load(bundle)
    assert loaded.manifest.schema_version == 1
    assert loaded.history is None and loaded.trained_until is None
    assert loaded.attributes is None
    publish(bundle)
    assert read_current(root) == bundle.name
    user_id = v2.user_ids.ids[7].item()
    with live_server(create_app(settings(root))) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/v1/recall", json={"user_id": user_id, "k": 10})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["bundle_id"] == bundle.name and body["source"] == "user"
        # the stored vector, seen items excluded: the exact top 10 (the index is Flat)
        scores = np.asarray(v2.item_vectors) @ v2.user_vectors[7]
        scores[v2.seen(7)] = -np.inf
        top = np.argsort(-scores, kind="stable")[:10]
        assert [i["item_id"] for i in body["items"]] == v2.item_ids.ids[top].tolist()
        np.testing.assert_allclose([i["score"] for i in body["items"]], scores[top], rtol=1e-5)
        vector = client.get(f"/v1/users/{user_id}/vector")
        assert vector.status_code == 200
        np.testing.assert_allclose(vector.json()["vector"], v2.user_vectors[7], rtol=1e-6)
