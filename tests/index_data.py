"""Small structured vectors and real bundles, written without torch: vectors around given
arrays for the index tests, and a data set's whole bundle (a random tower in place of a
trained model) for the service tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recall.index import attention
from recall.index import bundle as b
from recall.index.attributes import ItemAttributes
from recall.index.build import BuildOptions
from recall.index.history import UserHistory
from recall.index.tower import SPEC_KEY, TowerSpec, UserTower, fold_user, pad_histories
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from recall.trainer.examples import full_histories, window_positions
from recall.trainer.features import build_spec, encode_users, item_genre_rows
from recall.trainer.split import leave_last_out

FAST_FLAT = BuildOptions(kind="flat", sample_queries=20, latency_queries=5)
"""An exact index tuned on few queries: for the tests that serve or publish a bundle, not
the ones that measure its index."""


def clustered(
    n_items: int, n_users: int, dim: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Bias-folded float32 item rows (n_items, dim + 1) and user rows ``[u, 1]``.

    Items cluster around topics and have unequal norms (log-normal, like softmax
    weights); the bias is log-popularity. Users sit near a topic.
    """
    rng = np.random.default_rng(seed)
    n_topics = max(4, n_items // 100)
    topics = rng.standard_normal((n_topics, dim))
    topic = rng.integers(n_topics, size=n_items)
    w = topics[topic] + 0.7 * rng.standard_normal((n_items, dim))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    popularity = rng.lognormal(0.0, 0.4, n_items)
    w *= popularity[:, None]
    bias = np.log(popularity) + 0.2 * rng.standard_normal(n_items)
    items = np.hstack([w, bias[:, None]]).astype(np.float32)
    u = topics[rng.integers(n_topics, size=n_users)] + 0.8 * rng.standard_normal((n_users, dim))
    users = np.hstack([u, np.ones((n_users, 1))]).astype(np.float32)
    return items, users


def tower_arrays(n_items: int, width: int, item_dim: int = 2) -> dict[str, np.ndarray]:
    """A valid one-layer user tower (zero weights) over ``n_items`` with output ``width``."""
    spec = TowerSpec(n_items=n_items, item_dim=item_dim, hidden=[width])
    return {
        SPEC_KEY: np.asarray(spec.model_dump_json()),
        "item_embedding": np.zeros((n_items, item_dim), dtype=np.float32),
        "layers.0.weight": np.zeros((width, spec.input_width), dtype=np.float32),
        "layers.0.bias": np.zeros(width, dtype=np.float32),
    }


def write_vectors_bundle(
    root: Path,
    items: np.ndarray,
    users: np.ndarray,
    bundle_id: str = "20260101T000000Z-aaaaaa",
) -> Path:
    """A complete trainer-side bundle (every file of the contract) around given vectors."""
    n_items, dim = items.shape
    n_users = users.shape[0]
    seen_indptr = np.arange(n_users + 1, dtype=np.int64)
    seen_items = (np.arange(n_users) % n_items).astype(np.int32)
    arrays: dict[str, np.ndarray | dict[str, np.ndarray]] = {
        b.ITEM_IDS: np.arange(1000, 1000 + n_items, dtype=np.int64),
        b.ITEM_VECTORS: items,
        b.USER_IDS: np.arange(n_users, dtype=np.int64),
        b.USER_VECTORS: users,
        b.USER_SEEN: {"indptr": seen_indptr, "indices": seen_items},
        b.USER_TOWER: tower_arrays(n_items, dim - 1),
        b.ITEM_POPULARITY: np.ones(n_items, dtype=np.int64),
    }
    return b.write_bundle(
        root,
        bundle_id,
        arrays,
        dim=dim,
        counts=b.Counts(users=n_users, items=n_items, interactions=n_users),
        trainer={"source": "tests.index_data"},
    )


#: The training curve written into a :func:`write_dataset_bundle` manifest: no model is
#: trained, so these are stated figures (what ``/v1/model`` and the console must show).
FIXTURE_METRICS: dict[str, Any] = {
    "best_epoch": 2,
    "valid_hr@50": 0.4,
    "popularity": {"valid_hr@50": 0.2},
    "validation_users": 300,
    "examples_per_second": 1000.0,
    "epochs": [
        {
            "epoch": 1,
            "train_loss": 5.5,
            "valid_hr": 0.3,
            "examples_per_second": 1000.0,
            "seconds": 1.0,
        },
        {
            "epoch": 2,
            "train_loss": 5.0,
            "valid_hr": 0.4,
            "examples_per_second": 1000.0,
            "seconds": 1.0,
        },
    ],
}


def random_tower(spec: TowerSpec, item_genres: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """The contents of ``user_tower.npz`` for ``spec`` (either tower kind) with seeded
    random weights, named as :class:`~recall.index.tower.UserTower` reads them (and as
    the trainer writes them);
    ``item_genres`` (n_items, max_genres_per_item) int32 genre rows."""
    rng = np.random.default_rng(seed)

    def table(rows: int, dim: int) -> np.ndarray:
        return rng.standard_normal((rows, dim)).astype(np.float32)

    arrays = {
        SPEC_KEY: np.asarray(spec.model_dump_json()),
        "item_embedding": table(spec.n_items, spec.item_dim),
        "item_genres": item_genres.astype(np.int32),
    }
    if spec.has_genres:
        arrays["genre_embedding"] = table(len(spec.genre_vocab) + 1, spec.genre_dim)
    for j, feature in enumerate(spec.categorical):
        arrays[f"categorical.{j}"] = table(len(feature.vocabulary) + 1, feature.dim)
    if spec.tower == "attention":
        for name, shape in attention.weight_shapes(spec.history_length, spec.item_dim).items():
            arrays[attention.PREFIX + name] = random_attention_weight(name, shape, rng)
    width = spec.input_width
    for j, out in enumerate(spec.hidden):
        arrays[f"layers.{j}.weight"] = table(out, width) / np.float32(np.sqrt(width))
        arrays[f"layers.{j}.bias"] = np.full(out, 0.1, dtype=np.float32)
        width = out
    return arrays


def random_attention_weight(
    name: str, shape: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """One seeded weight of the attention readout (:func:`recall.index.attention.weight_shapes`
    names it), float32 at the scale of a trained one: a matrix ~ N(0, 1 / fan-in), a
    LayerNorm scale near 1, a bias or slot embedding near 0."""
    noise = rng.standard_normal(shape)
    if len(shape) == 2 and not name.startswith("position"):
        return (noise / np.sqrt(shape[1])).astype(np.float32)
    centre = 1.0 if name.startswith("norm") and name.endswith(".weight") else 0.0
    return (centre + 0.1 * noise).astype(np.float32)


def popular_leaning_items(counts: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Bias-folded float32 item rows (n_items, dim + 1) for item training counts (n_items,):
    a random direction plus a shared one (all positive, as ReLU user vectors are) scaled by
    log-popularity, and log-popularity as the bias, so popular items score high for every
    user and are each other's neighbours, as a trained softmax model's are."""
    popularity = np.log1p(counts.astype(np.float64))
    shared = np.ones(dim) / np.sqrt(dim)
    w = rng.standard_normal((len(counts), dim)) / np.sqrt(dim)
    w += (popularity / max(float(popularity.max()), 1.0))[:, None] * shared
    return np.hstack([w, popularity[:, None]]).astype(np.float32)


def write_dataset_bundle(
    root: Path,
    dataset: Dataset,
    config: TrainConfig,
    bundle_id: str,
    seed: int = 0,
) -> Path:
    """The bundle the trainer would export for ``dataset`` (schema_version 2: ids, seen
    lists, histories, user features, item attributes, column types, ``trained_until``),
    with a seeded random tower and :func:`popular_leaning_items` in place of a trained
    model: no torch. Each user vector is the tower's output on the user's history window
    and features, so recall by user equals recall by that history. No index yet."""
    split = leave_last_out(
        dataset.user_rows, dataset.item_rows, dataset.timestamps, dataset.n_users
    )
    spec = build_spec(dataset, config)
    users = encode_users(spec, dataset)
    tower_file = random_tower(spec, item_genre_rows(spec, dataset), seed)
    indptr, positions = window_positions(full_histories(split, config.history_length))
    window_items = split.train_items[positions].astype(np.int64)
    history, mask = pad_histories(np.split(window_items, indptr[1:-1]), spec.history_length)
    tower = UserTower(spec, tower_file)
    u = tower.forward(history, mask, users.categorical, users.numeric, np.zeros(dataset.n_users))
    rng = np.random.default_rng(seed + 1)
    counts = np.bincount(split.train_items, minlength=dataset.n_items).astype(np.int64)
    items = popular_leaning_items(counts, spec.dim, rng)
    seen_indptr, seen_items = split.seen()
    arrays: dict[str, np.ndarray | dict[str, np.ndarray]] = {
        b.ITEM_IDS: dataset.item_ids,
        b.ITEM_VECTORS: items,
        b.USER_IDS: dataset.user_ids,
        b.USER_VECTORS: fold_user(u),
        b.USER_SEEN: {"indptr": seen_indptr, "indices": seen_items},
        b.USER_TOWER: tower_file,
        b.ITEM_POPULARITY: counts,
        b.USER_HISTORY: UserHistory(
            indptr=indptr,
            items=window_items.astype(np.int32),
            timestamps=split.train_times[positions].astype(np.float64),
            categorical=users.categorical,
            numeric=users.numeric,
        ).arrays(),
    }
    attributes = dataset_attributes(dataset)
    if attributes is not None:
        arrays[b.ITEM_ATTRIBUTES] = attributes.arrays()
    return b.write_bundle(
        root,
        bundle_id,
        arrays,
        dim=spec.dim + 1,
        counts=b.Counts(
            users=dataset.n_users, items=dataset.n_items, interactions=len(split.train_items)
        ),
        trainer={
            "config": config.model_dump(),
            "metrics": FIXTURE_METRICS,
            "data": str(dataset.source),
            "columns": {
                "items": [c.as_dict() for c in dataset.item_columns],
                "users": [c.as_dict() for c in dataset.user_columns],
            },
            "source": "tests.index_data",
        },
        trained_until=float(dataset.timestamps.max(initial=-np.inf)),
        item_attributes=None if attributes is None else attributes.schema(),
    )


def dataset_attributes(dataset: Dataset) -> ItemAttributes | None:
    """The items file's columns encoded for ``item_attributes.npz`` as the trainer encodes
    them (every name valid); None when the data has none."""
    if not dataset.item_attributes:
        return None
    kinds = {c.name: c.kind for c in dataset.item_columns}
    return ItemAttributes.from_raw(dict(dataset.item_attributes), dataset.n_items, kinds)


# -- damaged bundles: what bit rot, a broken copy or a trainer bug leaves ------------


def flip_a_byte(path: Path) -> None:
    """One bit of item_vectors.npy flipped (its sha256 no longer matches)."""
    data = bytearray((path / b.ITEM_VECTORS).read_bytes())
    data[len(data) // 2] ^= 0x40
    (path / b.ITEM_VECTORS).write_bytes(bytes(data))


def truncate_the_index(path: Path) -> None:
    """index.faiss without its last 100 bytes."""
    (path / b.INDEX).write_bytes((path / b.INDEX).read_bytes()[:-100])


def nan_with_fixed_up_sha(path: Path) -> None:
    """A NaN in item_vectors.npy, and a manifest whose sha256 and size say it is fine."""
    items = np.load(path / b.ITEM_VECTORS, allow_pickle=False)
    items[7, 0] = np.nan
    b.save_array(path / b.ITEM_VECTORS, items)
    manifest = b.read_manifest(path)
    files = {**manifest.files, b.ITEM_VECTORS: b.file_entry(path / b.ITEM_VECTORS)}
    forged = b.Manifest.model_validate({**manifest.model_dump(), "files": files})
    b.write_json_atomic(path / b.MANIFEST, forged.model_dump_json())
