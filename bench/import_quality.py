"""Vectors from other trainers, served: implicit's ALS and gensim's item2vec on MovieLens 100K.

For each model: train it on the training part of the docs/quality.md split, compute the
protocol's metrics offline from its vectors (numpy, ``recall.trainer.evaluate``), write the
vectors and the training interactions as files, run ``recall import``, ``recall build-index
--publish`` and ``recall serve`` (real processes), ask ``POST /v1/recall`` for every test
user (``user_id``, k = 100, training items excluded), and compute HR@10/50/100 and NDCG@10
from the answers. Both must agree: the service serves the vectors it was given.

- ALS (matrix factorization, inner product): ``implicit.cpu.als.AlternatingLeastSquares``
  with the hyper-parameters ``bench/quality.py`` chose on the validation item for seed 0
  (``bench/results/quality.json``), user and item factors imported as they are.
- item2vec: ``gensim.models.Word2Vec`` (skip-gram, negative sampling, one thread, seeded)
  over each user's training items in time order; item vectors only, cosine. A user's
  query is the bundle's history rule: the mean of the normalized vectors of their last 50
  training items, normalized. Window and epochs are chosen on the validation item.

Our own model's row is quoted from ``bench/results/quality.json`` (same split and protocol).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python bench/import_quality.py --out bench/results/import_quality.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from gensim.models import Word2Vec  # noqa: E402
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # noqa: E402

from bench import baselines  # noqa: E402
from bench._data import ml100k_dir  # noqa: E402
from bench._machine import package_versions  # noqa: E402
from bench._results import finish, header  # noqa: E402
from bench._server import recall_cli, serve  # noqa: E402
from bench.quality import model_method  # noqa: E402
from recall.trainer.config import TrainConfig  # noqa: E402
from recall.trainer.data import Dataset, load_dataset  # noqa: E402
from recall.trainer.evaluate import EvalTask, ScoreFn, evaluate  # noqa: E402
from recall.trainer.split import Split  # noqa: E402

logger = logging.getLogger("bench.import_quality")

K = 100
HISTORY_LENGTH = 50  # the import's default --history-length
METRICS = ("hr@10", "hr@50", "hr@100", "ndcg@10")
W2V_WINDOWS = (5, 10, 20, 50)  # 50: about a whole window of history, as item2vec's "set"
W2V_EPOCHS = (20, 40)


def _stable_hash(text: str) -> int:
    """gensim seeds each word's initial vector with this: stable across processes (the
    builtin ``hash`` of a str is salted per process)."""
    return zlib.crc32(text.encode())


def train_item2vec(split: Split, n_items: int, window: int, epochs: int, seed: int) -> np.ndarray:
    """Item vectors (n_items, 64) float32 from skip-gram over the users' training sequences
    (time order); rows of items never trained on are zero."""
    sentences = [
        [str(i) for i in split.history(u).tolist()]
        for u in range(split.n_users)
        if split.history(u).size
    ]
    model = Word2Vec(
        sentences,
        vector_size=64,
        window=window,
        min_count=1,
        sg=1,
        negative=5,
        sample=0,
        epochs=epochs,
        workers=1,
        seed=seed,
        hashfxn=_stable_hash,
    )
    vectors = np.zeros((n_items, 64), dtype=np.float32)
    for token in model.wv.index_to_key:
        vectors[int(token)] = model.wv[token]
    return vectors


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    out: np.ndarray = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    return out


def item_mean_users(split: Split, items: np.ndarray) -> np.ndarray:
    """The history rule offline: each user's normalized mean of the normalized vectors of
    their last ``HISTORY_LENGTH`` training items (n_users, dim)."""
    users = np.zeros((split.n_users, items.shape[1]), dtype=np.float64)
    for u in range(split.n_users):
        window = split.history(u)[-HISTORY_LENGTH:]
        if window.size:
            users[u] = items[window].astype(np.float64).mean(axis=0)
    return unit_rows(users)


def cosine_scorer(users: np.ndarray, items: np.ndarray, known: np.ndarray) -> ScoreFn:
    """Cosines; items without a vector (never in training) are never recommended."""

    def score(rows: np.ndarray) -> np.ndarray:
        scores = np.asarray(users[rows] @ items.T)
        scores[:, ~known] = -np.inf
        return scores

    return score


def tune_item2vec(
    split: Split, n_items: int, valid: EvalTask, seed: int
) -> tuple[dict[str, Any], np.ndarray]:
    """Window and epochs by validation HR@50 (the training items are the same), and the
    chosen model's item vectors (training is seeded and single-threaded: deterministic)."""
    grid, best_vectors, best_hr = [], np.zeros(0), -1.0
    for window in W2V_WINDOWS:
        for epochs in W2V_EPOCHS:
            raw = train_item2vec(split, n_items, window, epochs, seed)
            items = unit_rows(raw)
            known = np.abs(items).sum(axis=1) > 0
            hr = evaluate(cosine_scorer(item_mean_users(split, items), items, known), valid)
            grid.append({"window": window, "epochs": epochs, "valid_hr@50": hr["hr@50"]})
            logger.info(
                "item2vec window %d epochs %d: validation HR@50 %.4f", window, epochs, hr["hr@50"]
            )
            if hr["hr@50"] > best_hr:
                best_hr, best_vectors = hr["hr@50"], raw
    best = max(grid, key=lambda g: g["valid_hr@50"])
    return {"window": best["window"], "epochs": best["epochs"], "grid": grid}, best_vectors


def write_training_interactions(path: Path, dataset: Dataset, split: Split) -> None:
    """The training part of the split as an interactions.csv (the import's seen lists)."""
    users = np.repeat(np.arange(split.n_users), np.diff(split.train_indptr))
    with path.open("w") as f:
        f.write("user_id,item_id,timestamp\n")
        for u, i, t in zip(
            dataset.user_ids[users].tolist(),
            dataset.item_ids[split.train_items].tolist(),
            split.train_times.tolist(),
            strict=True,
        ):
            f.write(f"{u},{i},{t!r}\n")


def http_metrics(url: str, dataset: Dataset, task: EvalTask) -> dict[str, float]:
    """The protocol's metrics from ``POST /v1/recall {"user_id", "k": 100}`` answers."""
    ranks = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for user, target in zip(task.users.tolist(), task.targets.tolist(), strict=True):
            body = client.post(
                "/v1/recall", json={"user_id": dataset.user_ids[user].item(), "k": K}
            ).json()
            answer = [item["item_id"] for item in body["items"]]
            target_id = dataset.item_ids[target].item()
            ranks.append(answer.index(target_id) if target_id in answer else K)
    rank = np.asarray(ranks)
    out = {f"hr@{k}": float(np.mean(rank < k)) for k in (10, 50, 100)}
    out["ndcg@10"] = float(np.mean(np.where(rank < 10, 1 / np.log2(rank + 2), 0.0)))
    return out


def served_metrics(
    work: Path, dataset: Dataset, task: EvalTask, import_args: list[str | Path]
) -> tuple[dict[str, float], dict[str, float]]:
    """Import, index, publish and serve; (metrics over HTTP, seconds of each step)."""
    root = work / "root"
    t0 = time.perf_counter()
    bundle = recall_cli("import", *import_args, "--out", root).strip()
    t1 = time.perf_counter()
    recall_cli("build-index", bundle, "--publish")
    t2 = time.perf_counter()
    with serve(root, workers=1) as server:
        t3 = time.perf_counter()
        metrics = http_metrics(server.url, dataset, task)
    t4 = time.perf_counter()
    seconds = {
        "import": t1 - t0,
        "build_index": t2 - t1,
        "serve_start": t3 - t2,
        "queries": t4 - t3,
    }
    return metrics, {k: round(v, 2) for k, v in seconds.items()}


def save_npz(path: Path, ids: np.ndarray, vectors: np.ndarray) -> Path:
    np.savez(path, ids=ids, vectors=vectors.astype(np.float32))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="MovieLens 100K (default: see bench/_data.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("gensim", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    head = header("import_quality")
    started = time.perf_counter()

    data: Path = args.data or ml100k_dir()
    dataset = load_dataset(data)
    split, test, valid, matrix = baselines.protocol(dataset)
    quality = json.loads((REPO / "bench" / "results" / "quality.json").read_text())
    als_params = next(s for s in quality["per_seed"] if s["seed"] == args.seed)["als"]["params"]
    ours = model_method(TrainConfig.model_fields["tower"].default)  # the default tower's row
    model = quality["summary"][ours]

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="import-quality-") as tmp:
        work = Path(tmp)
        interactions = work / "interactions.csv"
        write_training_interactions(interactions, dataset, split)

        logger.info("ALS %s", als_params)
        with threadpool_limits(limits=1, user_api="blas"):
            als = baselines._als(
                als_params["factors"],
                als_params["regularization"],
                als_params["iterations"],
                args.seed,
            )
            als.fit(baselines.confidence_matrix(matrix, als_params["alpha"]), show_progress=False)
        user_factors = np.asarray(als.user_factors, dtype=np.float32)
        item_factors = np.asarray(als.item_factors, dtype=np.float32)
        offline = evaluate(baselines.als_scorer(als), test)
        (work / "als").mkdir()
        served, seconds = served_metrics(
            work / "als",
            dataset,
            test,
            [
                "--items", save_npz(work / "als_items.npz", dataset.item_ids, item_factors),
                "--users", save_npz(work / "als_users.npz", dataset.user_ids, user_factors),
                "--interactions", interactions, "--model", "implicit ALS",
            ],
        )  # fmt: skip
        results["ALS (implicit)"] = {
            "params": als_params, "offline": offline, "http": served, "seconds": seconds
        }  # fmt: skip

        tuned, raw = tune_item2vec(split, dataset.n_items, valid, args.seed)
        logger.info("item2vec window %d, epochs %d", tuned["window"], tuned["epochs"])
        known = np.abs(raw).sum(axis=1) > 0
        items = unit_rows(raw)
        offline = evaluate(cosine_scorer(item_mean_users(split, items), items, known), test)
        (work / "item2vec").mkdir()
        served, seconds = served_metrics(
            work / "item2vec",
            dataset,
            test,
            [
                "--items", save_npz(work / "w2v_items.npz", dataset.item_ids[known], raw[known]),
                "--interactions", interactions, "--metric", "cosine", "--model", "gensim item2vec",
            ],
        )  # fmt: skip
        results["item2vec (gensim)"] = {
            "params": tuned, "offline": offline, "http": served, "seconds": seconds
        }  # fmt: skip

    lines = [
        "| method | served as | HR@10 | HR@50 | HR@100 | NDCG@10 |",
        "|---|---|---|---|---|---|",
        f"| {ours}, ours, seeds {quality['seeds']} of quality.json | offline | "
        + " | ".join(f"{model[m]['mean']:.4f} ± {model[m]['std']:.4f}" for m in METRICS)
        + " |",
    ]
    for name, r in results.items():
        for how in ("offline", "http"):
            values = " | ".join(f"{r[how][m]:.4f}" for m in METRICS)
            lines.append(f"| {name} | {'HTTP' if how == 'http' else 'offline'} | {values} |")
    for name, r in results.items():
        diff = max(abs(r["offline"][m] - r["http"][m]) for m in METRICS)
        logger.info("%s: largest |offline - HTTP| %.6f", name, diff)
    report = {
        **head,
        "data": str(data.resolve()),
        "test_users": len(test.users),
        "k": K,
        "history_length": HISTORY_LENGTH,
        "results": results,
        "model_from_quality_json": {"method": ours, **{m: model[m] for m in METRICS}},
        "versions": package_versions("numpy", "faiss-cpu", "implicit", "gensim", "scipy"),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    table = "\n".join(lines)
    finish(
        args.out,
        report,
        f"MovieLens 100K, leave-last-out, {len(test.users)} test users\n{table}",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
