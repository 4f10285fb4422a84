"""Where the towers' test hits come from: users whose test and validation items share a
timestamp (a burst, ordered by the protocol's item-id tie-break) against the others.

docs/quality.md, "Timestamp ties": in MovieLens 100K 44% of the users rated their last two
movies in the same second, so which one is "last" is the tie-break on item id. A model that
reads the order of the window may learn that order inside bursts rather than the next
movie. This script trains both towers for one seed (default config) and scores them, with
popularity, item-kNN and PureSVD (tuned on validation as in bench/quality.py), on the two
groups of test users. Prints a table and writes JSON (machine, date).

    .venv/bin/python bench/quality_ties.py --out bench/results/quality_ties.json
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench import baselines  # noqa: E402
from bench._data import ml100k_dir  # noqa: E402
from bench._results import finish, header  # noqa: E402
from bench.quality import TOWERS, model_method, train_model  # noqa: E402
from recall.trainer.data import Dataset, load_dataset  # noqa: E402
from recall.trainer.evaluate import (  # noqa: E402
    EvalTask,
    ScoreFn,
    evaluate,
    popularity_scorer,
)

logger = logging.getLogger("bench.quality_ties")


def tied_users(dataset: Dataset) -> np.ndarray:
    """(n_users,) bool: the user's last two interactions have the same timestamp."""
    order = np.lexsort((dataset.item_rows, dataset.timestamps, dataset.user_rows))
    users, times = dataset.user_rows[order], dataset.timestamps[order]
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])  # each user's last row
    tied = np.zeros(dataset.n_users, dtype=bool)
    has_two = (last > 0) & (users[np.maximum(last - 1, 0)] == users[last])
    rows = last[has_two]
    tied[users[rows]] = times[rows] == times[rows - 1]
    return tied


def subset(task: EvalTask, keep: np.ndarray) -> EvalTask:
    """``task`` restricted to the users where ``keep`` (over ``task.users``) holds."""
    return EvalTask(
        task.users[keep], task.targets[keep], task.seen_indptr, task.seen_indices, task.n_items
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/quality_ties.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    head = header("quality_ties")
    data: Path = args.data or ml100k_dir()
    dataset = load_dataset(data)
    split, test, valid, matrix = baselines.protocol(dataset)
    tied = tied_users(dataset)[test.users]
    groups = {"tie": subset(test, tied), "no tie": subset(test, ~tied)}

    scorers: dict[str, ScoreFn] = {}
    for tower in TOWERS:
        logger.info("training the %s tower", tower)
        scorers[model_method(tower)] = train_model(dataset, args.seed, tower, test)[1]
    scorers["popularity"] = popularity_scorer(
        np.bincount(split.train_items, minlength=dataset.n_items)
    )
    scorers["item-knn"] = baselines.fit_itemknn(
        matrix, **baselines.tune_itemknn(matrix, valid).params
    )
    scorers["puresvd"] = baselines.fit_puresvd(
        matrix, **baselines.tune_puresvd(matrix, valid).params
    )
    results: dict[str, dict[str, Any]] = {
        name: {group: evaluate(score, task) for group, task in groups.items()}
        for name, score in scorers.items()
    }
    lines = [
        f"seed {args.seed}: {int(tied.sum())} test users with a tie, {int((~tied).sum())} without",
        f"{'method':<20}{'HR@10 tie':>11}{'no tie':>9}{'HR@50 tie':>11}{'no tie':>9}",
    ]
    for name, r in results.items():
        lines.append(
            f"{name:<20}{r['tie']['hr@10']:>11.4f}{r['no tie']['hr@10']:>9.4f}"
            f"{r['tie']['hr@50']:>11.4f}{r['no tie']['hr@50']:>9.4f}"
        )
    report = {
        **head,
        "data": str(data.resolve()),
        "seed": args.seed,
        "users": {"tie": int(tied.sum()), "no tie": int((~tied).sum())},
        "results": results,
    }
    finish(args.out, report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
