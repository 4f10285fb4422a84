"""Leave-last-out split and example construction."""

from __future__ import annotations

import numpy as np

from recall.trainer.examples import full_histories, make_examples
from recall.trainer.split import NO_ITEM, leave_last_out


def _split():  # type: ignore[no-untyped-def]
    # user 0: items 5,3,4,1 at t=1,2,2,3 (tie at t=2 ordered by item row: 3 then 4)
    # user 1: two interactions only -> all training, nothing held out
    users = np.array([0, 0, 0, 0, 1, 1])
    items = np.array([5, 4, 3, 1, 2, 0])
    times = np.array([1.0, 2.0, 2.0, 3.0, 5.0, 4.0])
    return leave_last_out(users, items, times, n_users=2)


def test_last_is_test_and_one_before_is_validation() -> None:
    split = _split()
    np.testing.assert_array_equal(split.test_items, [1, NO_ITEM])
    np.testing.assert_array_equal(split.valid_items, [4, NO_ITEM])
    np.testing.assert_array_equal(split.history(0), [5, 3])
    np.testing.assert_array_equal(split.history(1), [0, 2])


def test_seen_is_unique_training_items_per_user() -> None:
    split = leave_last_out(
        np.array([0, 0, 0, 0, 0]), np.array([2, 2, 1, 3, 4]), np.arange(5.0), n_users=1
    )
    indptr, items = split.seen()
    np.testing.assert_array_equal(indptr, [0, 2])
    np.testing.assert_array_equal(items, [1, 2])


def test_examples_use_only_what_came_before_the_label() -> None:
    split = leave_last_out(np.zeros(8, dtype=int), np.arange(8), np.arange(8.0), n_users=1)
    ex = make_examples(split, history_length=3, max_per_user=100, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(ex.labels, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(ex.hist_lens, [1, 2, 3, 3, 3])
    for end, n, label in zip(ex.ends, ex.hist_lens, ex.labels, strict=True):
        history = split.train_items[end - n : end]
        assert (history < label).all()
    assert ex.ages[-1] == 0.0 and (np.diff(ex.ages) < 0).all()
    hist = full_histories(split, history_length=3)
    np.testing.assert_array_equal(
        split.train_items[hist.ends[0] - hist.hist_lens[0] : hist.ends[0]], [3, 4, 5]
    )


def test_examples_are_capped_per_user() -> None:
    users = np.repeat([0, 1], [50, 5])
    split = leave_last_out(users, np.arange(55) % 20, np.arange(55.0), n_users=2)
    ex = make_examples(split, history_length=50, max_per_user=10, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(np.bincount(ex.users), [10, 2])
