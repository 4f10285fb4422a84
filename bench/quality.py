"""Offline quality on MovieLens 100K: our model (each user tower) against popularity,
item-kNN, ALS, BPR and PureSVD.

The protocol of docs/quality.md (leave-last-out on time, rank all items, training
items excluded), the same EvalTask for every method, mean +- std over seeds. Baselines are
tuned on the validation item only; the test item is scored once. Prints a table and
writes JSON (per-seed numbers, chosen hyper-parameters, machine, date, versions) for
docs/quality.md to quote.

    .venv/bin/python bench/quality.py
    .venv/bin/python bench/quality.py --seeds 0 --towers attention --out /tmp/quality.json

The JSON is rewritten after every seed, so an interrupted run keeps the seeds it finished.

MovieLens 100K is read from ``--data``, else ``$RECALL_ML100K_DIR``, else
``../shared/data/ml-100k`` beside the repository.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench import baselines  # noqa: E402
from bench._data import ML100K_ENV, ml100k_dir  # noqa: E402
from bench._machine import package_versions  # noqa: E402
from bench._results import header, write_json  # noqa: E402
from recall.index import bundle as b  # noqa: E402
from recall.trainer.config import TrainConfig  # noqa: E402
from recall.trainer.data import Dataset, load_dataset  # noqa: E402
from recall.trainer.evaluate import (  # noqa: E402
    COVERAGE_K,
    HIT_RATE_KS,
    NDCG_K,
    EvalTask,
    ScoreFn,
    dot_scorer,
    evaluate,
    popularity_scorer,
)
from recall.trainer.export import bundle_arrays  # noqa: E402
from recall.trainer.train import Trained, train  # noqa: E402

logger = logging.getLogger("bench.quality")

METRICS = [*(f"hr@{k}" for k in HIT_RATE_KS), f"ndcg@{NDCG_K}", f"coverage@{COVERAGE_K}"]
TOWERS = ("mean", "attention")
BASELINES = ("popularity", "item-knn", "als", "bpr", "puresvd")


def model_method(tower: str) -> str:
    """The table's name for the model with ``tower``."""
    return f"model ({tower})"


def train_model(dataset: Dataset, seed: int, tower: str, task: EvalTask) -> tuple[Trained, ScoreFn]:
    """Train with the default config, ``seed`` and ``tower``: the model and the scorer of
    its exported vectors. Raises when the trainer's training items are not ``task``'s."""
    config = TrainConfig.model_validate({"seed": seed, "tower": tower})
    trained = train(dataset, config, progress=False)
    arrays = bundle_arrays(trained, dataset)
    seen = arrays[b.USER_SEEN]
    assert isinstance(seen, dict)
    if not (
        np.array_equal(seen["indptr"], task.seen_indptr)
        and np.array_equal(seen["indices"], task.seen_indices)
    ):
        raise RuntimeError("the trainer's training items differ from the benchmark's split")
    user_vectors, item_vectors = arrays[b.USER_VECTORS], arrays[b.ITEM_VECTORS]
    assert isinstance(user_vectors, np.ndarray) and isinstance(item_vectors, np.ndarray)
    return trained, dot_scorer(user_vectors, item_vectors)


def run_model(dataset: Dataset, seed: int, tower: str, task: EvalTask) -> dict[str, Any]:
    """Train with the default config, ``seed`` and ``tower``; evaluate the exported vectors."""
    started = time.perf_counter()
    trained, scorer = train_model(dataset, seed, tower, task)
    seconds = time.perf_counter() - started
    metrics = evaluate(scorer, task)
    m = trained.metrics
    return {
        "metrics": metrics,
        "fit_seconds": round(seconds, 2),
        "trainer": {
            "best_epoch": m["best_epoch"],
            "epochs_run": len(m["epochs"]),
            "valid_hr@50": m["valid_hr@50"],
            "examples_per_second": m["examples_per_second"],
            "epoch_seconds": [e["seconds"] for e in m["epochs"]],
            "examples": m["examples"],
            "loss": m["loss"],
        },
    }


def _top(tuned: baselines.Tuned, n: int) -> list[dict[str, Any]]:
    """The ``n`` best validation grid points: hyper-parameters, HR@10 and HR@50."""
    rows = sorted(tuned.grid, key=lambda row: -row[baselines.TUNE_METRIC])[:n]
    keep = (*tuned.params, "hr@10", "hr@50")
    return [
        {k: round(v, 5) if k.startswith("hr@") else v for k, v in r.items() if k in keep}
        for r in rows
    ]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(
    per_seed: list[dict[str, Any]], methods: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """method -> metric (and fit_seconds) -> {mean, std} over seeds."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for method in methods:
        out[method] = {}
        for metric in [*METRICS, "fit_seconds"]:
            mean, std = _mean_std([run[method][metric] for run in per_seed])
            out[method][metric] = {"mean": round(mean, 5), "std": round(std, 5)}
    return out


def format_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """Plain-text table: method x metric as ``mean ± std``, plus fit seconds."""
    columns = [*METRICS, "fit_seconds"]
    width = max(len(m) for m in summary) + 2
    lines = ["method".ljust(width) + "".join(c.rjust(18) for c in columns)]
    for method, metrics in summary.items():
        cells = []
        for c in columns:
            digits = 1 if c == "fit_seconds" else 4
            cell = f"{metrics[c]['mean']:.{digits}f} ± {metrics[c]['std']:.{digits}f}"
            cells.append(cell.rjust(18))
        lines.append(method.ljust(width) + "".join(cells))
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, help=f"MovieLens 100K directory (default: ${ML100K_ENV})"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--towers", nargs="+", choices=TOWERS, default=list(TOWERS))
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/quality.json")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every grid point")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        logging.getLogger("implicit").setLevel(logging.WARNING)
    started = time.perf_counter()
    head = header("quality", torch_threads=torch.get_num_threads())

    data: Path = args.data or ml100k_dir()
    dataset = load_dataset(data)
    split, test, valid, matrix = baselines.protocol(dataset)
    logger.info(
        "%d test users, %d validation users, %d training interactions",
        len(test.users),
        len(valid.users),
        matrix.nnz,
    )

    # Item-kNN, PureSVD and popularity are deterministic: tune / build once, score every seed.
    knn_tuned = baselines.tune_itemknn(matrix, valid)
    svd_tuned = baselines.tune_puresvd(matrix, valid)
    fixed: dict[str, dict[str, Any]] = {}
    for name, tuned, fit in (
        ("item-knn", knn_tuned, baselines.fit_itemknn),
        ("puresvd", svd_tuned, baselines.fit_puresvd),
    ):
        t0 = time.perf_counter()
        scorer = fit(matrix, **tuned.params)
        fixed[name] = {**evaluate(scorer, test), "fit_seconds": round(time.perf_counter() - t0, 3)}
    popularity = evaluate(
        popularity_scorer(np.bincount(split.train_items, minlength=dataset.n_items)), test
    )
    methods = [*(model_method(t) for t in args.towers), *BASELINES]

    per_seed: list[dict[str, Any]] = []
    seeded: dict[str, dict[int, baselines.Tuned]] = {"als": {}, "bpr": {}}
    for seed in args.seeds:
        run: dict[str, Any] = {"seed": seed}
        for tower in args.towers:
            logger.info("seed %d: training the model, %s tower", seed, tower)
            model = run_model(dataset, seed, tower, test)
            logger.info("seed %d: model (%s) %s", seed, tower, model["metrics"])
            run[model_method(tower)] = {
                **model["metrics"],
                "fit_seconds": model["fit_seconds"],
                "trainer": model["trainer"],
            }
        run["popularity"] = {**popularity, "fit_seconds": 0.0}
        run.update(fixed)
        for name, tune, fit in (
            ("als", baselines.tune_als, baselines.fit_als),
            ("bpr", baselines.tune_bpr, baselines.fit_bpr),
        ):
            tuned = tune(matrix, valid, seed)
            seeded[name][seed] = tuned
            t0 = time.perf_counter()
            scored = evaluate(fit(matrix, seed=seed, **tuned.params), test)
            logger.info("seed %d: %s %s", seed, name, scored)
            run[name] = {
                **scored,
                "fit_seconds": round(time.perf_counter() - t0, 3),
                "params": tuned.params,
                "valid": tuned.valid,
                "tuning_seconds": tuned.seconds,
            }
        per_seed.append(run)
        result = report(head, data, test, valid, matrix, dataset, methods, per_seed)
        result["baselines"] = {
            "item-knn": _deterministic(knn_tuned),
            "puresvd": _deterministic(svd_tuned),
            "als": _seeded(seeded["als"], baselines.ALS_SEARCH_SPACE),
            "bpr": _seeded(seeded["bpr"], baselines.BPR_SEARCH_SPACE),
        }
        result["seconds_total"] = round(time.perf_counter() - started, 1)
        write_json(args.out, result)
        logger.info("seed %d done", seed)

    table = format_table(summarize(per_seed, methods))
    sys.stdout.write(
        f"MovieLens 100K, leave-last-out, {len(test.users)} test users, "
        f"seeds {args.seeds} (mean ± sample std)\n{table}\n"
    )
    logger.info("done in %.0f s", time.perf_counter() - started)
    return 0


def report(
    head: dict[str, Any],
    data: Path,
    test: EvalTask,
    valid: EvalTask,
    matrix: Any,
    dataset: Dataset,
    methods: list[str],
    per_seed: list[dict[str, Any]],
) -> dict[str, Any]:
    """The JSON document for the seeds done so far (baselines' grids added by the caller)."""
    return {
        **head,
        "data": str(data.resolve()),
        "protocol": "docs/quality.md protocol: leave-last-out on (timestamp, item_id); "
        "rank all items, training items excluded; baselines tuned on the validation item "
        f"by {baselines.TUNE_METRIC}",
        "test_users": len(test.users),
        "validation_users": len(valid.users),
        "training_interactions": int(matrix.nnz),
        "n_items": dataset.n_items,
        "seeds": [run["seed"] for run in per_seed],
        "summary": summarize(per_seed, methods),
        "per_seed": per_seed,
        "versions": package_versions("torch", "numpy", "scipy", "implicit"),
    }


def _deterministic(tuned: baselines.Tuned) -> dict[str, Any]:
    return {
        "params": tuned.params,
        "valid": tuned.valid,
        "tuning_seconds": tuned.seconds,
        "grid": _top(tuned, len(tuned.grid)),
    }


def _seeded(tuned: dict[int, baselines.Tuned], space: dict[str, Any]) -> dict[str, Any]:
    return {
        "search_space": space,
        "params_by_seed": {str(s): t.params for s, t in tuned.items()},
        "valid_by_seed": {str(s): t.valid for s, t in tuned.items()},
        "tuning_seconds_by_seed": {str(s): t.seconds for s, t in tuned.items()},
        "grid_points": len(next(iter(tuned.values())).grid) if tuned else 0,
        "top_by_seed": {str(s): _top(t, 10) for s, t in tuned.items()},
    }


if __name__ == "__main__":
    sys.exit(main())
