"""Training examples: predict each next training item from only what came before it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recall.trainer.split import Split


@dataclass(frozen=True)
class Examples:
    """Parallel arrays, one entry per example (n,).

    users: int64 user rows; ends: int64 positions in ``Split.train_items`` of the label,
    so the history is the ``hist_lens`` items just before it; labels: int64 item rows;
    ages: float32 example age in [0, 1] (0 = the newest training interaction).
    """

    users: np.ndarray
    ends: np.ndarray
    hist_lens: np.ndarray
    labels: np.ndarray
    ages: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Histories:
    """Where each user's full training history ends, for user vectors: (n_users,) int64."""

    ends: np.ndarray
    hist_lens: np.ndarray


def make_examples(
    split: Split, history_length: int, max_per_user: int, rng: np.random.Generator
) -> Examples:
    """One example per training position after a user's first, at most ``max_per_user``.

    Users with more positions keep a uniformly random subset (drawn from ``rng``), so
    heavy users do not dominate the loss.
    """
    lengths = np.diff(split.train_indptr)
    n_positions = np.maximum(lengths - 1, 0)
    users = np.repeat(np.arange(split.n_users, dtype=np.int64), n_positions)
    first = np.repeat(split.train_indptr[:-1] + 1, n_positions)
    group_start = np.repeat(np.cumsum(n_positions) - n_positions, n_positions)
    positions = np.arange(len(users), dtype=np.int64) - group_start + 1  # 1..n_u-1
    ends = first + positions - 1

    if (n_positions > max_per_user).any():
        order = np.lexsort((rng.random(len(users)), users))
        rank = np.empty(len(users), dtype=np.int64)
        rank[order] = np.arange(len(users)) - group_start[order]
        keep = rank < max_per_user
        users, ends, positions = users[keep], ends[keep], positions[keep]

    times = split.train_times
    t_min, t_max = float(times.min(initial=0.0)), float(times.max(initial=0.0))
    span = (t_max - t_min) or 1.0
    return Examples(
        users=users,
        ends=ends,
        hist_lens=np.minimum(positions, history_length),
        labels=split.train_items[ends].astype(np.int64),
        ages=((t_max - times[ends]) / span).astype(np.float32),
    )


def full_histories(split: Split, history_length: int) -> Histories:
    """Each user's whole training history (the last ``history_length`` items of it)."""
    lengths = np.diff(split.train_indptr)
    return Histories(
        ends=split.train_indptr[1:].copy(),
        hist_lens=np.minimum(lengths, history_length),
    )


def window_positions(hist: Histories) -> tuple[np.ndarray, np.ndarray]:
    """The windows of :func:`full_histories` as CSR over positions in ``Split.train_items``:
    ``(indptr (n_users + 1,) int64, positions (nnz,) int64)``, each user's oldest first."""
    lengths = hist.hist_lens.astype(np.int64)
    indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    starts = hist.ends.astype(np.int64) - lengths
    positions = np.arange(int(indptr[-1]), dtype=np.int64) + np.repeat(
        starts - indptr[:-1], lengths
    )
    return indptr, positions
