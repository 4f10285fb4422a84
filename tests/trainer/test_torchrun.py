"""``torchrun ... --no-python recall train``: real launcher subprocesses, c10d rendezvous on
127.0.0.1, two gloo ranks on tiny data. One verified bundle from two ranks, the same
model as one process; a killed run resumed to the very bundle of an uninterrupted one; a
rank killed mid-epoch failing the job in bounded time; a rendezvous that never forms."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from recall.index import bundle as b
from recall.trainer import checkpoint as ckpt
from recall.trainer.config import load_config
from recall.trainer.data import Dataset
from recall.trainer.export import bundle_arrays
from recall.trainer.train import train
from tests.live import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
CONFIG = """
hidden = [16]
batch_size = 128
epochs = 5
patience = 5
validation_users = 200
"""
SAMPLED = CONFIG + 'loss = "sampled"\nnegatives = 64\n'
# The mean tower for the comparison with one process: the attention tower's softmax over the
# window amplifies float summation order (other ranks, other thread counts) past any
# tolerance: after 5 epochs item vectors differed by up to 0.19 while every epoch's loss
# agreed to 1e-3 (2026-12-07). Bit-for-bit resumes keep the default, attention.
MEAN = CONFIG + 'tower = "mean"\n'
ARRAYS = ("item_vectors.npy", "user_vectors.npy", "user_tower.npz")
DEADLINE_S = 120  # generous: two ranks share two busy cores


def _torchrun(
    data: Path,
    out: Path,
    config: Path,
    *extra: str,
    nnodes: int = 1,
    nproc: int = 2,
    endpoint: str | None = None,
) -> subprocess.Popen[str]:
    command = [
        str(BIN / "torchrun"),
        "--nnodes",
        str(nnodes),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint or f"127.0.0.1:{free_port()}",
        "--no-python",
        str(BIN / "recall"),
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--config",
        str(config),
        "--no-progress",
        *extra,
    ]
    # One thread per rank whatever the layout (torchrun sets it only for nproc > 1): the
    # attention tower's float results depend on the thread count, and a resumed run must
    # repeat the uninterrupted one bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=DEADLINE_S)
    return process.returncode, out, err


def _bundles(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if not p.name.startswith("."))


def _verified(bundle: Path) -> b.Manifest:
    manifest = b.read_manifest(bundle)
    for name in manifest.files:
        b.verify_file(bundle, manifest, name)
    return manifest


def _same_arrays(one: Path, other: Path) -> None:
    for name in ARRAYS:
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(one / name), np.load(other / name), name)
            continue
        with np.load(one / name) as x, np.load(other / name) as y:
            assert sorted(x.files) == sorted(y.files)
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}:{key}")


@pytest.fixture(scope="module")
def configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("configs")
    (folder / "sampled.toml").write_text(SAMPLED)
    (folder / "mean.toml").write_text(MEAN)
    return {"sampled": folder / "sampled.toml", "mean": folder / "mean.toml"}


@pytest.fixture(scope="module")
def uninterrupted(
    synthetic_dir: Path, configs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The bundle of an uninterrupted 2-rank sampled-softmax run."""
    root = tmp_path_factory.mktemp("uninterrupted")
    code, out, err = _finish(
        _torchrun(synthetic_dir, root, configs["sampled"], "--checkpoint-steps", "10")
    )
    assert code == 0, err
    return Path(out.strip())


def test_two_ranks_write_one_verified_bundle_of_the_one_process_model(
    synthetic_dir: Path, synthetic: Dataset, configs: dict[str, Path], tmp_path: Path
) -> None:
    code, out, err = _finish(_torchrun(synthetic_dir, tmp_path, configs["mean"]))
    assert code == 0, err
    assert len(out.splitlines()) == 1  # rank 0 alone prints, and writes
    bundle = Path(out.strip())
    assert _bundles(tmp_path) == [bundle]  # and the checkpoint is gone
    manifest = _verified(bundle)
    assert manifest.trainer["metrics"]["ranks"] == 2

    # Full softmax: the 2-rank gradient is the 1-process gradient, summed in another order.
    one = train(synthetic, load_config(configs["mean"], {}), progress=False)
    arrays = bundle_arrays(one, synthetic)
    np.testing.assert_allclose(np.load(bundle / b.ITEM_VECTORS), arrays[b.ITEM_VECTORS], atol=1e-4)
    np.testing.assert_allclose(np.load(bundle / b.USER_VECTORS), arrays[b.USER_VECTORS], atol=1e-4)
    assert manifest.trainer["metrics"]["best_epoch"] == one.metrics["best_epoch"]


def test_sampled_softmax_on_two_ranks_writes_a_verified_bundle(uninterrupted: Path) -> None:
    manifest = _verified(uninterrupted)
    metrics = manifest.trainer["metrics"]
    assert metrics["loss"] == "sampled" and metrics["ranks"] == 2
    assert metrics["valid_hr@50"] > 2 * metrics["popularity"]["valid_hr@50"]


def _worker(launcher: int, rank: int) -> int | None:
    """The pid of ``launcher``'s child with RANK=``rank`` in its environment, or None."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in environ:
            return int(child)
    return None


def _when_checkpointed(root: Path, process: subprocess.Popen[str]) -> None:
    """Wait for the run's first checkpoint (and fail if the run ends before it)."""
    path = ckpt.checkpoint_path(root)
    deadline = time.monotonic() + DEADLINE_S
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)


@pytest.fixture
def killed_rank(
    synthetic_dir: Path, configs: dict[str, Path], tmp_path: Path
) -> Iterator[tuple[Path, float, list[int], str]]:
    """Two nodes (two torchrun agents of one process each, one rendezvous) whose rank 1
    was SIGKILLed after the first checkpoint: (root, seconds from the kill until both
    agents exited, their exit codes, the stderr of rank 0's agent)."""
    endpoint = f"127.0.0.1:{free_port()}"
    config, every = configs["sampled"], ("--checkpoint-steps", "10")
    agents = [
        _torchrun(synthetic_dir, tmp_path, config, *every, nnodes=2, nproc=1, endpoint=endpoint)
        for _ in range(2)
    ]
    try:
        _when_checkpointed(tmp_path, agents[0])
        rank0 = next(a for a in agents if _worker(a.pid, 0) is not None)
        rank1 = next(pid for a in agents if (pid := _worker(a.pid, 1)) is not None)
        os.kill(rank1, signal.SIGKILL)
        killed = time.monotonic()
        finished = {id(a): _finish(a) for a in agents}
        seconds = time.monotonic() - killed
        codes = [finished[id(a)][0] for a in agents]
        yield tmp_path, seconds, codes, finished[id(rank0)][2]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.communicate()


def test_a_rank_killed_mid_epoch_fails_the_job_in_bounded_time_and_writes_nothing(
    killed_rank: tuple[Path, float, list[int], str],
) -> None:
    root, seconds, codes, rank0_err = killed_rank
    assert all(code != 0 for code in codes)
    assert seconds < 60
    # The survivor says what happened, in one line, before it exits.
    assert "recall train: lost the other ranks" in rank0_err
    assert "no bundle was written" in rank0_err
    assert _bundles(root) == []
    state = ckpt.load(ckpt.checkpoint_path(root))  # the last checkpoint stays valid
    assert state["world_size"] == 2


def test_a_hung_rank_fails_the_others_after_the_collective_timeout(
    synthetic_dir: Path, configs: dict[str, Path], tmp_path: Path
) -> None:
    process = _torchrun(
        synthetic_dir,
        tmp_path,
        configs["sampled"],
        "--checkpoint-steps",
        "10",
        "--collective-timeout",
        "5",
    )
    try:
        _when_checkpointed(tmp_path, process)
        rank1 = _worker(process.pid, 1)
        assert rank1 is not None
        os.kill(rank1, signal.SIGSTOP)  # alive, holding its sockets, never answering
        stopped = time.monotonic()
        code, _, err = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert code != 0
    assert time.monotonic() - stopped < 5 + 60  # the timeout, then torchrun's own cleanup
    assert "recall train: lost the other ranks" in err
    assert _bundles(tmp_path) == []
    ckpt.load(ckpt.checkpoint_path(tmp_path))


def test_resume_after_a_kill_writes_the_uninterrupted_bundle(
    killed_rank: tuple[Path, float, list[int], str],
    uninterrupted: Path,
    synthetic_dir: Path,
    configs: dict[str, Path],
) -> None:
    root = killed_rank[0]
    resumed_from = ckpt.load(ckpt.checkpoint_path(root))
    assert (resumed_from["next_epoch"], resumed_from["next_step"]) != (6, 0)  # not finished
    process = _torchrun(
        synthetic_dir, root, configs["sampled"], "--checkpoint-steps", "10", "--resume"
    )
    code, out, err = _finish(process)
    assert code == 0, err
    assert "resuming from" in err
    bundle = Path(out.strip())
    assert _bundles(root) == [bundle]
    _verified(bundle)
    _same_arrays(bundle, uninterrupted)  # bit for bit


def test_one_process_resumed_after_sigkill_writes_the_uninterrupted_bundle(
    synthetic_dir: Path, configs: dict[str, Path], tmp_path: Path
) -> None:
    def run(root: Path, *extra: str) -> subprocess.Popen[str]:
        command = [
            str(BIN / "recall"),
            "train",
            "--data",
            str(synthetic_dir),
            "--out",
            str(root),
            "--config",
            str(configs["sampled"]),
            "--checkpoint-steps",
            "7",
            "--no-progress",
            *extra,
        ]
        # one thread, as torchrun gives each rank: two on a shared 2-core machine crawl
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    code, out, err = _finish(run(tmp_path / "whole"))
    assert code == 0, err
    whole = Path(out.strip())
    killed = run(tmp_path / "killed")
    _when_checkpointed(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert _bundles(tmp_path / "killed") == []
    code, out, err = _finish(run(tmp_path / "killed", "--resume"))
    assert code == 0, err
    _same_arrays(Path(out.strip()), whole)


@pytest.mark.parametrize(
    ("nnodes", "conf"),
    [
        ("1", "is_host=false,read_timeout=5"),  # the endpoint: nothing listens
        ("2", "join_timeout=5"),  # this agent hosts; the second node never comes
    ],
)
def test_a_rendezvous_that_never_forms_exits_within_its_timeout(
    synthetic_dir: Path, configs: dict[str, Path], tmp_path: Path, nnodes: str, conf: str
) -> None:
    command = [
        str(BIN / "torchrun"),
        "--nnodes",
        nnodes,
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-conf",
        conf,
        "--no-python",
        str(BIN / "recall"),
        "train",
        "--data",
        str(synthetic_dir),
        "--out",
        str(tmp_path),
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode != 0
    assert time.monotonic() - started < 5 + 30  # the timeout, plus starting torch
    assert "Rendezvous" in done.stderr
    assert list(tmp_path.iterdir()) == []
