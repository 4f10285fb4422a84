"""Small structured vectors and real bundles for the index tests (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recall.index import bundle as b
from recall.index.tower import SPEC_KEY, TowerSpec


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
