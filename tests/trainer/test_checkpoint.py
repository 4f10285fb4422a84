"""Checkpoints in one process: what a checkpoint holds, and ``--resume`` refusing a
checkpoint of another run (config, data set, ranks) or a damaged one, naming why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recall.cli import main
from recall.trainer import checkpoint as ckpt
from recall.trainer.config import load_config
from recall.trainer.data import Dataset, load_dataset
from recall.trainer.synth import SynthConfig, write_synthetic
from recall.trainer.train import RunOptions, train

FLAGS = ["--epochs", "2", "--hidden", "16", "--batch-size", "256", "--no-progress"]
"""The flags of the run that wrote the checkpoint below (the config :func:`written` used)."""


@pytest.fixture(scope="module")
def written(synthetic: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle root holding the checkpoint of a finished 2-epoch run (``train`` leaves it;
    ``recall train`` removes it once the bundle is written)."""
    root = tmp_path_factory.mktemp("checkpointed")
    config = load_config(None, {"epochs": 2, "hidden": [16], "batch_size": 256})
    train(synthetic, config, progress=False, run=RunOptions(checkpoint=ckpt.checkpoint_path(root)))
    return root


def test_a_checkpoint_holds_the_run_in_plain_tensors_and_dicts(
    written: Path, synthetic: Dataset
) -> None:
    path = ckpt.checkpoint_path(written)
    state = torch.load(path, weights_only=True)  # no pickle of arbitrary objects
    assert state["format"] == ckpt.FORMAT
    assert (state["next_epoch"], state["next_step"], state["world_size"]) == (3, 0, 1)
    assert state["data"] == ckpt.data_fingerprint(synthetic)
    assert state["config"]["hidden"] == [16]
    assert len(state["fit"]["history"]) == 2
    assert set(state["model"]) >= {"output.weight", "item_embedding.weight"}
    assert len(state["rank_rng"]) == 1 and state["rank_rng"][0]["torch"].dtype == torch.uint8
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


def test_resume_refuses_another_config_naming_the_field(
    written: Path, synthetic_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["train", "--data", str(synthetic_dir), "--out", str(written), "--resume", *FLAGS]
    assert main([*args, "--lr", "0.01"]) == 2
    assert "lr=0.003 (now 0.01)" in _errors(caplog)[-1]
    assert main([*args, "--seed", "5"]) == 2
    assert "seed=0 (now 5)" in _errors(caplog)[-1]
    assert ckpt.checkpoint_path(written).exists()  # refused, not replaced
    assert [p.name for p in written.iterdir()] == [ckpt.DIRECTORY]  # and no bundle


def test_resume_refuses_another_data_set_naming_the_difference(
    written: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, synthetic_dir: Path
) -> None:
    other = tmp_path / "other"
    write_synthetic(other, SynthConfig(n_users=150, n_items=300, seed=3))
    args = ["train", "--out", str(written), "--resume", *FLAGS]
    assert main([*args, "--data", str(other)]) == 2
    assert "another data set: users 400 (now 150)" in _errors(caplog)[-1]

    same_sizes = tmp_path / "shifted"  # the same rows, one timestamp moved
    same_sizes.mkdir()
    for name in ("users.csv", "items.csv"):
        (same_sizes / name).write_bytes((synthetic_dir / name).read_bytes())
    lines = (synthetic_dir / "interactions.csv").read_text().splitlines()
    user, item, stamp, *rest = lines[1].split(",")
    lines[1] = ",".join([user, item, str(int(float(stamp)) + 1), *rest])
    (same_sizes / "interactions.csv").write_text("\n".join(lines) + "\n")
    assert load_dataset(same_sizes).n_interactions == load_dataset(synthetic_dir).n_interactions
    assert main([*args, "--data", str(same_sizes)]) == 2
    assert "same sizes, content sha256" in _errors(caplog)[-1]


def test_resume_refuses_another_number_of_ranks(written: Path, synthetic: Dataset) -> None:
    path = ckpt.checkpoint_path(written)
    state = ckpt.load(path)
    config = load_config(None, {"epochs": 2, "hidden": [16], "batch_size": 256})
    fingerprint = ckpt.data_fingerprint(synthetic)
    ckpt.check_same_run(path, state, config, fingerprint, world=1)
    with pytest.raises(ckpt.CheckpointError, match=r"written by 1 rank.*this run has 2"):
        ckpt.check_same_run(path, state, config, fingerprint, world=2)


def test_resume_refuses_a_damaged_checkpoint(
    written: Path, synthetic_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    damaged = ckpt.checkpoint_path(root)
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(ckpt.checkpoint_path(written).read_bytes()[:1000])
    args = ["train", "--data", str(synthetic_dir), "--out", str(root), "--resume", *FLAGS]
    assert main(args) == 2
    assert "not a readable checkpoint" in _errors(caplog)[-1]


def test_resume_of_a_finished_run_writes_its_bundle_and_removes_the_checkpoint(
    written: Path,
    synthetic: Dataset,
    synthetic_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "root"
    ckpt.checkpoint_path(root).parent.mkdir(parents=True)
    ckpt.checkpoint_path(root).write_bytes(ckpt.checkpoint_path(written).read_bytes())
    assert (
        main(["train", "--data", str(synthetic_dir), "--out", str(root), "--resume", *FLAGS]) == 0
    )
    bundle = Path(capsys.readouterr().out.strip())
    assert sorted(p.name for p in root.iterdir()) == [bundle.name]  # checkpoint gone
    config = load_config(None, {"epochs": 2, "hidden": [16], "batch_size": 256})
    fresh = train(synthetic, config, progress=False).model.folded_items()
    np.testing.assert_array_equal(np.load(bundle / "item_vectors.npy"), fresh)
