"""Training speed and memory: full training on MovieLens 100K, and sampled-softmax
training steps on a synthetic 1M-user x 1M-item catalog.

Each case runs in its own process so its peak RSS is its own. Prints a table and writes
JSON (machine, date, load average) for docs/training.md to quote.

    .venv/bin/python bench/train_speed.py                  # both cases
    .venv/bin/python bench/train_speed.py --cases ml-100k  # one

MovieLens 100K is read from ``$RECALL_ML100K_DIR`` (default ``../shared/data/ml-100k``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _data import ml100k_dir
from _machine import cpu_model

REPO = Path(__file__).resolve().parents[1]
SYNTH_1M = Path("/tmp/recall-synth-1m")

logger = logging.getLogger("bench.train_speed")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ml100k(device: str) -> dict[str, Any]:
    """Full training with the default config (early stopping included)."""
    from recall.trainer.config import TrainConfig
    from recall.trainer.data import load_dataset
    from recall.trainer.train import train

    t0 = time.perf_counter()
    dataset = load_dataset(ml100k_dir())
    load_s = time.perf_counter() - t0
    trained = train(dataset, TrainConfig(device=device), progress=False)
    m = trained.metrics
    return {
        "case": "ml-100k full training",
        "device": device,
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


def machine() -> dict[str, Any]:
    import numpy
    import torch

    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "load_average_at_start": os.getloadavg(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["ml-100k", "synth-1m"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=300, help="steps for synth-1m")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/train_speed.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.case:
        result = (
            run_ml100k(args.device)
            if args.case == "ml-100k"
            else run_synth_1m(args.device, args.steps)
        )
        sys.stdout.write(json.dumps(result) + "\n")
        return

    if "ml-100k" in args.cases:
        ml100k_dir()  # fail now, naming RECALL_ML100K_DIR, not after the other cases
    env_machine = machine()
    results = []
    for case in args.cases:
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
    sys.stdout.write(" | ".join(columns) + "\n")
    for r in results:
        sys.stdout.write(" | ".join(str(r.get(c, "")) for c in columns) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": env_machine, "results": results}, indent=2))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
