"""Leave-last-out split on time (the quality protocol of docs/quality.md).

Each user's interactions are ordered by (timestamp, item_id); the last one is the test
target, the one before it the validation target, the rest is training data. Users with
fewer than three interactions keep everything for training and are not evaluated. Item
rows follow the sorted external ids, so ordering by item row equals ordering by item id.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_INTERACTIONS_TO_HOLD_OUT = 3
NO_ITEM = -1


@dataclass(frozen=True)
class Split:
    """Training sequences as CSR over user rows, plus one held-out item per user.

    train_indptr: (n_users + 1,) int64; train_items: (n_train,) int32 item rows in time
    order; train_times: (n_train,) float64; valid_items, test_items: (n_users,) int32
    item rows, ``NO_ITEM`` where the user has none.
    """

    train_indptr: np.ndarray
    train_items: np.ndarray
    train_times: np.ndarray
    valid_items: np.ndarray
    test_items: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.train_indptr) - 1

    def history(self, user: int) -> np.ndarray:
        """Training item rows of one user, oldest first."""
        return self.train_items[self.train_indptr[user] : self.train_indptr[user + 1]]

    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        """Unique training items per user as CSR ``(indptr (n_users+1,) int64, indices int32)``."""
        lengths = np.diff(self.train_indptr)
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), lengths)
        bound = int(self.train_items.max(initial=0)) + 1
        keys = np.unique(users * bound + self.train_items)
        seen_users = keys // bound
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(seen_users, minlength=self.n_users), out=indptr[1:])
        return indptr, (keys % bound).astype(np.int32)


def leave_last_out(
    user_rows: np.ndarray, item_rows: np.ndarray, timestamps: np.ndarray, n_users: int
) -> Split:
    """Split interactions (parallel arrays of length n) per the protocol."""
    order = np.lexsort((item_rows, timestamps, user_rows))
    users = user_rows[order].astype(np.int64)
    items = item_rows[order].astype(np.int32)
    times = timestamps[order].astype(np.float64)
    counts = np.bincount(users, minlength=n_users)
    ends = np.cumsum(counts)
    held_out = counts >= MIN_INTERACTIONS_TO_HOLD_OUT

    test_items = np.full(n_users, NO_ITEM, dtype=np.int32)
    valid_items = np.full(n_users, NO_ITEM, dtype=np.int32)
    test_items[held_out] = items[ends[held_out] - 1]
    valid_items[held_out] = items[ends[held_out] - 2]

    keep = np.ones(len(items), dtype=bool)
    keep[ends[held_out] - 1] = False
    keep[ends[held_out] - 2] = False
    train_counts = counts - 2 * held_out
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(train_counts, out=indptr[1:])
    return Split(
        train_indptr=indptr,
        train_items=items[keep],
        train_times=times[keep],
        valid_items=valid_items,
        test_items=test_items,
    )
