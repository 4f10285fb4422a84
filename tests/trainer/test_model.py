"""The trained model, its numpy twin and its export: the invariants of the bundle
(README, "The bundle"): ``dot(user_vectors[u], item_vectors[i])`` is the model's logit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from recall.index import bundle as b
from recall.index.tower import UserTower, pad_histories
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from recall.trainer.evaluate import dot_scorer, evaluate, popularity_scorer, task_from_data
from recall.trainer.export import bundle_arrays, export_bundle
from recall.trainer.model import UserBatch, sampled_softmax_loss
from recall.trainer.train import Trained, Validation, popularity_hit_rate, train


def _user_features(dataset: Dataset, user: int) -> dict[str, str | float | None]:
    return {name: values[user].item() for name, values in dataset.user_features.items()}


def test_numpy_tower_equals_torch_tower(trained: Trained, synthetic: Dataset) -> None:
    model, spec = trained.model, trained.prepared.spec
    tower = UserTower.from_arrays(model.tower_arrays())
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, spec.n_items, size=n) for n in (0, 1, 7, 50, 80)]
    features = [
        None,
        _user_features(synthetic, 3),
        {"age": 200, "gender": "never-seen", "country": None},
        {"unknown-feature": "x"},
        _user_features(synthetic, 10),
    ]
    ours = tower.encode(histories, features)

    rows, mask = pad_histories(histories, spec.history_length)
    encoded = [spec.encode_features(f) for f in features]
    batch = UserBatch(
        torch.as_tensor(rows),
        torch.as_tensor(mask),
        torch.as_tensor(np.stack([c for c, _ in encoded])),
        torch.as_tensor(np.stack([x for _, x in encoded])),
        torch.zeros(len(histories)),
    )
    with torch.no_grad():
        theirs = model(batch).numpy()
    assert ours.shape == (len(histories), spec.dim + 1)
    np.testing.assert_allclose(ours[:, :-1], theirs, atol=1e-5)
    np.testing.assert_array_equal(ours[:, -1], 1.0)


def test_dot_product_equals_model_logit(trained: Trained, synthetic: Dataset) -> None:
    arrays = bundle_arrays(trained, synthetic)
    users, items = arrays[b.USER_VECTORS], arrays[b.ITEM_VECTORS]
    assert isinstance(users, np.ndarray) and isinstance(items, np.ndarray)
    assert users.dtype == items.dtype == np.float32
    with torch.no_grad():
        logits = trained.model.logits(torch.as_tensor(users[:, :-1])).numpy()
    np.testing.assert_allclose(users @ items.T, logits, rtol=1e-5, atol=1e-5)


def test_user_vector_equals_tower_on_full_training_history(
    trained: Trained, synthetic: Dataset
) -> None:
    arrays = bundle_arrays(trained, synthetic)
    tower = UserTower.from_arrays(arrays[b.USER_TOWER])  # type: ignore[arg-type]
    split = trained.prepared.split
    users = [0, 5, 123, synthetic.n_users - 1]
    online = tower.encode(
        [split.history(u) for u in users], [_user_features(synthetic, u) for u in users]
    )
    np.testing.assert_allclose(online, arrays[b.USER_VECTORS][users], atol=1e-5)  # type: ignore[index]


def test_same_seed_same_vectors_other_seed_different(
    synthetic: Dataset, small_config: TrainConfig
) -> None:
    config = small_config.model_copy(update={"epochs": 2})
    first = train(synthetic, config, progress=False).model.folded_items()
    again = train(synthetic, config, progress=False).model.folded_items()
    other = train(synthetic, config.model_copy(update={"seed": 1}), progress=False)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other.model.folded_items())


def test_planted_structure_is_learned_far_above_popularity(
    trained: Trained, synthetic: Dataset
) -> None:
    arrays = bundle_arrays(trained, synthetic)
    seen = arrays[b.USER_SEEN]
    assert isinstance(seen, dict)
    task = task_from_data(
        synthetic, synthetic.user_ids, synthetic.item_ids, seen["indptr"], seen["indices"]
    )
    model = evaluate(dot_scorer(arrays[b.USER_VECTORS], arrays[b.ITEM_VECTORS]), task)  # type: ignore[arg-type]
    popular = evaluate(popularity_scorer(trained.prepared.item_counts), task)
    assert model["hr@10"] > 4 * popular["hr@10"]
    assert model["hr@10"] > 0.25


def test_sampled_softmax_runs_with_sparse_updates(
    synthetic: Dataset, small_config: TrainConfig
) -> None:
    config = small_config.model_copy(update={"loss": "sampled", "negatives": 64, "epochs": 2})
    trained = train(synthetic, config, progress=False)
    assert trained.metrics["loss"] == "sampled"
    assert np.isfinite(trained.model.folded_items()).all()
    assert all(math.isfinite(e["train_loss"]) for e in trained.metrics["epochs"])


def test_sampled_softmax_removes_accidental_hits(trained: Trained) -> None:
    model = trained.model
    u = torch.randn(3, model.spec.dim)
    labels = torch.tensor([1, 2, 3])
    log_q = torch.zeros(model.spec.n_items)
    with torch.no_grad():
        with_hit = sampled_softmax_loss(model, u, labels, torch.tensor([1, 7, 9]), log_q)
        # row 0's label 1 is also drawn as a negative: it must count once, as the positive
        masked = sampled_softmax_loss(model, u[1:], labels[1:], torch.tensor([1, 7, 9]), log_q)
        manual = []
        for row in range(3):
            negs = [n for n in (1, 7, 9) if n != int(labels[row])]
            logits = model.logits(
                u[row : row + 1], torch.tensor([int(labels[row]), *negs]).view(-1)[:1]
            )
            all_items = torch.tensor([int(labels[row]), *negs])
            scores = model.logits(u[row].expand(len(all_items), -1), all_items)
            manual.append(-torch.log_softmax(scores, 0)[0])
            assert logits.shape == (1,)
    assert torch.isclose(with_hit, torch.stack(manual).mean(), atol=1e-6)
    assert torch.isclose(masked, torch.stack(manual[1:]).mean(), atol=1e-6)


def test_export_writes_a_verified_bundle(
    trained: Trained, synthetic: Dataset, small_config: TrainConfig, tmp_path: Path
) -> None:
    bundle = export_bundle(trained, synthetic, small_config, tmp_path, "bundle-1")
    manifest = b.read_manifest(bundle)
    assert set(manifest.files) == {*b.TRAINER_FILES, b.ITEM_ATTRIBUTES}  # items.csv has genres
    assert manifest.dim == small_config.hidden[-1] + 1
    assert manifest.counts.users == synthetic.n_users
    assert manifest.trainer["config"]["hidden"] == small_config.hidden
    assert manifest.trainer["metrics"]["best_epoch"] >= 1
    for name in b.TRAINER_FILES:
        b.verify_file(bundle, manifest, name)
    np.testing.assert_array_equal(b.load_array(bundle, manifest, b.ITEM_IDS), synthetic.item_ids)


def test_export_failing_half_way_leaves_nothing(
    trained: Trained,
    synthetic: Dataset,
    small_config: TrainConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_save = b.save_array
    written: list[str] = []

    def save_then_fail(path: Path, array: object) -> None:
        if len(written) == 3:
            raise OSError("no space left on device")
        written.append(path.name)
        real_save(path, array)  # type: ignore[arg-type]

    monkeypatch.setattr(b, "save_array", save_then_fail)
    with pytest.raises(OSError, match="no space left"):
        export_bundle(trained, synthetic, small_config, tmp_path, "bundle-1")
    assert len(written) == 3
    assert list(tmp_path.iterdir()) == []


def test_metrics_hold_one_curve_point_per_epoch_trained(
    trained: Trained, small_config: TrainConfig
) -> None:
    epochs = trained.metrics["epochs"]
    assert 1 <= len(epochs) <= small_config.epochs
    assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1))
    assert all(math.isfinite(e["train_loss"]) and e["train_loss"] > 0 for e in epochs)
    assert all(0 <= e["valid_hr"] <= 1 for e in epochs)
    best = trained.metrics["best_epoch"]
    key = f"valid_hr@{small_config.validation_k}"
    assert (
        trained.metrics[key] == max(e["valid_hr"] for e in epochs) == epochs[best - 1]["valid_hr"]
    )
    if len(epochs) < small_config.epochs:  # stopped early: patience epochs without gain
        assert len(epochs) - best == small_config.patience


def _brute_popularity_hr(counts: np.ndarray, validation: Validation, k: int) -> float:
    hits = 0
    for user, target in zip(validation.users, validation.targets, strict=True):
        scores = counts.astype(np.float64)
        scores[
            validation.seen_items[validation.seen_indptr[user] : validation.seen_indptr[user + 1]]
        ] = -np.inf
        if not np.isfinite(scores[target]):
            continue
        rank = (scores > scores[target]).sum() + (scores[:target] == scores[target]).sum()
        hits += int(rank < k)
    return hits / len(validation.users)


def test_popularity_hit_rate_follows_the_validation_rules() -> None:
    counts = np.array([5, 5, 3, 1, 0, 3], dtype=np.int64)
    seen = [[0], [0, 2], [1], [], [3, 3]]  # user 4 saw item 3 twice
    validation = Validation(
        users=np.array([0, 1, 2, 3, 4]),
        targets=np.array([1, 5, 1, 4, 2]),
        seen_indptr=np.cumsum([0] + [len(s) for s in seen]).astype(np.int64),
        seen_items=np.array([i for s in seen for i in s], dtype=np.int64),
    )
    # user 0: item 1 first once 0 is out; user 1: 5 ties 2 (out) -> after 1 only;
    # user 2: the target was seen (no hit); user 3: item 4 is last (rank 5); user 4: rank 2
    assert popularity_hit_rate(counts, validation, 1) == pytest.approx(1 / 5)
    assert popularity_hit_rate(counts, validation, 2) == pytest.approx(2 / 5)
    assert popularity_hit_rate(counts, validation, 3) == pytest.approx(3 / 5)
    assert popularity_hit_rate(counts, validation, 6) == pytest.approx(4 / 5)
    rng = np.random.default_rng(0)
    big_counts = rng.integers(0, 5, 40)  # many ties
    lengths = rng.integers(0, 6, 30)
    big = Validation(
        users=np.arange(30),
        targets=rng.integers(0, 40, 30),
        seen_indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        seen_items=rng.integers(0, 40, int(lengths.sum())),
    )
    for k in (1, 5, 20):
        assert popularity_hit_rate(big_counts, big, k) == _brute_popularity_hr(big_counts, big, k)


def test_metrics_compare_the_model_with_popularity_on_the_same_validation(
    trained: Trained, small_config: TrainConfig
) -> None:
    key = f"valid_hr@{small_config.validation_k}"
    popular = trained.metrics["popularity"][key]
    assert 0 < popular < 1
    assert trained.metrics[key] > popular  # the planted structure beats popularity
