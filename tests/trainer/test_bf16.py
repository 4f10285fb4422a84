"""bf16 autocast, the GPU path's mixed precision, run on the CPU: ``bf16 = "on"`` puts the
very training step of a CUDA run under ``torch.autocast("cpu", dtype=torch.bfloat16)``.
What it shows: the step runs in mixed precision and trains as well as float32, the
weights and their (sparse) gradients stay float32, and the bundle is float32. What it
cannot show: CUDA's own per-op precision lists differ from the CPU's (bench/gpu_check.py
on a GPU does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recall.index import bundle as b
from recall.index.build import BuildOptions, build_index
from recall.index.verify import verify_bundle
from recall.trainer.config import ConfigError, TrainConfig, load_config
from recall.trainer.data import Dataset
from recall.trainer.export import export_bundle
from recall.trainer.model import CandidateModel, full_softmax_loss, sampled_softmax_loss
from recall.trainer.train import Trained, bf16_autocast, prepare, train
from tests.conftest import SMALL

FIRST_EPOCH_RTOL = 0.005
"""How far (relative) the first epoch's training loss under bf16 may be from float32's;
measured 2026-12-08 on this config: 0.013 % (sampled), 0.044 % (full)."""
EPOCH_RTOL = 0.05
"""The same for every epoch: the runs drift apart as training amplifies the rounding
(measured up to 1.9 % after 3 epochs; over 8 epochs and 3 seeds both precisions end
within the seed-to-seed spread of each other)."""


def test_the_bf16_setting_decides_autocast_per_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert not bf16_autocast("auto", cpu)  # the CPU default: float32
    assert bf16_autocast("on", cpu) and bf16_autocast("on", cuda)
    assert not bf16_autocast("off", cpu) and not bf16_autocast("off", cuda)
    # auto on a GPU: only where bf16 is native, never emulated
    assert bf16_autocast("auto", cuda) == torch.cuda.is_bf16_supported(including_emulation=False)


def test_the_bf16_setting_of_older_configs_still_reads(tmp_path: Path) -> None:
    """``bf16 = true`` / ``false`` (the setting's values before "auto"/"on"/"off")."""
    config = tmp_path / "train.toml"
    config.write_text("bf16 = true\n")
    assert load_config(config, {}).bf16 == "auto"
    assert TrainConfig(bf16=False).bf16 == "off"  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="bf16"):
        load_config(None, {"bf16": "yes"})


def test_under_autocast_only_the_products_are_bf16(
    synthetic: Dataset, small_config: TrainConfig
) -> None:
    """The log-Q correction, the biases and the cross entropy are float32: with logits
    near 50, bf16 (8 bits of mantissa, steps of 0.25 there) would be far off."""
    prepared = prepare(synthetic, small_config)
    spec = prepared.spec
    model = CandidateModel(spec, prepared.item_genres, sparse=True)
    g = torch.Generator().manual_seed(0)
    n = spec.n_items
    with torch.no_grad():
        model.output_bias.weight.copy_(50 + torch.rand(n, 1, generator=g))
    u = torch.randn(8, spec.dim, generator=g).bfloat16()  # the tower's output under autocast
    labels = torch.randint(0, n, (8,), generator=g)
    negatives = torch.randint(0, n, (32,), generator=g)
    log_q = 50 + torch.rand(n, generator=g)
    weight, bias = model.output.weight.detach(), model.output_bias.weight.detach()[:, 0]
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sampled = sampled_softmax_loss(model, u, labels, negatives, log_q)
            full = full_softmax_loss(model, u, labels)
        # float32 all through but for the two matrix products, rounded to bf16 as autocast does
        pos = (u.float() * weight[labels]).sum(1) + bias[labels] - log_q[labels]
        neg = (u @ weight[negatives].bfloat16().T).float() + bias[negatives] - log_q[negatives]
        neg = neg.masked_fill(negatives[None] == labels[:, None], float("-inf"))
        logits = torch.cat([pos[:, None], neg], dim=1)
        expected_sampled = torch.nn.functional.cross_entropy(logits, torch.zeros_like(labels))
        expected_full = torch.nn.functional.cross_entropy(
            (u @ weight.bfloat16().T).float() + bias, labels
        )
    assert sampled.dtype == full.dtype == torch.float32
    torch.testing.assert_close(sampled, expected_sampled, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full, expected_full, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module", params=["sampled", "full"])
def runs(request: pytest.FixtureRequest, synthetic: Dataset) -> dict[str, Trained]:
    """The same 3-epoch training in float32 and under bf16 autocast, by softmax kind."""
    config = SMALL.model_copy(
        update={"epochs": 3, "patience": 3, "loss": request.param, "negatives": 64}
    )
    return {
        setting: train(synthetic, config.model_copy(update={"bf16": setting}), progress=False)
        for setting in ("off", "on")
    }


@pytest.mark.slow
def test_bf16_trains_as_float32_does(runs: dict[str, Trained]) -> None:
    f32, bf16 = runs["off"].metrics, runs["on"].metrics
    assert (f32["bf16"], bf16["bf16"]) == (False, True)
    f32_losses = [e["train_loss"] for e in f32["epochs"]]
    bf16_losses = [e["train_loss"] for e in bf16["epochs"]]
    assert bf16_losses != f32_losses  # autocast did run: the step's products were bf16
    np.testing.assert_allclose(bf16_losses[0], f32_losses[0], rtol=FIRST_EPOCH_RTOL)
    np.testing.assert_allclose(bf16_losses, f32_losses, rtol=EPOCH_RTOL)
    assert bf16["valid_hr@50"] > bf16["popularity"]["valid_hr@50"]


@pytest.mark.slow
def test_bf16_keeps_weights_and_gradients_float32(runs: dict[str, Trained]) -> None:
    trained = runs["on"]
    model = trained.model
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert p.grad is not None and p.grad.dtype == torch.float32, name  # the last step's
    sampled = trained.metrics["loss"] == "sampled"
    for table in (model.item_embedding, model.output, model.output_bias):
        assert table.weight.grad is not None and table.weight.grad.is_sparse == sampled


@pytest.mark.slow
def test_a_bf16_bundle_verifies_and_holds_the_float32_model(
    runs: dict[str, Trained], synthetic: Dataset, small_config: TrainConfig, tmp_path: Path
) -> None:
    trained = runs["on"]
    bundle = export_bundle(trained, synthetic, small_config, tmp_path)
    build_index(bundle, BuildOptions(kind="flat"))
    verified = verify_bundle(bundle)
    users = np.asarray(verified.user_vectors)
    items = np.load(bundle / b.ITEM_VECTORS)
    assert users.dtype == items.dtype == np.float32
    # Exported outside autocast: the served (numpy, float32) tower gives the bundle's user
    # vectors to float32 rounding; bf16 products would be ~1e-2 off.
    rows = [0, 5, 123, synthetic.n_users - 1]
    split = trained.prepared.split
    features = [
        {name: values[u].item() for name, values in synthetic.user_features.items()} for u in rows
    ]
    served = verified.tower.encode([split.history(u) for u in rows], features)
    np.testing.assert_allclose(served, users[rows], atol=1e-5)
    with torch.no_grad():
        logits = trained.model.logits(torch.as_tensor(users[:, :-1].copy())).numpy()
    np.testing.assert_allclose(users @ items.T, logits, rtol=1e-5, atol=1e-5)
