"""Complete serving bundles around structured synthetic vectors, cached on disk.

The vectors (:func:`clustered_vectors`) are bias-folded item rows ``[w, b]`` clustered
around topics (unequal topic sizes), with unequal norms like softmax weights, and user
rows ``[u, 1]`` near a topic (never benchmark ANN on iid randn: there HNSW is no faster
than Flat at equal recall, so the timings say nothing of real vectors). The norm
spread is kept moderate (log-normal sigma 0.1): measured here, the HNSW index over the
MIPS-to-L2 transform needs efSearch ~768 for recall@100 0.95 at 1M items with it (~2 ms a
query, ~9x faster than Flat), but efSearch 2048 with sigma 0.35 (``bench/index_bench.py``'s
generator; ~13 ms, barely faster than Flat). The fast-ANN regime is the one where the HTTP
layer's cost shows, so it is the honest test of the service.

Around the vectors this module writes every trainer file of the bundle contract
(:data:`recall.index.bundle.TRAINER_FILES_V1`: a schema_version 1 bundle):

- ``user_seen``: each user has seen ~30 items (log-normal count, 5..200), drawn by
  popularity, so ``exclude_seen`` (on by default) removes items that do rank high;
- ``user_tower.npz``: a tiny valid tower (item_dim 8, hidden [64]) that
  :meth:`recall.service.recaller.ServingBundle.load` accepts (its output is not meant to match
  the user vectors: the benchmark recalls by user id);
- ``item_popularity``: the seen counts.

Then :func:`recall.index.build.build_index` builds and tunes the index (Flat, or HNSW to
recall@100 >= 0.95) and the bundle is published. A bundle is reused when its root holds a
published bundle made with the same parameters; building 1M HNSW takes minutes on 2 cores.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recall.index import bundle as b
from recall.index.attributes import ItemAttributes
from recall.index.build import BuildOptions, build_index
from recall.index.history import UserHistory
from recall.index.publish import publish, read_current
from recall.index.tower import SPEC_KEY, TowerSpec

logger = logging.getLogger("bench.bundles")

#: Bumped whenever what this module writes changes, so stale caches are rebuilt.
GENERATOR_VERSION = 2
ITEM_ID_OFFSET = 10_000_000  # item ids differ from user ids and from rows


@dataclass(frozen=True)
class BenchBundle:
    """What to generate: catalog size, users, index kind and its build parameters."""

    n_items: int
    n_users: int
    kind: str  # "flat" or "hnsw"
    dim: int = 64  # plus the bias coordinate
    seed: int = 0
    mean_seen: float = 30.0
    norm_sigma: float = 0.1
    hnsw_m: int = 32
    ef_construction: int = 64

    @property
    def name(self) -> str:
        return f"{self.n_items}-{self.kind}"

    def fingerprint(self) -> dict[str, Any]:
        return {"generator_version": GENERATOR_VERSION, **asdict(self)}


def clustered_vectors(
    n_items: int,
    n_users: int,
    dim: int = 64,
    seed: int = 0,
    *,
    item_noise: float = 0.5,
    user_noise: float = 0.6,
    norm_sigma: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Items ``[w, b]`` (n_items, dim + 1) and users ``[u, 1]`` (n_users, dim + 1), float32.

    ``~sqrt(n)/2`` unit topic directions in groups of ~20; topic sizes from a Dirichlet(0.7)
    (a few large topics, many small); an item is its topic's direction plus Gaussian noise
    of norm ~``item_noise``, scaled to a log-normal norm (``norm_sigma``); its bias is
    log-popularity (that norm's log) plus N(0, 0.3). A user is a topic direction (drawn by
    topic size) plus noise of norm ~``user_noise``, with norm ~e.
    """
    rng = np.random.default_rng(seed)
    n_topics = max(8, round(n_items**0.5 / 2))
    n_groups = max(2, n_topics // 20)
    groups = rng.standard_normal((n_groups, dim))
    groups /= np.linalg.norm(groups, axis=1, keepdims=True)
    topics = groups[rng.integers(n_groups, size=n_topics)]
    topics = topics + 0.6 * rng.standard_normal((n_topics, dim)) / np.sqrt(dim)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    share = rng.dirichlet(np.full(n_topics, 0.7))
    topic = rng.choice(n_topics, size=n_items, p=share)
    popularity = rng.lognormal(0.0, norm_sigma, n_items)
    items = np.empty((n_items, dim + 1), dtype=np.float32)
    step = 200_000
    for s in range(0, n_items, step):
        e = min(s + step, n_items)
        w = topics[topic[s:e]] + item_noise * rng.standard_normal((e - s, dim)) / np.sqrt(dim)
        w *= (popularity[s:e] / np.linalg.norm(w, axis=1))[:, None]
        items[s:e, :dim] = w
    items[:, dim] = np.log(popularity) + 0.3 * rng.standard_normal(n_items)
    user_topic = rng.choice(n_topics, size=n_users, p=share)
    u = topics[user_topic] + user_noise * rng.standard_normal((n_users, dim)) / np.sqrt(dim)
    u *= (rng.lognormal(1.0, 0.2, n_users) / np.linalg.norm(u, axis=1))[:, None]
    users = np.hstack([u, np.ones((n_users, 1))]).astype(np.float32)
    return items, users


def seen_lists(
    n_users: int, popularity: np.ndarray, mean_seen: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(indptr (n_users + 1,) int64, indices int32)`` of distinct items per user,
    drawn with probability proportional to ``popularity``; counts log-normal, 5..200."""
    counts = np.clip(rng.lognormal(np.log(mean_seen) - 0.18, 0.6, n_users), 5, 200).astype(np.int64)
    p = popularity / popularity.sum()
    items = rng.choice(popularity.size, size=int(counts.sum()), p=p)
    users = np.repeat(np.arange(n_users), counts)
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    keep = np.ones(items.size, dtype=bool)
    keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items = users[keep], items[keep]
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr, items.astype(np.int32)


def tower_arrays(n_items: int, dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A valid ``user_tower.npz`` content: item_dim 8, one hidden layer of width ``dim``."""
    spec = TowerSpec(n_items=n_items, item_dim=8, hidden=[dim])
    return {
        SPEC_KEY: np.asarray(spec.model_dump_json()),
        "item_embedding": (0.1 * rng.standard_normal((n_items, 8))).astype(np.float32),
        "item_genres": np.zeros((n_items, 0), dtype=np.int32),
        "layers.0.weight": (0.3 * rng.standard_normal((dim, spec.input_width))).astype(np.float32),
        "layers.0.bias": np.full(dim, 0.1, dtype=np.float32),
    }


def _cached(root: Path, spec: BenchBundle) -> Path | None:
    current = read_current(root) if root.is_dir() else None
    if current is None:
        return None
    path = root / current
    try:
        manifest = b.read_manifest(path)
    except b.BundleError:
        return None
    if manifest.index is None or manifest.trainer.get("bench") != spec.fingerprint():
        return None
    return path


def ensure_bundle(cache: Path, spec: BenchBundle) -> Path:
    """The published bundle for ``spec`` under ``cache/<name>/``, built if not cached."""
    root = cache / spec.name
    found = _cached(root, spec)
    if found is not None:
        logger.info("reusing %s", found)
        return found
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.default_rng(spec.seed + 1)
    logger.info("generating %s (%d items, %d users)", spec.name, spec.n_items, spec.n_users)
    items, users = clustered_vectors(
        spec.n_items, spec.n_users, spec.dim, spec.seed, norm_sigma=spec.norm_sigma
    )
    # the bias coordinate is log-popularity + noise: draw what users have seen from it
    indptr, seen = seen_lists(spec.n_users, np.exp(items[:, -1]), spec.mean_seen, rng)
    arrays: dict[str, np.ndarray | dict[str, np.ndarray]] = {
        b.ITEM_IDS: np.arange(spec.n_items, dtype=np.int64) + ITEM_ID_OFFSET,
        b.ITEM_VECTORS: items,
        b.USER_IDS: np.arange(spec.n_users, dtype=np.int64),
        b.USER_VECTORS: users,
        b.USER_SEEN: {"indptr": indptr, "indices": seen},
        b.USER_TOWER: tower_arrays(spec.n_items, spec.dim, rng),
        b.ITEM_POPULARITY: np.bincount(seen, minlength=spec.n_items).astype(np.int64),
    }
    bundle = b.write_bundle(
        root,
        b.new_bundle_id(),
        arrays,
        dim=spec.dim + 1,
        counts=b.Counts(users=spec.n_users, items=spec.n_items, interactions=int(seen.size)),
        trainer={"source": "bench/_bundles.py", "bench": spec.fingerprint()},
    )
    del items, users, arrays
    section = build_index(
        bundle,
        BuildOptions(
            kind=spec.kind,
            target_recall=0.95,
            recall_k=100,
            sample_queries=1000 if spec.kind != "flat" else 100,
            latency_queries=200 if spec.kind != "flat" else 20,
            seed=spec.seed,
            hnsw_m=spec.hnsw_m,
            ef_construction=spec.ef_construction,
        ),
    )
    publish(bundle)
    logger.info("built %s: %s", spec.name, json.dumps(summary(section)))
    return bundle


def summary(section: dict[str, Any]) -> dict[str, Any]:
    """The parts of a manifest index section the benchmark reports."""
    recall = section.get("recall", {})
    k = recall.get("k", 100)
    return {
        "kind": section.get("kind"),
        "factory": section.get("factory"),
        "build_params": section.get("build_params"),
        "search_params": section.get("search_params"),
        "build_seconds": section.get("build_seconds"),
        f"recall_at_{k}": recall.get(f"at_{k}"),
        "recall_target_met": recall.get("target_met"),
        "build_latency_ms": section.get("latency_ms"),
    }


TRAINED_UNTIL = 1_700_000_000.0
"""``trained_until`` of :func:`serving_v2`'s bundles: events after it are fresh."""
WINDOW = 50
FILTER_ATTRIBUTE = "decile"
""":func:`serving_v2`'s numeric item attribute, 0..9 (~10% of the items each)."""


def serving_v2(v1: Path, root: Path) -> Path:
    """A schema_version 2 copy of bundle ``v1``, published under ``root`` (reused when
    there), for the fresh-events and filter paths: big files hard-linked,
    ``user_history.npz`` (each user's last <= 50 seen items, in time order before
    :data:`TRAINED_UNTIL`) and ``item_attributes.npz`` (``decile``: a seeded random
    0..9 per item) written. The stored user vectors stay those the index was tuned on, so
    a recall of a user without fresh events searches exactly as on ``v1``."""
    target = root / v1.name
    if root.is_dir() and read_current(root) == v1.name:
        return target
    if root.exists():
        shutil.rmtree(root)
    target.mkdir(parents=True)
    manifest = b.read_manifest(v1)
    for name in manifest.files:
        os.link(v1 / name, target / name)
    b.save_array(target / b.USER_HISTORY, seen_windows(v1).arrays())
    n_items = manifest.counts.items
    decile = np.random.default_rng(7).integers(0, 10, n_items).astype(np.float64)
    attributes = ItemAttributes.from_raw({FILTER_ATTRIBUTE: decile}, n_items, {})
    b.save_array(target / b.ITEM_ATTRIBUTES, attributes.arrays())
    upgrade_to_v2(
        target,
        manifest,
        [b.USER_HISTORY, b.ITEM_ATTRIBUTES],
        item_attributes=attributes.schema(),
    )
    publish(target)
    return target


def seen_windows(bundle: Path) -> UserHistory:
    """Each user's last <= :data:`WINDOW` seen items of ``bundle`` as a training window, in
    time order, a second apart in the day before :data:`TRAINED_UNTIL`; no features."""
    seen = np.load(bundle / b.USER_SEEN)
    indptr, indices = seen["indptr"], seen["indices"]
    lengths = np.minimum(np.diff(indptr), WINDOW)
    window_indptr = np.zeros_like(indptr)
    np.cumsum(lengths, out=window_indptr[1:])
    starts = np.repeat(indptr[1:] - lengths, lengths)  # each user's last `length` items
    position = np.arange(int(lengths.sum())) - np.repeat(window_indptr[:-1], lengths)
    n_users = len(lengths)
    return UserHistory(
        indptr=window_indptr.astype(np.int64),
        items=indices[starts + position].astype(np.int32),
        timestamps=TRAINED_UNTIL - 86_400.0 + position.astype(np.float64),
        categorical=np.zeros((n_users, 0), dtype=np.int64),
        numeric=np.zeros((n_users, 0), dtype=np.float32),
    )


def upgrade_to_v2(
    target: Path, manifest: b.Manifest, written: Sequence[str], **fields: Any
) -> None:
    """Rewrite ``target``'s manifest (``manifest``, its v1 one) as schema_version 2, trained
    until :data:`TRAINED_UNTIL`, with ``fields`` set and the files named in ``written``
    (just written into ``target``) hashed again."""
    files = {**manifest.files, **{name: b.file_entry(target / name) for name in written}}
    upgraded = b.Manifest.model_validate(
        {
            **manifest.model_dump(),
            "schema_version": 2,
            "trained_until": TRAINED_UNTIL,
            **fields,
            "files": files,
        }
    )
    b.write_json_atomic(target / b.MANIFEST, upgraded.model_dump_json())
