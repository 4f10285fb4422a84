"""Both user towers (``attention``, the default, and ``mean``): trained in torch, served in
numpy, the bundle's invariants kept (``dot(user_vectors[u], item_vectors[i])`` is the
model's logit; the online vector from a history is the trained user vector)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recall.index import bundle as b
from recall.index.build import BuildOptions, build_index
from recall.index.tower import UserTower, pad_histories
from recall.index.verify import verify_bundle
from recall.trainer.config import ConfigError, TrainConfig, load_config
from recall.trainer.data import Dataset, load_dataset
from recall.trainer.export import bundle_arrays, export_bundle
from recall.trainer.model import UserBatch
from recall.trainer.train import Trained, train
from tests.conftest import SMALL

MEAN = SMALL.model_copy(update={"tower": "mean"})


@pytest.fixture(scope="module")
def trained_mean(synthetic: Dataset) -> Trained:
    return train(synthetic, MEAN, progress=False)


@pytest.fixture(params=["attention", "mean"])
def each_tower(request: pytest.FixtureRequest) -> Trained:
    """The model trained on ``synthetic`` with each tower (``attention``: the shared one)."""
    trained: Trained = request.getfixturevalue(
        "trained" if request.param == "attention" else "trained_mean"
    )
    assert trained.prepared.spec.tower == request.param
    return trained


def _torch_vectors(trained: Trained, histories: list[np.ndarray]) -> np.ndarray:
    """The torch tower's ``u`` for item-row histories, no features, age 0: (B, dim)."""
    spec = trained.prepared.spec
    rows, mask = pad_histories(histories, spec.history_length)
    n = len(histories)
    batch = UserBatch(
        torch.as_tensor(rows),
        torch.as_tensor(mask),
        torch.zeros((n, len(spec.categorical)), dtype=torch.int64),
        torch.zeros((n, len(spec.numeric))),
        torch.zeros(n),
    )
    trained.model.eval()
    with torch.no_grad():
        return trained.model(batch).numpy()  # type: ignore[no-any-return]


def test_the_numpy_tower_equals_the_torch_tower(each_tower: Trained) -> None:
    spec = each_tower.prepared.spec
    tower = UserTower.from_arrays(each_tower.model.tower_arrays())
    assert (tower.attention is not None) == (spec.tower == "attention")
    rng = np.random.default_rng(1)
    # empty, one item, shorter than the window, exactly the window, longer (the tail counts)
    histories = [rng.integers(0, spec.n_items, size=n) for n in (0, 1, 7, 50, 80)]
    ours = tower.encode(histories)
    theirs = _torch_vectors(each_tower, histories)
    np.testing.assert_allclose(ours[:, :-1], theirs, rtol=1e-5, atol=2e-6)


def test_the_readout_depends_on_order_the_mean_does_not(
    trained: Trained, trained_mean: Trained
) -> None:
    """The point of the attention tower: the same items in another order give another
    vector; the mean tower gives the same one."""
    history = np.arange(20)
    tower = UserTower.from_arrays(trained.model.tower_arrays())
    forward, backward = tower.encode([history, history[::-1].copy()])
    assert np.abs(forward - backward).max() > 1e-3
    mean_tower = UserTower.from_arrays(trained_mean.model.tower_arrays())
    forward, backward = mean_tower.encode([history, history[::-1].copy()])
    np.testing.assert_allclose(forward, backward, rtol=1e-5, atol=1e-6)
    assert tower.attention is not None
    empty = tower.attention(np.zeros((1, 50, 16), np.float32), np.zeros((1, 50), bool))
    np.testing.assert_array_equal(empty, 0.0)


def test_the_dot_product_is_the_logit(each_tower: Trained, synthetic: Dataset) -> None:
    arrays = bundle_arrays(each_tower, synthetic)
    users, items = arrays[b.USER_VECTORS], arrays[b.ITEM_VECTORS]
    assert isinstance(users, np.ndarray) and isinstance(items, np.ndarray)
    with torch.no_grad():
        logits = each_tower.model.logits(torch.as_tensor(users[:, :-1])).numpy()
    np.testing.assert_allclose(users @ items.T, logits, rtol=1e-5, atol=1e-5)


def test_the_exported_bundle_records_the_kind_verifies_and_serves_its_users(
    each_tower: Trained, synthetic: Dataset, tmp_path: Path
) -> None:
    kind = each_tower.prepared.spec.tower
    config = SMALL.model_copy(update={"tower": kind})
    bundle = export_bundle(each_tower, synthetic, config, tmp_path, "bundle-1")
    manifest = b.read_manifest(bundle)
    assert manifest.trainer["config"]["tower"] == kind
    build_index(bundle, BuildOptions(kind="flat", sample_queries=50, latency_queries=5))
    verified = verify_bundle(bundle)
    assert verified.tower.spec.tower == kind
    # every user's online vector from the stored window and features = the trained vector
    history = b.load_arrays(bundle, manifest, b.USER_HISTORY)
    indptr = history["indptr"]
    windows = [history["items"][indptr[u] : indptr[u + 1]] for u in range(len(indptr) - 1)]
    online = verified.tower.encode_encoded(windows, history["categorical"], history["numeric"])
    stored = b.load_array(bundle, manifest, b.USER_VECTORS)
    np.testing.assert_allclose(online, stored, rtol=1e-5, atol=2e-6)
    assert np.linalg.norm(stored, axis=1).max() <= verified.tower.norm_bound()


def test_heads_must_divide_the_item_width() -> None:
    with pytest.raises(ConfigError, match=r"attention_heads \(3\) must divide item_dim \(64\)"):
        load_config(None, {"tower": "attention", "attention_heads": 3})
    with pytest.raises(ConfigError, match="tower"):
        load_config(None, {"tower": "transformer"})
    assert TrainConfig().tower == "attention"


@pytest.mark.slow
def test_on_movielens_every_online_vector_is_the_trained_one(ml100k_dir: Path) -> None:
    """Every ML-100K user: the numpy tower (the default, attention) on the user's window
    (oldest first, as the service keeps it) equals the torch-computed user vector of the
    bundle."""
    dataset = load_dataset(ml100k_dir)
    config = TrainConfig(epochs=1, max_steps_per_epoch=20)
    trained = train(dataset, config, progress=False)
    arrays = bundle_arrays(trained, dataset)
    tower = UserTower.from_arrays(arrays[b.USER_TOWER])  # type: ignore[arg-type]
    history = arrays[b.USER_HISTORY]
    assert isinstance(history, dict)
    indptr = history["indptr"]
    windows = [history["items"][indptr[u] : indptr[u + 1]] for u in range(dataset.n_users)]
    assert max(len(w) for w in windows) == 50
    online = tower.encode_encoded(windows, history["categorical"], history["numeric"])
    stored = arrays[b.USER_VECTORS]
    assert isinstance(stored, np.ndarray) and len(stored) == dataset.n_users == 943
    np.testing.assert_allclose(online, stored, rtol=1e-5, atol=2e-6)
