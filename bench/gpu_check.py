"""The GPU path end to end, for the first machine with a CUDA device: one command, about 3
minutes on one GPU (an estimate: it has never run on one), never more than ``--budget``
seconds (default 420) of cases.

Each case runs in its own child process under a time limit: a CUDA error can poison the
process that hit it, and one failing case must not hide the others. Progress goes to
stderr, one line per case; each case's result, or its failure with the tail of its
traceback, goes into the results JSON, rewritten after every case (a run cut short keeps
what it did). Exit 0 when every case that ran passed, 1 when one failed or timed out, 2
(one line) when torch sees no CUDA device.

The cases, most telling first (``--cases`` picks some):

- ``environment``: torch, CUDA and NCCL versions, the GPUs, whether bf16 is native.
- ``sampled-bf16``: a synthetic catalog, sampled softmax with SparseAdam, bf16 autocast:
  examples/s, peak GPU memory, and the bundle checked as the service checks it (index
  built, ``verify_bundle``), the served numpy tower giving the bundle's user vectors,
  ``dot(user, item)`` the model's logit, weights and gradients float32.
- ``full-bf16``: the same with a small catalog and the full softmax.
- ``nccl``: ``sum_gradients`` (dense, sparse, empty sparse), ``all_sum`` and
  ``gather_states`` on the GPU in a one-rank NCCL group (two ranks need two GPUs).
- ``resume``: ``recall train --device cuda`` killed after its first checkpoint and run
  again with ``--resume``, against an uninterrupted run, and a second uninterrupted run
  (whether training on this GPU repeats bit for bit at all).
- ``sampled-fp32``, ``full-fp32``: the same cases in float32 (bf16's speed-up).
- ``ml-100k-bf16``, ``ml-100k-fp32``: full training on MovieLens 100K, when present.
- ``torchrun``: two NCCL ranks, one GPU each (needs two GPUs).

    .venv/bin/python bench/gpu_check.py                      # writes bench/results/gpu_check.json
    .venv/bin/python bench/gpu_check.py --cases nccl resume --out /tmp/again.json
    .venv/bin/python bench/gpu_check.py --device cpu --smoke  # the CPU proxy the tests run

It needs a CUDA build of torch: on a CUDA image whose Python has torch, numpy, pyarrow
and tqdm, ``pip install --no-deps --target /tmp/site faiss-cpu pydantic pydantic-core
annotated-types typing-inspection`` and run ``PYTHONPATH=.:/tmp/site python3
bench/gpu_check.py`` (docs/training.md, "GPU"); every child process runs on that Python.

``--device cpu --smoke`` runs every case on the CPU (gloo for NCCL, bf16 autocast on
the CPU) with tiny sizes, so the script and the code paths it drives cannot rot on a
machine without a GPU. MovieLens 100K is read from ``$RECALL_ML100K_DIR`` (default
``../shared/data/ml-100k``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from bench._data import ML100K_DEFAULT, ML100K_ENV  # noqa: E402
from bench._results import finish, header, write_json  # noqa: E402

logger = logging.getLogger("bench.gpu_check")

CASE_LIMIT_S = {  # each case's own time limit; the run's --budget bounds the sum
    "environment": 60,
    "sampled-bf16": 150,
    "full-bf16": 120,
    "nccl": 60,
    "resume": 180,
    "sampled-fp32": 150,
    "full-fp32": 120,
    "ml-100k-bf16": 150,
    "ml-100k-fp32": 150,
    "torchrun": 180,
}
CASES = list(CASE_LIMIT_S)
ERROR_TAIL = 6000  # characters of a failed case's stderr kept in the results


# --- the child: one case, its result as the last line of stdout -------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def environment(device: str) -> dict[str, Any]:
    """What the GPU run ran on."""
    import torch

    out: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if device == "cuda":
        out["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
        out["bf16_native"] = torch.cuda.is_bf16_supported(including_emulation=False)
        out["nccl"] = str(torch.cuda.nccl.version())
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def check_bundle(bundle: Path, trained: Any, dataset: Any, sample: int = 256) -> dict[str, Any]:
    """The bundle as the service sees it (exact index built, then ``verify_bundle``), the
    served numpy tower against the bundle's user vectors and ``dot(user, item)`` against
    the model's float32 logits on its device, on ``sample`` users; the largest gaps."""
    import torch

    from recall.index import bundle as b
    from recall.index.build import BuildOptions, build_index
    from recall.index.verify import verify_bundle

    build_index(bundle, BuildOptions(kind="flat"))
    verified = verify_bundle(bundle)
    users = np.asarray(verified.user_vectors)
    items = np.load(bundle / b.ITEM_VECTORS)
    rows = np.random.default_rng(0).choice(len(users), min(sample, len(users)), replace=False)
    split = trained.prepared.split
    features = [
        {name: values[u].item() for name, values in dataset.user_features.items()} for u in rows
    ]
    served = verified.tower.encode([split.history(int(u)) for u in rows], features)
    device = next(trained.model.parameters()).device
    with torch.no_grad():
        u = torch.as_tensor(users[rows, :-1], device=device)
        logits = trained.model.logits(u).cpu().numpy()
    tower_gap = float(np.abs(served - users[rows]).max())
    logit_gap = float(np.abs(users[rows] @ items.T - logits).max())
    scale = max(1.0, float(np.abs(logits).max()))
    if tower_gap > 1e-4 or logit_gap > 1e-4 * scale:
        raise AssertionError(
            f"{bundle}: served tower {tower_gap:.2e} from the user vectors, dot products "
            f"{logit_gap:.2e} from the logits (both should be float32 rounding, < 1e-4)"
        )
    return {"verified": True, "tower_max_gap": tower_gap, "logit_max_gap": logit_gap}


def float32_everywhere(model: Any) -> dict[str, Any]:
    """Raise unless every weight and its last gradient is float32; the sparse tables."""
    import torch

    for name, p in model.named_parameters():
        grad = p.grad.dtype if p.grad is not None else None
        if p.dtype != torch.float32 or grad not in (None, torch.float32):
            raise AssertionError(f"{name}: weight {p.dtype}, gradient {grad}: want float32")
    return {
        "weights_and_grads": "float32",
        "sparse_grads": [
            n for n, p in model.named_parameters() if p.grad is not None and p.grad.is_sparse
        ],
    }


def train_case(device: str, data: Path, overrides: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train on ``data``; export, check the bundle, report speed and memory."""
    import torch

    from recall.trainer.config import load_config
    from recall.trainer.data import load_dataset
    from recall.trainer.export import export_bundle
    from recall.trainer.train import train

    config = load_config(None, {"device": device, **overrides})
    dataset = load_dataset(data)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trained = train(dataset, config, progress=False)
    m = trained.metrics
    dtypes = float32_everywhere(trained.model)
    bundle = export_bundle(trained, dataset, config, out)
    k = config.validation_k
    on_gpu = device == "cuda"
    memory = {"gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20)} if on_gpu else {}
    return {
        "data": {"users": dataset.n_users, "items": dataset.n_items, "path": str(data)},
        "loss": m["loss"],
        "bf16": m["bf16"],
        "epochs": len(m["epochs"]),
        "train_s": m["seconds_total"],
        "examples_per_s": m["examples_per_second"],
        "last_train_loss": m["epochs"][-1]["train_loss"],
        f"valid_hr@{k}": m[f"valid_hr@{k}"],
        **memory,
        **dtypes,
        **check_bundle(bundle, trained, dataset),
    }


def nccl_case(device: str) -> dict[str, Any]:
    """The collectives of data-parallel training on this device's backend (NCCL on a GPU,
    gloo on the CPU), in a group of one rank set up as ``distributed.start`` does."""
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from recall.trainer.distributed import all_sum, gather_states, sum_gradients

    dev = torch.device(device, 0) if device == "cuda" else torch.device("cpu")
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{_free_port()}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=30),
        device_id=dev if device == "cuda" else None,
    )
    try:
        dense = torch.nn.Parameter(torch.zeros(3, 2, device=dev))
        table = torch.nn.Parameter(torch.zeros(10, 2, device=dev))
        untouched = torch.nn.Parameter(torch.zeros(10, 2, device=dev))  # no rows this step
        dense.grad = torch.arange(6.0, device=dev).view(3, 2)
        rows = torch.tensor([[1, 4, 4]], device=dev)
        table.grad = torch.sparse_coo_tensor(rows, torch.ones(3, 2, device=dev), (10, 2))
        expected_table = table.grad.to_dense()
        extra = sum_gradients([dense], [table, untouched], torch.tensor([2.5], device=dev))
        assert dense.grad.device == dev and table.grad.device == dev, "gradients left the GPU"
        torch.testing.assert_close(dense.grad, torch.arange(6.0, device=dev).view(3, 2))
        torch.testing.assert_close(table.grad.to_dense(), expected_table)
        assert untouched.grad is not None and untouched.grad.to_dense().abs().sum() == 0
        torch.testing.assert_close(extra, torch.tensor([2.5], device=dev))
        hits = all_sum(torch.tensor([7], device=dev))
        assert int(hits.item()) == 7
        state = torch.cuda.get_rng_state(dev) if device == "cuda" else torch.get_rng_state()
        gathered = gather_states(state, dev)
        assert len(gathered) == 1 and gathered[0].device.type == "cpu"
        assert torch.equal(gathered[0], state)
    finally:
        dist.destroy_process_group()
    return {"backend": backend, "collectives": "sum_gradients, all_sum, gather_states"}


def _child_env() -> dict[str, str]:
    """This environment, with the repository importable (``recall`` need not be installed:
    a CUDA image's own Python with the repository on ``PYTHONPATH`` runs it) and one CPU
    thread (the same float results in every run, docs/training.md)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _recall_train(
    device: str, data: Path, out: Path, config: Path, *extra: str
) -> subprocess.Popen[str]:
    command = [
        *(sys.executable, "-m", "recall.cli", "train"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        "--device",
        device,
        "--no-progress",
        *extra,
    ]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env()
    )


def _bundle_of(process: subprocess.Popen[str], what: str) -> Path:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{what}: recall train exited {process.returncode}:\n{err[-3000:]}")
    return Path(out.strip().splitlines()[-1])


def _max_gap(one: Path, other: Path) -> float:
    """The largest difference between two bundles' vectors."""
    from recall.index import bundle as b

    return max(
        float(np.abs(np.load(one / name) - np.load(other / name)).max())
        for name in (b.ITEM_VECTORS, b.USER_VECTORS)
    )


def resume_case(device: str, data: Path, work: Path, steps: int) -> dict[str, Any]:
    """A run killed after its first checkpoint and resumed, against uninterrupted runs."""
    from recall.index import bundle as b
    from recall.trainer import checkpoint as ckpt

    work.mkdir(parents=True, exist_ok=True)
    config = work / "resume.toml"
    config.write_text(
        f'loss = "sampled"\nepochs = 2\nmax_steps_per_epoch = {steps}\nbatch_size = 256\n'
        "negatives = 512\nvalidation_users = 500\n"
    )
    every = ["--checkpoint-steps", str(max(1, steps // 4))]
    first = _bundle_of(_recall_train(device, data, work / "a", config, *every), "uninterrupted")
    again = _bundle_of(_recall_train(device, data, work / "b", config, *every), "second run")
    killed_root = work / "killed"
    killed = _recall_train(device, data, killed_root, config, *every)
    checkpoint = ckpt.checkpoint_path(killed_root)
    while not checkpoint.exists() and killed.poll() is None:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    if killed.returncode != -signal.SIGKILL or not checkpoint.exists():
        raise RuntimeError(f"the run to kill ended by itself (exit {killed.returncode})")
    saved = ckpt.load(checkpoint)  # onto the CPU, whatever device wrote it
    resumed_from = {"epoch": saved["next_epoch"], "step": saved["next_step"]}
    if (saved["rank_rng"][0]["cuda"] is None) == (device == "cuda"):
        raise AssertionError(f"{checkpoint}: a CUDA random state only where CUDA trained")
    resumed = _bundle_of(
        _recall_train(device, data, killed_root, config, *every, "--resume"), "resume"
    )
    manifest = b.read_manifest(resumed)
    for name in manifest.files:
        b.verify_file(resumed, manifest, name)
    repeat_gap, resume_gap = _max_gap(first, again), _max_gap(first, resumed)
    if repeat_gap == 0 and resume_gap != 0:
        raise AssertionError(
            f"training repeats bit for bit here, but the resumed run (from {resumed_from}) "
            f"differs from the uninterrupted one by up to {resume_gap:.3e}"
        )
    return {
        "resumed_from": resumed_from,
        "repeatable": repeat_gap == 0,
        "repeat_max_gap": repeat_gap,
        "resume_max_gap": resume_gap,
        "bit_for_bit": resume_gap == 0,
    }


def torchrun_case(device: str, data: Path, work: Path, steps: int) -> dict[str, Any]:
    """Two ranks (NCCL, one GPU each; gloo on the CPU) write one bundle that verifies."""
    from recall.index import bundle as b
    from recall.index.build import BuildOptions, build_index
    from recall.index.verify import verify_bundle

    config = work / "torchrun.toml"
    config.write_text(
        f'device = "{device}"\nloss = "sampled"\nepochs = 1\nmax_steps_per_epoch = {steps}\n'
        "batch_size = 1024\nvalidation_users = 2000\n"
    )
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2"),
        *("--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}"),
        *("-m", "recall.cli", "train"),
        *("--data", str(data), "--out", str(work / "torchrun"), "--config", str(config)),
        *("--no-progress", "--collective-timeout", "60"),
    ]
    child = subprocess.run(command, capture_output=True, text=True, env=_child_env())
    if child.returncode != 0:
        raise RuntimeError(f"torchrun exited {child.returncode}:\n{child.stderr[-4000:]}")
    bundle = Path(child.stdout.strip().splitlines()[-1])
    build_index(bundle, BuildOptions(kind="flat"))
    metrics = verify_bundle(bundle).manifest.trainer["metrics"]
    if metrics["ranks"] != 2:
        raise AssertionError(f"{bundle}: trained by {metrics['ranks']} rank(s), not 2")
    return {
        "examples_per_s": metrics["examples_per_second"],
        "bf16": metrics["bf16"],
        "verified": True,
        "bundle_files": len(b.read_manifest(bundle).files),
    }


def run_case(args: argparse.Namespace) -> dict[str, Any]:
    """The child's case ``args.case``, on ``args.device``, with the parent's data sets."""
    work, steps, device = args.work, args.steps, args.device
    sampled = {
        "loss": "sampled",
        "epochs": 1,
        "max_steps_per_epoch": steps,
        "batch_size": 1024,
        "validation_users": 2000,
    }
    full = {"loss": "full", "epochs": 2, "batch_size": 512, "validation_users": 1000}
    if args.smoke:
        full["max_steps_per_epoch"] = steps
    ml100k = Path(os.environ.get(ML100K_ENV) or ML100K_DEFAULT)
    cases: dict[str, Callable[[], dict[str, Any]]] = {
        "environment": lambda: environment(device),
        "sampled-bf16": lambda: train_case(
            device, work / "sampled", {**sampled, "bf16": "on"}, work / "out"
        ),
        "sampled-fp32": lambda: train_case(
            device, work / "sampled", {**sampled, "bf16": "off"}, work / "out"
        ),
        "full-bf16": lambda: train_case(
            device, work / "full", {**full, "bf16": "on"}, work / "out"
        ),
        "full-fp32": lambda: train_case(
            device, work / "full", {**full, "bf16": "off"}, work / "out"
        ),
        "ml-100k-bf16": lambda: train_case(device, ml100k, {"bf16": "on"}, work / "out"),
        "ml-100k-fp32": lambda: train_case(device, ml100k, {"bf16": "off"}, work / "out"),
        "nccl": lambda: nccl_case(device),
        "resume": lambda: resume_case(device, work / "full", work / "resume", steps),
        "torchrun": lambda: torchrun_case(device, work / "sampled", work, steps),
    }
    return cases[args.case]()


# --- the parent: data, then every case in its own process, under the budget ------------


def _skip_reason(case: str, device: str, smoke: bool) -> str | None:
    """Why ``case`` does not run here, or None."""
    if case.startswith("ml-100k"):
        if smoke:
            return "smoke: no full MovieLens training"
        ml100k = Path(os.environ.get(ML100K_ENV) or ML100K_DEFAULT)
        if not ml100k.is_dir():
            return f"no MovieLens 100K at {ml100k} (set {ML100K_ENV})"
    if case == "torchrun" and device == "cuda":
        import torch

        if torch.cuda.device_count() < 2:
            return f"needs 2 GPUs, this machine has {torch.cuda.device_count()}"
    return None


def _write_data(work: Path, args: argparse.Namespace) -> None:
    """The synthetic catalogs the cases train on: ``sampled`` (large) and ``full`` (small)."""
    from recall.trainer.synth import SynthConfig, write_synthetic

    small = (200, 150) if args.smoke else (5_000, 2_000)
    write_synthetic(
        work / "sampled", SynthConfig(n_users=args.users, n_items=args.items, mean_history=20)
    )
    write_synthetic(work / "full", SynthConfig(n_users=small[0], n_items=small[1]))


def _run_child(case: str, args: argparse.Namespace, limit_s: float) -> dict[str, Any]:
    """One case in a child process (its own session, killed whole at ``limit_s``)."""
    log = args.work / f"{case}.log"
    command = [
        sys.executable,
        __file__,
        *("--case", case, "--device", args.device, "--work", str(args.work)),
        *("--steps", str(args.steps)),
        *(["--smoke"] if args.smoke else []),
    ]
    t0 = time.perf_counter()
    with log.open("w") as stderr:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        try:
            out, _ = child.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            out = None
    record: dict[str, Any] = {"case": case, "seconds": round(time.perf_counter() - t0, 1)}
    tail = log.read_text(errors="replace")[-ERROR_TAIL:]
    if out is None:
        return {**record, "status": "timed out", "error": f"over {limit_s:.0f} s\n{tail}"}
    if child.returncode != 0:
        return {**record, "status": "failed", "error": f"exit {child.returncode}\n{tail}"}
    try:
        return {**record, "status": "ok", "result": json.loads(out.strip().splitlines()[-1])}
    except (ValueError, IndexError):
        return {**record, "status": "failed", "error": f"no result line in {out!r}\n{tail}"}


def _summary(record: dict[str, Any]) -> str:
    """The line a case gets in the progress and the final table."""
    if record["status"] == "skipped":
        return str(record["reason"])
    result = record.get("result", {})
    keys = ("torch", "gpus", "examples_per_s", "bf16", "gpu_peak_mb", "backend", "bit_for_bit")
    bits = [f"{k} {result[k]}" for k in keys if k in result]
    if record["status"] in ("failed", "timed out"):
        lines = record["error"].strip().splitlines()
        bits.append(lines[-1] if lines else "")
    return ", ".join(bits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: the CPU proxy")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES, help="in this order")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all cases")
    parser.add_argument("--users", type=int, help="synthetic users (default 50,000; smoke 300)")
    parser.add_argument("--items", type=int, help="synthetic items (default 20,000; smoke 400)")
    parser.add_argument("--steps", type=int, help="sampled-softmax steps (default 200; smoke 4)")
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/gpu_check.json")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # the child
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.users = args.users or (300 if args.smoke else 50_000)
    args.items = args.items or (400 if args.smoke else 20_000)
    args.steps = args.steps or (4 if args.smoke else 200)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    if args.case:
        sys.stdout.write(json.dumps(run_case(args)) + "\n")
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.stderr.write(
            f"gpu_check: torch {torch.__version__} sees no CUDA device (CUDA build: "
            f"{torch.version.cuda or 'no, this is the CPU build'}); run it on a GPU machine "
            "with a CUDA build of torch, or with --device cpu --smoke for the CPU proxy\n"
        )
        return 2
    started = time.perf_counter()
    report: dict[str, Any] = {
        **header("gpu_check", torch=torch.__version__),
        "device": args.device,
        "smoke": args.smoke,
        "budget_s": args.budget,
        "cases": [],
    }
    args.work = Path(tempfile.mkdtemp(prefix="recall-gpu-check-"))
    logger.info(
        "%d cases on %s, about 3 min on one GPU, at most %.0f s; results in %s after each "
        "case, each case's log in %s/CASE.log",
        len(set(args.cases)),
        args.device,
        args.budget,
        args.out,
        args.work,
    )
    _write_data(args.work, args)
    for case in dict.fromkeys(args.cases):  # in the order given, once each
        left = args.budget - (time.perf_counter() - started)
        reason = _skip_reason(case, args.device, args.smoke)
        if reason is None and left < 10:
            reason = f"the budget of {args.budget:.0f} s was spent"
        if reason is not None:
            record: dict[str, Any] = {"case": case, "status": "skipped", "reason": reason}
        else:
            logger.info("%s: running (at most %.0f s)", case, min(CASE_LIMIT_S[case], left))
            record = _run_child(case, args, min(CASE_LIMIT_S[case], left))
        logger.info("%s: %s %s", case, record["status"], _summary(record))
        report["cases"].append(record)
        write_json(args.out, report)
    report["seconds"] = round(time.perf_counter() - started, 1)
    table = [f"{r['case']} | {r['status']} | {_summary(r)}" for r in report["cases"]]
    finish(args.out, report, "\n".join(table))
    failed = [r for r in report["cases"] if r["status"] in ("failed", "timed out")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
