"""Training speed and memory: full training on MovieLens 100K, and sampled-softmax
training steps on a synthetic 1M-user x 1M-item catalog; with ``ranks``, examples/s of
one process against two ``torchrun`` ranks, and with ``ranks-quality``, test HR@50 on
MovieLens 100K of one process against two ranks over seeds (the protocol of
docs/quality.md).

Each case runs in its own process so its peak RSS is its own. Prints a table and writes
JSON (machine, date, load average) for docs/training.md to quote.

    .venv/bin/python bench/train_speed.py                  # ml-100k and synth-1m
    .venv/bin/python bench/train_speed.py --cases ml-100k  # one
    .venv/bin/python bench/train_speed.py --cases ml-100k ml-100k-mean \
        --out bench/results/train_towers.json              # the default tower vs mean
    .venv/bin/python bench/train_speed.py --cases ranks ranks-quality --seeds 0 1 2 \
        --out bench/results/train_ranks.json

MovieLens 100K is read from ``$RECALL_ML100K_DIR`` (default ``../shared/data/ml-100k``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._data import ml100k_dir  # noqa: E402
from bench._results import finish, header  # noqa: E402

SYNTH_1M = Path("/tmp/recall-synth-1m")

logger = logging.getLogger("bench.train_speed")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ml100k(device: str, tower: str | None = None) -> dict[str, Any]:
    """Full training with the default config (early stopping included), or with its
    ``tower`` replaced."""
    from recall.trainer.config import TrainConfig
    from recall.trainer.data import load_dataset
    from recall.trainer.train import train

    t0 = time.perf_counter()
    dataset = load_dataset(ml100k_dir())
    load_s = time.perf_counter() - t0
    config = TrainConfig(device=device, **({"tower": tower} if tower else {}))
    trained = train(dataset, config, progress=False)
    m = trained.metrics
    return {
        "case": "ml-100k full training" + (f", {tower} tower" if tower else ""),
        "device": device,
        "tower": config.tower,
        "load_s": round(load_s, 2),
        "train_s": m["seconds_total"],
        "epochs": len(m["epochs"]),
        "best_epoch": m["best_epoch"],
        "examples": m["examples"],
        "examples_per_s": m["examples_per_second"],
        "loss": m["loss"],
        "valid_hr@50": m["valid_hr@50"],
        "peak_rss_mb": round(_peak_rss_mb()),
    }


def run_synth_1m(device: str, steps: int) -> dict[str, Any]:
    """``steps`` sampled-softmax steps on 1M users x 1M items (one bounded epoch)."""
    from recall.trainer.config import TrainConfig
    from recall.trainer.data import load_dataset
    from recall.trainer.synth import SynthConfig, write_synthetic
    from recall.trainer.train import train

    if not (SYNTH_1M / "interactions.csv").exists():
        logger.info("generating %s", SYNTH_1M)
        write_synthetic(
            SYNTH_1M, SynthConfig(n_users=1_000_000, n_items=1_000_000, mean_history=20)
        )
    t0 = time.perf_counter()
    dataset = load_dataset(SYNTH_1M)
    load_s = time.perf_counter() - t0
    config = TrainConfig(
        device=device,
        loss="sampled",
        epochs=1,
        max_steps_per_epoch=steps,
        batch_size=1024,
        validation_users=1000,
    )
    trained = train(dataset, config, progress=False)
    m = trained.metrics
    epoch = m["epochs"][0]
    return {
        "case": "synthetic 1M x 1M, sampled softmax",
        "device": device,
        "users": dataset.n_users,
        "items": dataset.n_items,
        "interactions": dataset.n_interactions,
        "load_s": round(load_s, 2),
        "train_s": m["seconds_total"],
        "steps": steps,
        "batch": config.batch_size,
        "negatives": config.negatives,
        "examples_per_s": epoch["examples_per_second"],
        "peak_rss_mb": round(_peak_rss_mb()),
    }


def _recall_train(
    ranks: int, data: Path, out: Path, flags: list[str], threads: int | None = None
) -> Path:
    """``recall train`` in one process (``ranks`` 1) or under ``torchrun`` with ``ranks``
    gloo processes on 127.0.0.1; the bundle it wrote."""
    recall = [str(Path(sys.executable).parent / "recall"), "train"]
    args = ["--data", str(data), "--out", str(out), "--no-progress", *flags]
    if ranks == 1:
        command = [*recall, *args]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [
            str(Path(sys.executable).parent / "torchrun"),
            f"--nproc-per-node={ranks}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            "--no-python",
            *recall,
            *args,
        ]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    child = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env)
    return Path(child.stdout.strip().splitlines()[-1])


RANK_RUNS = [  # (label, ranks, threads per process; None = torch's default)
    ("1 process, default threads", 1, None),
    ("1 process, 1 thread", 1, 1),
    ("2 ranks x 1 thread (torchrun, gloo)", 2, 1),
]


def run_ranks(work: Path, steps: int) -> list[dict[str, Any]]:
    """Examples/s of one process and of two ranks, side by side: ML-100K (full softmax,
    1 epoch) and a synthetic 100k x 100k catalog (sampled softmax, ``steps`` steps)."""
    from recall.index import bundle as b
    from recall.trainer.synth import SynthConfig, write_synthetic

    synth = work / "synth-100k"
    if not (synth / "interactions.csv").exists():
        write_synthetic(synth, SynthConfig(n_users=100_000, n_items=100_000, mean_history=20))
    sampled = work / "sampled.toml"
    sampled.write_text(
        f'loss = "sampled"\nepochs = 1\nmax_steps_per_epoch = {steps}\n'
        "batch_size = 1024\nvalidation_users = 1000\n"
    )
    cases = [
        ("ml-100k, full softmax, 1 epoch", ml100k_dir(), ["--epochs", "1"]),
        (f"synthetic 100k x 100k, sampled, {steps} steps", synth, ["--config", str(sampled)]),
    ]
    rows = []
    for case, data, flags in cases:
        for label, ranks, threads in RANK_RUNS:
            logger.info("%s: %s", case, label)
            t0 = time.perf_counter()
            bundle = _recall_train(ranks, data, work / "out", flags, threads)
            wall = time.perf_counter() - t0
            metrics = b.read_manifest(bundle).trainer["metrics"]
            rows.append(
                {
                    "case": case,
                    "run": label,
                    "ranks": ranks,
                    "wall_s": round(wall, 1),
                    "examples_per_s": metrics["examples_per_second"],
                }
            )
    return rows


def run_ranks_quality(work: Path, seeds: list[int]) -> dict[str, Any]:
    """Test metrics on ML-100K (docs/quality.md protocol, the default config) of one
    process and of two ranks, per seed, with mean and sample std of HR@50."""
    from recall.trainer.data import load_dataset
    from recall.trainer.evaluate import evaluate_bundle

    dataset = load_dataset(ml100k_dir())
    per_seed: dict[str, list[dict[str, Any]]] = {"1 process": [], "2 ranks": []}
    for seed in seeds:
        for label, ranks in (("1 process", 1), ("2 ranks", 2)):
            logger.info("quality: seed %d, %s", seed, label)
            bundle = _recall_train(ranks, ml100k_dir(), work / "out", ["--seed", str(seed)], 1)
            metrics = evaluate_bundle(bundle, dataset)["model"]
            epochs = len(
                json.loads((bundle / "manifest.json").read_text())["trainer"]["metrics"]["epochs"]
            )
            per_seed[label].append({"seed": seed, "epochs_run": epochs, **metrics})
    summary = {}
    for label, runs in per_seed.items():
        hr = [r["hr@50"] for r in runs]
        summary[label] = {
            "hr@50_mean": round(statistics.mean(hr), 4),
            "hr@50_std": round(statistics.stdev(hr), 4) if len(hr) > 1 else 0.0,
        }
    return {"seeds": seeds, "per_seed": per_seed, "summary": summary}


def torch_info() -> dict[str, Any]:
    """torch's thread count and version, numpy's version (for the results' machine)."""
    import numpy
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["ml-100k", "synth-1m"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300, help="steps for synth-1m and ranks")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="ranks-quality")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/train_speed.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.case:
        if args.case == "synth-1m":
            result = run_synth_1m(args.device, args.steps)
        else:
            result = run_ml100k(args.device, "mean" if args.case == "ml-100k-mean" else None)
        sys.stdout.write(json.dumps(result) + "\n")
        return

    if {"ml-100k", "ml-100k-mean", "ranks", "ranks-quality"} & set(args.cases):
        ml100k_dir()  # fail now, naming RECALL_ML100K_DIR, not after the other cases
    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {**header("train_speed", **torch_info()), "results": results}
    lines: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="recall-train-speed-"))
    if "ranks" in args.cases:
        report["ranks"] = run_ranks(work, args.steps)
        lines += [
            f"{r['case']} | {r['run']} | {r['wall_s']} s | {r['examples_per_s']} ex/s"
            for r in report["ranks"]
        ]
    if "ranks-quality" in args.cases:
        report["ranks_quality"] = run_ranks_quality(work, args.seeds)
        lines += [
            f"{label}: test HR@50 {row['hr@50_mean']} ± {row['hr@50_std']}"
            for label, row in report["ranks_quality"]["summary"].items()
        ]
    for case in (c for c in args.cases if c in ("ml-100k", "ml-100k-mean", "synth-1m")):
        logger.info("running %s", case)
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--case",
                case,
                "--device",
                args.device,
                "--steps",
                str(args.steps),
            ],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    columns = ["case", "device", "train_s", "examples_per_s", "peak_rss_mb"]
    lines.append(" | ".join(columns))
    lines += [" | ".join(str(r.get(c, "")) for c in columns) for r in results]
    finish(args.out, report, "\n".join(lines))


if __name__ == "__main__":
    main()
