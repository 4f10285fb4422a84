"""Baselines for the quality benchmark: item-kNN (cosine), implicit's ALS and BPR, PureSVD.

Every baseline sees only the training part of the leave-last-out split, as a binary
user x item matrix, and is tuned on the validation item (never the test item). Each
returns a :data:`recall.trainer.evaluate.ScoreFn`, so that it runs through exactly the same
``recall.trainer.evaluate.evaluate`` as the model.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.cpu.bpr import BayesianPersonalizedRanking
from scipy.sparse.linalg import svds
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

from recall.trainer.data import Dataset
from recall.trainer.evaluate import EvalTask, ScoreFn, evaluate, task_from_data
from recall.trainer.split import NO_ITEM, Split, leave_last_out

logger = logging.getLogger(__name__)

TUNE_METRIC = "hr@50"
KNN_NEIGHBOURS: tuple[int | None, ...] = (10, 20, 50, 100, 200, None)  # None = all items
KNN_SHRINK = (0.0, 10.0, 50.0)
ALS_FACTORS = (32, 64, 128)
ALS_REGULARIZATION = (0.01, 0.1, 1.0, 10.0)
ALS_ALPHA = (1.0, 3.0, 10.0, 40.0)
ALS_ITERATIONS = (15, 20, 25, 30)  # checkpoints of one run: fit() resumes from its factors
BPR_FACTORS = (32, 64, 128)
BPR_LEARNING_RATE = (0.01, 0.05)
BPR_REGULARIZATION = (0.001, 0.01)
BPR_ITERATIONS = (50, 100, 200)  # checkpoints of one run, as for ALS
SVD_FACTORS = (8, 16, 32, 48, 64, 96, 128)
ALS_SEARCH_SPACE = {
    "factors": list(ALS_FACTORS),
    "regularization": list(ALS_REGULARIZATION),
    "alpha": list(ALS_ALPHA),
    "iterations": list(ALS_ITERATIONS),
    "confidence": "1 + alpha * r on a binary matrix",
}
BPR_SEARCH_SPACE = {
    "factors": list(BPR_FACTORS),
    "learning_rate": list(BPR_LEARNING_RATE),
    "regularization": list(BPR_REGULARIZATION),
    "iterations": list(BPR_ITERATIONS),
}


@dataclass
class Tuned:
    """The chosen hyper-parameters, their validation metrics and the whole grid."""

    params: dict[str, Any]
    valid: dict[str, float]
    grid: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def training_matrix(split: Split, n_items: int) -> sp.csr_matrix:
    """Binary user x item CSR matrix of the training interactions: (n_users, n_items)."""
    indptr, indices = split.seen()
    data = np.ones(len(indices), dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(split.n_users, n_items))


def validation_task(split: Split, n_items: int) -> EvalTask:
    """Users with a validation item, that item as target, training items excluded."""
    users = np.flatnonzero(split.valid_items != NO_ITEM)
    indptr, indices = split.seen()
    return EvalTask(users, split.valid_items[users].astype(np.int64), indptr, indices, n_items)


class Protocol(NamedTuple):
    """docs/quality.md's protocol over one data set: what every method is fit and scored on."""

    split: Split  # leave-last-out on time
    test: EvalTask  # each user's last item, training and validation items excluded
    valid: EvalTask  # the item before it, training items excluded: for tuning only
    matrix: sp.csr_matrix  # (n_users, n_items) binary training interactions


def protocol(dataset: Dataset) -> Protocol:
    """The split, test and validation tasks and training matrix of ``dataset``."""
    split = leave_last_out(
        dataset.user_rows, dataset.item_rows, dataset.timestamps, dataset.n_users
    )
    seen_indptr, seen_indices = split.seen()
    test = task_from_data(dataset, dataset.user_ids, dataset.item_ids, seen_indptr, seen_indices)
    return Protocol(
        split,
        test,
        validation_task(split, dataset.n_items),
        training_matrix(split, dataset.n_items),
    )


# ----------------------------------------------------------------------------- item-kNN


def cosine_similarity(matrix: sp.csr_matrix, shrink: float = 0.0) -> np.ndarray:
    """Item x item cosine similarity of a binary user x item matrix, dense (n_items,)*2.

    ``sim(i, j) = |U_i & U_j| / (sqrt(|U_i| |U_j|) + shrink)``; the diagonal is zero.
    Dense is fine for ML-100K-sized catalogs (n_items^2 floats).
    """
    co = (matrix.T @ matrix).toarray().astype(np.float64)
    norms = np.sqrt(np.diag(co))
    sim = co / (np.outer(norms, norms) + shrink + 1e-12)
    np.fill_diagonal(sim, 0.0)
    out: np.ndarray = sim.astype(np.float32)
    return out


def keep_top_neighbours(sim: np.ndarray, k: int | None) -> np.ndarray:
    """Keep, for each candidate item j (column), its ``k`` most similar items; zero the rest."""
    n = sim.shape[0]
    if k is None or k >= n:
        return sim
    top = np.argpartition(-sim, k - 1, axis=0)[:k]
    pruned = np.zeros_like(sim)
    cols = np.broadcast_to(np.arange(n), top.shape)
    pruned[top, cols] = sim[top, cols]
    return pruned


def itemknn_scorer(matrix: sp.csr_matrix, weights: np.ndarray) -> ScoreFn:
    """``score(u, j) = sum over training items i of u of weights[i, j]``."""

    def score(users: np.ndarray) -> np.ndarray:
        return np.asarray(matrix[users] @ weights, dtype=np.float32)

    return score


def tune_itemknn(
    matrix: sp.csr_matrix,
    valid: EvalTask,
    neighbours: Sequence[int | None] = KNN_NEIGHBOURS,
    shrinks: Sequence[float] = KNN_SHRINK,
) -> Tuned:
    """Grid search of neighbourhood size and shrinkage by validation HR@50."""
    started = time.perf_counter()
    grid: list[dict[str, Any]] = []
    for shrink in shrinks:
        sim = cosine_similarity(matrix, shrink)
        for k in neighbours:
            metrics = evaluate(itemknn_scorer(matrix, keep_top_neighbours(sim, k)), valid)
            grid.append({"neighbours": k, "shrink": shrink, **metrics})
            logger.debug("item-kNN k=%s shrink=%s: valid %s", k, shrink, metrics)
    return _chosen("item-kNN", grid, ("neighbours", "shrink"), started)


def fit_itemknn(matrix: sp.csr_matrix, neighbours: int | None, shrink: float) -> ScoreFn:
    """An item-kNN scorer with the given hyper-parameters."""
    return itemknn_scorer(
        matrix, keep_top_neighbours(cosine_similarity(matrix, shrink), neighbours)
    )


# ---------------------------------------------------------------------------------- ALS


def confidence_matrix(matrix: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """Hu, Koren & Volinsky confidence ``c = 1 + alpha * r`` on the observed entries.

    implicit reads the stored values as confidences (preference 1, weight c), so its own
    ``alpha`` stays 1.
    """
    confidence = matrix.copy()
    confidence.data = (1.0 + alpha * confidence.data).astype(np.float32)
    return confidence


def _als(factors: int, regularization: float, iterations: int, seed: int) -> Any:
    """implicit's ALS on one thread. (implicit is imported at module level on purpose: a
    BLAS library first loaded inside ``threadpool_limits`` would escape the limit.)"""
    return AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=1.0,
        iterations=iterations,
        num_threads=1,
        random_state=seed,
    )


def als_scorer(model: Any) -> ScoreFn:
    """``user_factors[u] . item_factors[i]`` of a fitted implicit ALS model."""
    user_factors = np.asarray(model.user_factors, dtype=np.float32)
    item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def score(users: np.ndarray) -> np.ndarray:
        return np.asarray(user_factors[users] @ item_factors.T)

    return score


def fit_als(
    matrix: sp.csr_matrix,
    factors: int,
    regularization: float,
    alpha: float,
    iterations: int,
    seed: int,
) -> ScoreFn:
    """Fit implicit's ALS (one thread, BLAS on one thread: deterministic) and score with it."""
    with threadpool_limits(limits=1, user_api="blas"):
        model = _als(factors, regularization, iterations, seed)
        model.fit(confidence_matrix(matrix, alpha), show_progress=False)
    return als_scorer(model)


def tune_als(
    matrix: sp.csr_matrix,
    valid: EvalTask,
    seed: int,
    factors: Sequence[int] = ALS_FACTORS,
    regularizations: Sequence[float] = ALS_REGULARIZATION,
    alphas: Sequence[float] = ALS_ALPHA,
    iterations: Sequence[int] = ALS_ITERATIONS,
) -> Tuned:
    """Grid search by validation HR@50; iteration counts are checkpoints of one run
    (:func:`_checkpoints`)."""
    started = time.perf_counter()
    grid: list[dict[str, Any]] = []
    for f, reg, alpha in itertools.product(factors, regularizations, alphas):
        confidence = confidence_matrix(matrix, alpha)
        with threadpool_limits(limits=1, user_api="blas"):
            model = _als(f, reg, min(iterations), seed)
            row = {"factors": f, "regularization": reg, "alpha": alpha}
            grid += _checkpoints("ALS", model, confidence, iterations, valid, row)
    keys = ("factors", "regularization", "alpha", "iterations")
    return _chosen(f"ALS seed {seed}", grid, keys, started)


# ---------------------------------------------------------------------------------- BPR


def _bpr(factors: int, learning_rate: float, regularization: float, seed: int) -> Any:
    """implicit's BPR on one thread (deterministic for a seed); iterations set per fit."""
    return BayesianPersonalizedRanking(
        factors=factors,
        learning_rate=learning_rate,
        regularization=regularization,
        num_threads=1,
        random_state=seed,
    )


def fit_bpr(
    matrix: sp.csr_matrix,
    factors: int,
    learning_rate: float,
    regularization: float,
    iterations: int,
    seed: int,
) -> ScoreFn:
    """Fit implicit's BPR on the binary matrix and score with its factors (which carry the
    item bias as one more column)."""
    with threadpool_limits(limits=1, user_api="blas"):
        model = _bpr(factors, learning_rate, regularization, seed)
        model.iterations = iterations
        model.fit(matrix, show_progress=False)
    return als_scorer(model)


def tune_bpr(
    matrix: sp.csr_matrix,
    valid: EvalTask,
    seed: int,
    factors: Sequence[int] = BPR_FACTORS,
    learning_rates: Sequence[float] = BPR_LEARNING_RATE,
    regularizations: Sequence[float] = BPR_REGULARIZATION,
    iterations: Sequence[int] = BPR_ITERATIONS,
) -> Tuned:
    """Grid search by validation HR@50; iteration counts are checkpoints of one run
    (:func:`_checkpoints`)."""
    started = time.perf_counter()
    grid: list[dict[str, Any]] = []
    for f, lr, reg in itertools.product(factors, learning_rates, regularizations):
        with threadpool_limits(limits=1, user_api="blas"):
            model = _bpr(f, lr, reg, seed)
            row = {"factors": f, "learning_rate": lr, "regularization": reg}
            grid += _checkpoints("BPR", model, matrix, iterations, valid, row)
    keys = ("factors", "learning_rate", "regularization", "iterations")
    return _chosen("BPR", grid, keys, started)


# ------------------------------------------------------------------------------ PureSVD


def fit_puresvd(matrix: sp.csr_matrix, factors: int) -> ScoreFn:
    """PureSVD (Cremonesi et al. 2010): the top ``factors`` right singular vectors ``V`` of
    the binary matrix; ``score(u) = r_u V V^T``. Deterministic (fixed start vector)."""
    start = np.ones(min(matrix.shape), dtype=np.float64)
    _, _, vt = svds(matrix.astype(np.float64), k=factors, v0=start)
    items = np.ascontiguousarray(vt.T, dtype=np.float32)  # (n_items, factors)
    users = np.asarray(matrix @ items, dtype=np.float32)  # (n_users, factors)

    def score(rows: np.ndarray) -> np.ndarray:
        return np.asarray(users[rows] @ items.T)

    return score


def tune_puresvd(
    matrix: sp.csr_matrix, valid: EvalTask, factors: Sequence[int] = SVD_FACTORS
) -> Tuned:
    """The number of factors by validation HR@50."""
    started = time.perf_counter()
    grid = [{"factors": f, **evaluate(fit_puresvd(matrix, f), valid)} for f in factors]
    return _chosen("PureSVD", grid, ("factors",), started)


def _chosen(name: str, grid: list[dict[str, Any]], keys: Sequence[str], started: float) -> Tuned:
    """The grid point with the best validation :data:`TUNE_METRIC`."""
    best = max(grid, key=lambda row: row[TUNE_METRIC])
    params = {key: best[key] for key in keys}
    valid_metrics = {key: v for key, v in best.items() if key not in params}
    logger.info("%s: chose %s (valid %s %.4f)", name, params, TUNE_METRIC, best[TUNE_METRIC])
    return Tuned(params, valid_metrics, grid, round(time.perf_counter() - started, 3))


def _checkpoints(
    name: str,
    model: Any,
    matrix: sp.csr_matrix,
    iterations: Sequence[int],
    valid: EvalTask,
    row: dict[str, Any],
) -> list[dict[str, Any]]:
    """Fit implicit's ``model`` on ``matrix`` up to each of ``iterations`` in turn (one run:
    ``fit`` resumes from the current factors, so 15 then 5 more iterations equal 20 from
    scratch); a grid row per checkpoint: ``row``, the iterations, the validation metrics."""
    grid: list[dict[str, Any]] = []
    done = 0
    for total in sorted(iterations):
        model.iterations = total - done
        model.fit(matrix, show_progress=False)
        done = total
        metrics = evaluate(als_scorer(model), valid)
        point = {**row, "iterations": total}
        grid.append({**point, **metrics})
        logger.debug("%s %s: valid %s", name, point, metrics)
    return grid
