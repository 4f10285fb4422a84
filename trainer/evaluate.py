"""Offline quality (docs/quality.md protocol): rank ALL items, exclude training items, score
the held-out test item. HR@k (= recall for one target), NDCG@10, catalog coverage@50,
with a popularity baseline in the same run. Numpy only: no torch needed to evaluate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recall.index import bundle as b
from recall.index.ids import IdMap
from recall.trainer.data import Dataset
from recall.trainer.split import NO_ITEM, leave_last_out

logger = logging.getLogger(__name__)

HIT_RATE_KS = (10, 50, 100)
NDCG_K = 10
COVERAGE_K = 50

ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Scores for a batch of user rows (b,) -> (b, n_items) float32; higher is better."""


class EvalError(ValueError):
    """Nothing to evaluate: the data set and the bundle share no test user and item."""


@dataclass(frozen=True)
class EvalTask:
    """Who is evaluated on what: users (m,) and their test item rows (m,), plus the
    training items to exclude as CSR over all users (indptr (n_users+1,), indices)."""

    users: np.ndarray
    targets: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    n_items: int


def ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target in its row, ties broken by item row (lower first).

    scores: (b, n_items) with excluded items at -inf; targets: (b,) item rows.
    An excluded target gets rank n_items (never a hit).
    """
    target_scores = scores[np.arange(len(targets)), targets][:, None]
    rows = np.arange(scores.shape[1])
    better = (scores > target_scores) | ((scores == target_scores) & (rows < targets[:, None]))
    rank: np.ndarray = np.where(
        np.isfinite(target_scores[:, 0]), better.sum(axis=1), scores.shape[1]
    )
    return rank


def evaluate(score: ScoreFn, task: EvalTask, batch: int = 1024) -> dict[str, float]:
    """HR@10/50/100, NDCG@10 and coverage@50 of a scorer on ``task``.

    Raises EvalError when the task has no user (every metric would be a mean of nothing).
    """
    if len(task.users) == 0:
        raise EvalError("no user to evaluate")
    all_ranks = []
    recommended = np.zeros(task.n_items, dtype=bool)
    for start in range(0, len(task.users), batch):
        users = task.users[start : start + batch]
        scores = np.array(score(users), dtype=np.float32)
        lengths = task.seen_indptr[users + 1] - task.seen_indptr[users]
        seen = np.concatenate(
            [task.seen_indices[task.seen_indptr[u] : task.seen_indptr[u + 1]] for u in users]
        )
        scores[np.repeat(np.arange(len(users)), lengths), seen] = -np.inf
        all_ranks.append(ranks(scores, task.targets[start : start + batch]))
        k = min(COVERAGE_K, task.n_items)
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        recommended[top[np.isfinite(np.take_along_axis(scores, top, axis=1))]] = True
    rank = np.concatenate(all_ranks) if all_ranks else np.zeros(0, dtype=np.int64)
    metrics = {f"hr@{k}": float(np.mean(rank < k)) for k in HIT_RATE_KS}
    metrics[f"ndcg@{NDCG_K}"] = float(np.mean(np.where(rank < NDCG_K, 1 / np.log2(rank + 2), 0)))
    metrics[f"coverage@{COVERAGE_K}"] = float(recommended.mean())
    metrics["users"] = float(len(rank))
    return metrics


def popularity_scorer(item_counts: np.ndarray) -> ScoreFn:
    """Every user gets the same scores: training interactions per item."""
    popularity = item_counts.astype(np.float32)

    def score(users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(popularity, (len(users), len(popularity)))

    return score


def dot_scorer(user_vectors: np.ndarray, item_vectors: np.ndarray) -> ScoreFn:
    """``user_vectors[u] . item_vectors[i]``: the model's logits for folded vectors."""

    def score(users: np.ndarray) -> np.ndarray:
        return np.asarray(user_vectors[users] @ item_vectors.T)

    return score


def task_from_data(
    dataset: Dataset,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    seen_indptr: np.ndarray,
    seen_indices: np.ndarray,
    max_users: int | None = None,
    seed: int = 0,
) -> EvalTask:
    """Test targets of ``dataset`` (leave-last-out), expressed in a bundle's rows."""
    split = leave_last_out(
        dataset.user_rows, dataset.item_rows, dataset.timestamps, dataset.n_users
    )
    data_users = np.flatnonzero(split.test_items != NO_ITEM)
    users = IdMap(user_ids).rows(dataset.user_ids[data_users])
    targets = IdMap(item_ids).rows(dataset.item_ids[split.test_items[data_users]])
    known = (users >= 0) & (targets >= 0)
    if not known.any():
        raise EvalError(
            f"the data and the bundle have no test user in common: of {len(known)} test "
            f"users, {int((users >= 0).sum())} are in the bundle and "
            f"{int((targets >= 0).sum())} have a test item the bundle knows "
            "(is this the data set the bundle was trained on?)"
        )
    if not known.all():
        logger.warning(
            "%d of %d test users are skipped: the user or their test item is unknown to the bundle",
            int((~known).sum()),
            len(known),
        )
    users, targets = users[known], targets[known]
    if max_users is not None and len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users, targets = users[pick], targets[pick]
    return EvalTask(users, targets, seen_indptr, seen_indices, len(item_ids))


def evaluate_bundle(
    bundle_dir: Path, dataset: Dataset, max_users: int | None = None
) -> dict[str, dict[str, float]]:
    """The model of a bundle and the popularity baseline, on the same users."""
    manifest = b.read_manifest(bundle_dir)
    seen = b.load_arrays(bundle_dir, manifest, b.USER_SEEN)
    task = task_from_data(
        dataset,
        b.load_array(bundle_dir, manifest, b.USER_IDS),
        b.load_array(bundle_dir, manifest, b.ITEM_IDS),
        seen["indptr"],
        seen["indices"],
        max_users,
    )
    model = dot_scorer(
        b.load_array(bundle_dir, manifest, b.USER_VECTORS),
        b.load_array(bundle_dir, manifest, b.ITEM_VECTORS),
    )
    popularity = popularity_scorer(b.load_array(bundle_dir, manifest, b.ITEM_POPULARITY))
    return {"model": evaluate(model, task), "popularity": evaluate(popularity, task)}


def format_table(results: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per method, one column per metric."""
    columns = [*(f"hr@{k}" for k in HIT_RATE_KS), f"ndcg@{NDCG_K}", f"coverage@{COVERAGE_K}"]
    width = max(len(name) for name in results) + 2
    lines = ["method".ljust(width) + "".join(c.rjust(13) for c in columns)]
    for name, metrics in results.items():
        lines.append(name.ljust(width) + "".join(f"{metrics[c]:13.4f}" for c in columns))
    return "\n".join(lines)
