"""``bench/gpu_check.py``, the check of the GPU path, kept from rotting on machines without
one: without CUDA it refuses in one line (exit 2), and its CPU smoke mode runs every case
(bf16 autocast on the CPU, gloo in place of NCCL, a killed run resumed, two torchrun
ranks) through the same child processes and results file as the GPU run.

Also what a CPU can check of ``--device cuda``: asked for without CUDA, training stops
with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recall.trainer.distributed import SINGLE, Ranks, device_for

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
BIN = Path(sys.executable).parent

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")


@no_cuda
def test_device_cuda_without_cuda_is_refused_naming_the_torch_build() -> None:
    with pytest.raises(ValueError, match=r"--device cuda.*torch 2\.\S+ sees no CUDA device"):
        device_for("cuda", SINGLE)
    assert device_for("cpu", Ranks(rank=1, world=2, local_rank=1)) == torch.device("cpu")


@no_cuda
def test_recall_train_device_cuda_without_cuda_exits_2_in_one_line(
    synthetic_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    command = [str(BIN / "recall"), "train", "--data", str(synthetic_dir), "--out", str(out)]
    child = subprocess.run([*command, "--device", "cuda"], capture_output=True, text=True)
    assert child.returncode == 2
    assert child.stdout == ""
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in child.stderr
    assert "recall train: --device cuda" in lines[0] and "no CUDA device" in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing written


@no_cuda
def test_gpu_check_without_cuda_exits_2_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    child = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True
    )
    assert child.returncode == 2
    assert child.stderr.count("\n") == 1 and "sees no CUDA device" in child.stderr
    assert "--device cpu --smoke" in child.stderr  # says what does run here
    assert not out.exists()


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_case_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    child = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    cases = {c["case"]: c for c in report["cases"]}
    not_ok = {name: c["status"] for name, c in cases.items() if c["status"] != "ok"}
    assert not_ok == {"ml-100k-bf16": "skipped", "ml-100k-fp32": "skipped"}, report
    assert child.returncode == 0, child.stderr[-3000:]
    assert (report["device"], report["smoke"]) == ("cpu", True)
    for name in ("sampled-bf16", "full-bf16", "sampled-fp32", "full-fp32"):
        result = cases[name]["result"]
        assert result["verified"] and result["weights_and_grads"] == "float32"
        assert result["bf16"] == name.endswith("bf16")
        assert result["tower_max_gap"] < 1e-4 and result["logit_max_gap"] < 1e-4
    assert "output.weight" in cases["sampled-bf16"]["result"]["sparse_grads"]
    assert cases["full-bf16"]["result"]["sparse_grads"] == []
    assert cases["nccl"]["result"]["backend"] == "gloo"
    resume = cases["resume"]["result"]
    assert resume["bit_for_bit"] and resume["repeatable"]  # one CPU thread: exact
    assert resume["resumed_from"] != {"epoch": 1, "step": 0}  # killed mid-run
    assert cases["torchrun"]["result"]["verified"]


@pytest.mark.slow
def test_a_failing_case_is_recorded_with_its_traceback_and_the_next_still_runs(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "not-movielens"
    empty.mkdir()
    out = tmp_path / "gpu_check.json"
    child = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)),
            *("--cases", "ml-100k-bf16", "environment"),
            *("--users", "300", "--items", "400", "--steps", "4"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RECALL_ML100K_DIR": str(empty)},
    )
    assert child.returncode == 1
    failed, after = json.loads(out.read_text())["cases"]
    assert (failed["case"], failed["status"]) == ("ml-100k-bf16", "failed")
    assert "Traceback" in failed["error"] and str(empty) in failed["error"]
    assert (after["case"], after["status"]) == ("environment", "ok")
