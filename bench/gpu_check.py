"""The GPU path end to end, for the first machine with a CUDA device: train on a synthetic
catalog (sampled softmax, sparse Adam) and on MovieLens 100K when present (full
softmax), with bf16 autocast and without, on ``cuda``; print examples/s; export each
model and verify the bundle (sizes, sha256, and ``dot(user, item)`` = the model's logit).
With two or more GPUs, also one ``torchrun`` job of two NCCL ranks, one GPU each.

    .venv/bin/python bench/gpu_check.py                       # writes bench/results/gpu_check.json
    .venv/bin/python bench/gpu_check.py --users 200000 --items 100000 --steps 300

Exits 2 with one line when torch sees no CUDA device (the CPU build of torch, or no GPU).
MovieLens 100K is read from ``$RECALL_ML100K_DIR`` (default ``../shared/data/ml-100k``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._data import ML100K_DEFAULT, ML100K_ENV  # noqa: E402
from bench._results import finish, header  # noqa: E402

logger = logging.getLogger("bench.gpu_check")


def verify(bundle: Path) -> None:
    """Every file's size and sha256, and the fold invariant on a sample of users."""
    from recall.index import bundle as b

    manifest = b.read_manifest(bundle)
    for name in manifest.files:
        b.verify_file(bundle, manifest, name)
    users = b.load_array(bundle, manifest, b.USER_VECTORS)
    items = b.load_array(bundle, manifest, b.ITEM_VECTORS)
    if not (np.isfinite(users).all() and np.isfinite(items).all()):
        raise RuntimeError(f"{bundle}: non-finite vectors")
    if not np.allclose(users[:, -1], 1.0):
        raise RuntimeError(f"{bundle}: user vectors are not folded ([u, 1])")


def train_case(name: str, data: Path, overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train on ``data`` on cuda with ``overrides``; export, verify, report."""
    import torch

    from recall.trainer.config import load_config
    from recall.trainer.data import load_dataset
    from recall.trainer.export import export_bundle
    from recall.trainer.train import train

    config = load_config(None, {"device": "cuda", **overrides})
    dataset = load_dataset(data)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trained = train(dataset, config, progress=False)
    seconds = time.perf_counter() - t0
    bundle = export_bundle(trained, dataset, config, out)
    verify(bundle)
    m = trained.metrics
    return {
        "case": name,
        "bf16": config.bf16,
        "loss": m["loss"],
        "epochs": len(m["epochs"]),
        "train_s": round(seconds, 1),
        "examples_per_s": m["examples_per_second"],
        f"valid_hr@{config.validation_k}": m[f"valid_hr@{config.validation_k}"],
        "gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20),
        "bundle": str(bundle),
        "verified": True,
    }


def torchrun_case(data: Path, out: Path, steps: int) -> dict[str, Any]:
    """Two NCCL ranks, one GPU each: the job writes one bundle that verifies."""
    config = out / "nccl.toml"
    config.write_text(
        f'device = "cuda"\nloss = "sampled"\nepochs = 1\nmax_steps_per_epoch = {steps}\n'
    )
    bin_dir = Path(sys.executable).parent
    command = [
        str(bin_dir / "torchrun"),
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:29477",
        "--no-python",
        str(bin_dir / "recall"),
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        "--no-progress",
    ]
    t0 = time.perf_counter()
    child = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    bundle = Path(child.stdout.strip().splitlines()[-1])
    verify(bundle)
    metrics = json.loads((bundle / "manifest.json").read_text())["trainer"]["metrics"]
    return {
        "case": "torchrun 2 ranks x 1 GPU (NCCL), synthetic, sampled",
        "wall_s": round(time.perf_counter() - t0, 1),
        "examples_per_s": metrics["examples_per_second"],
        "bundle": str(bundle),
        "verified": True,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=200, help="sampled-softmax steps")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/gpu_check.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    if not torch.cuda.is_available():
        sys.stderr.write(
            f"gpu_check: torch {torch.__version__} sees no CUDA device (CUDA build: "
            f"{torch.version.cuda or 'no, this is the CPU build'}); run it on a GPU machine "
            "with a CUDA build of torch\n"
        )
        return 2
    from recall.trainer.synth import SynthConfig, write_synthetic

    head = header("gpu_check", gpu=torch.cuda.get_device_name(0), torch=torch.__version__)

    work = Path(tempfile.mkdtemp(prefix="recall-gpu-check-"))
    synth = work / "synth"
    write_synthetic(synth, SynthConfig(n_users=args.users, n_items=args.items, mean_history=20))
    sampled = {
        "loss": "sampled",
        "epochs": 1,
        "max_steps_per_epoch": args.steps,
        "batch_size": 1024,
        "validation_users": 2000,
    }
    rows = []
    for bf16 in (True, False):
        name = f"synthetic {args.users:,} x {args.items:,}, sampled, {args.steps} steps"
        rows.append(train_case(name, synth, {**sampled, "bf16": bf16}, work / "bundles"))
    ml100k = Path(os.environ.get(ML100K_ENV) or ML100K_DEFAULT)
    if ml100k.is_dir():
        for bf16 in (True, False):
            rows.append(train_case("ml-100k, full softmax", ml100k, {"bf16": bf16}, work / "b"))
    else:
        logger.info("no MovieLens 100K at %s (set %s): skipping it", ml100k, ML100K_ENV)
    if torch.cuda.device_count() >= 2:
        rows.append(torchrun_case(synth, work / "nccl", args.steps))
    report = {**head, "results": rows}
    table = [
        f"{r['case']} | bf16 {r.get('bf16', '-')} | {r['examples_per_s']:,.0f} ex/s | verified"
        for r in rows
    ]
    finish(args.out, report, "\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
