"""Shared fixtures: a small planted synthetic data set and one model trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import TrainConfig
from trainer.data import Dataset, load_dataset
from trainer.synth import SynthConfig, write_synthetic
from trainer.train import Trained, train

ML_100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"

SMALL = TrainConfig(
    item_dim=16,
    genre_dim=4,
    categorical_dim=4,
    hidden=[32, 16],
    epochs=8,
    patience=2,
    batch_size=256,
    lr=1e-2,
    validation_users=300,
)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    write_synthetic(
        out,
        SynthConfig(
            n_users=400,
            n_items=300,
            n_clusters=15,
            p_popular=0.05,
            popularity_exponent=0.7,
            seed=7,
        ),
    )
    return out


@pytest.fixture(scope="session")
def synthetic(synthetic_dir: Path) -> Dataset:
    return load_dataset(synthetic_dir)


@pytest.fixture(scope="session")
def small_config() -> TrainConfig:
    return SMALL


@pytest.fixture(scope="session")
def trained(synthetic: Dataset) -> Trained:
    return train(synthetic, SMALL, progress=False)
