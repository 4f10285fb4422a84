"""Training: prepare data -> create model -> train epochs with early stopping -> finalize."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from recall.index.tower import TowerSpec
from recall.trainer import checkpoint as ckpt
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
from recall.trainer.distributed import (
    SINGLE,
    Ranks,
    all_sum,
    device_for,
    gather_states,
    rank_seed,
    shard_owners,
    sum_gradients,
)
from recall.trainer.examples import Examples, Histories, full_histories, make_examples
from recall.trainer.features import UserInputs, build_spec, encode_users, item_genre_rows
from recall.trainer.model import CandidateModel, UserBatch, full_softmax_loss, sampled_softmax_loss
from recall.trainer.split import NO_ITEM, Split, leave_last_out

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """Everything derived from the data set before a model exists."""

    split: Split
    spec: TowerSpec
    users: UserInputs
    item_genres: np.ndarray
    examples: Examples
    histories: Histories  # each user's whole training history, for user vectors
    item_counts: np.ndarray  # (n_items,) int64 training interactions per item


@dataclass
class Trained:
    model: CandidateModel
    prepared: Prepared
    metrics: dict[str, Any] = field(default_factory=dict)


def prepare(dataset: Dataset, config: TrainConfig) -> Prepared:
    split = leave_last_out(
        dataset.user_rows, dataset.item_rows, dataset.timestamps, dataset.n_users
    )
    spec = build_spec(dataset, config)
    rng = np.random.default_rng(config.seed)
    examples = make_examples(split, config.history_length, config.max_examples_per_user, rng)
    if len(examples) == 0:
        raise ValueError("no training examples: every user needs at least two training items")
    return Prepared(
        split=split,
        spec=spec,
        users=encode_users(spec, dataset),
        item_genres=item_genre_rows(spec, dataset),
        examples=examples,
        histories=full_histories(split, config.history_length),
        item_counts=np.bincount(split.train_items, minlength=dataset.n_items).astype(np.int64),
    )


class DeviceData:
    """The arrays a step needs, moved to the device once."""

    def __init__(self, prepared: Prepared, device: torch.device) -> None:
        ex = prepared.examples
        self.device = device
        self.train_items = torch.as_tensor(prepared.split.train_items, dtype=torch.int64).to(device)
        self.categorical = torch.as_tensor(prepared.users.categorical).to(device)
        self.numeric = torch.as_tensor(prepared.users.numeric).to(device)
        self.users = torch.as_tensor(ex.users).to(device)
        self.ends = torch.as_tensor(ex.ends).to(device)
        self.hist_lens = torch.as_tensor(ex.hist_lens).to(device)
        self.labels = torch.as_tensor(ex.labels).to(device)
        self.ages = torch.as_tensor(ex.ages).to(device)
        self.offsets = torch.arange(-prepared.spec.history_length, 0, device=device)

    def batch(self, users: Tensor, ends: Tensor, hist_lens: Tensor, ages: Tensor) -> UserBatch:
        """Histories are the ``hist_lens`` training items just before position ``ends``."""
        positions = ends.unsqueeze(1) + self.offsets
        mask = self.offsets >= -hist_lens.unsqueeze(1)
        history = self.train_items[positions.clamp(min=0)].masked_fill(~mask, 0)
        return UserBatch(history, mask, self.categorical[users], self.numeric[users], ages)


def user_vectors(
    model: CandidateModel,
    data: DeviceData,
    hist: Histories,
    users: np.ndarray,
    batch: int = 4096,
) -> Tensor:
    """Tower output from each listed user's full training history at age 0: (len(users), dim)."""
    out = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(users), batch):
            rows = users[start : start + batch]
            t = torch.as_tensor(rows, dtype=torch.int64, device=data.device)
            ends = torch.as_tensor(hist.ends[rows], device=data.device)
            lens = torch.as_tensor(hist.hist_lens[rows], device=data.device)
            ages = torch.zeros(len(rows), device=data.device)
            out.append(model(data.batch(t, ends, lens, ages)))
    return torch.cat(out) if out else torch.zeros((0, model.spec.dim), device=data.device)


@dataclass(frozen=True)
class Validation:
    """Early-stopping data: users (m,) int64, their validation item rows (m,) int64 and
    every user's training items as CSR (seen_indptr (n_users+1,), seen_items)."""

    users: np.ndarray
    targets: np.ndarray
    seen_indptr: np.ndarray
    seen_items: np.ndarray

    @classmethod
    def sample(cls, split: Split, max_users: int, rng: np.random.Generator) -> Validation:
        users = np.flatnonzero(split.valid_items != NO_ITEM)
        if len(users) > max_users:
            users = np.sort(rng.choice(users, max_users, replace=False))
        seen_indptr, seen_items = split.seen()
        return cls(users, split.valid_items[users].astype(np.int64), seen_indptr, seen_items)


SCORE_BUDGET = 1 << 25
"""Most logits held at once while validating (floats): bounds memory on huge catalogs."""


def hit_count(
    model: CandidateModel, data: DeviceData, hist: Histories, validation: Validation, k: int
) -> int:
    """How many validation items rank in the top k over all items, training items excluded."""
    users, targets = validation.users, validation.targets
    seen_indptr, seen_items = validation.seen_indptr, validation.seen_items
    batch = max(1, min(512, SCORE_BUDGET // model.spec.n_items))
    hits = 0
    for start in range(0, len(users), batch):
        rows = users[start : start + batch]
        u = user_vectors(model, data, hist, rows)
        with torch.no_grad():
            scores = model.logits(u)
        lengths = seen_indptr[rows + 1] - seen_indptr[rows]
        flat = np.concatenate([seen_items[seen_indptr[r] : seen_indptr[r + 1]] for r in rows])
        scores[
            torch.as_tensor(np.repeat(np.arange(len(rows)), lengths), device=data.device),
            torch.as_tensor(flat, dtype=torch.int64, device=data.device),
        ] = float("-inf")
        target = torch.as_tensor(targets[start : start + batch], device=data.device)
        target_score = scores.gather(1, target.unsqueeze(1))
        # ties go to the lower item row, as in trainer.evaluate.ranks
        rows_before = torch.arange(scores.shape[1], device=data.device) < target.unsqueeze(1)
        rank = ((scores > target_score) | ((scores == target_score) & rows_before)).sum(dim=1)
        hits += int(((rank < k) & torch.isfinite(target_score.squeeze(1))).sum())
    return hits


def popularity_hit_rate(item_counts: np.ndarray, validation: Validation, k: int) -> float:
    """HR@k of the validation items when every user gets the most popular items (training
    interactions per item, ``item_counts`` (n_items,)), training items excluded and ties
    to the lower item row: :func:`hit_count`'s rules with popularity as the score."""
    order = np.lexsort((np.arange(len(item_counts)), -item_counts))  # most popular first
    position = np.empty(len(item_counts), dtype=np.int64)
    position[order] = np.arange(len(item_counts))
    seen_indptr, seen_items = validation.seen_indptr, validation.seen_items
    hits = 0
    for user, target in zip(validation.users.tolist(), validation.targets.tolist(), strict=True):
        seen = seen_items[seen_indptr[user] : seen_indptr[user + 1]]
        if (seen == target).any():  # excluded, as in hit_count (score -inf)
            continue
        ahead = position[target] - int((position[np.unique(seen)] < position[target]).sum())
        hits += int(ahead < k)
    return hits / max(len(validation.users), 1)


def _sparse_params(model: CandidateModel) -> list[Tensor]:
    """The item tables that emit sparse gradients in sampled-softmax training."""
    return [model.item_embedding.weight, model.output.weight, model.output_bias.weight]


def _optimizers(model: CandidateModel, config: TrainConfig, sparse: bool) -> list[Any]:
    if not sparse:
        return [
            torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        ]
    sparse_params = _sparse_params(model)
    sparse_ids = {id(p) for p in sparse_params}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    return [
        torch.optim.SparseAdam(sparse_params, lr=config.lr),
        torch.optim.Adam(dense, lr=config.lr, weight_decay=config.weight_decay),
    ]


def bf16_autocast(setting: str, device: torch.device) -> bool:
    """Whether the training forward pass and loss run under bf16 autocast on ``device``,
    for the config's ``bf16`` setting: "auto" only on a GPU with native bf16 (emulated
    bf16 on older GPUs is slower than float32), "on" on any device (on the CPU it is the
    proxy of the GPU path that tests run), "off" never. Weights, gradients, optimizer
    state, validation and export stay float32 either way."""
    if setting == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return setting == "on"


def sampling_distribution(item_counts: np.ndarray, alpha: float) -> np.ndarray:
    """Negative sampling probabilities q ~ (count + 1)^alpha: (n_items,) float64."""
    weights: np.ndarray = (item_counts.astype(np.float64) + 1.0) ** alpha
    q: np.ndarray = weights / weights.sum()
    return q


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out (not what it computes, which is the :class:`TrainConfig`):
    the ranks, and the checkpoint file written every epoch and every ``checkpoint_steps``
    steps (None: no checkpoints); ``resume`` continues from it when it exists."""

    ranks: Ranks = SINGLE
    checkpoint: Path | None = None
    checkpoint_steps: int | None = None
    resume: bool = False


def train(
    dataset: Dataset, config: TrainConfig, *, progress: bool = True, run: RunOptions = RunOptions()
) -> Trained:
    """Fit the model; the returned model holds the weights of the best validation epoch.

    Under ``torchrun`` (``run.ranks``) every rank calls this with the same arguments and
    returns the same model (:mod:`recall.trainer.distributed`).
    """
    device = device_for(config.device, run.ranks)
    started = time.perf_counter()
    fingerprint = ckpt.data_fingerprint(dataset) if run.checkpoint else {}
    resumed = _resumable(run, config, fingerprint)
    prepared = prepare(dataset, config)
    loss_kind = config.resolved_loss(dataset.n_items)
    sparse = loss_kind == "sampled"
    logger.info(
        "%d users, %d items, %d examples; %s softmax",
        dataset.n_users,
        dataset.n_items,
        len(prepared.examples),
        loss_kind,
    )
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        model = CandidateModel(
            prepared.spec, prepared.item_genres, sparse=sparse, dropout=config.dropout
        ).to(device)
        if run.ranks.rank != 0:  # the same model everywhere; then each rank's own dropout
            torch.manual_seed(rank_seed(config.seed, run.ranks))
        data = DeviceData(prepared, device)
        fit = _Fit(model, data, prepared, config, loss_kind, generator, run, fingerprint)
        logger.info("training on %s, bf16 autocast %s", device, "on" if fit.bf16 else "off")
        if resumed is not None:
            fit.restore(resumed)
        metrics = fit.run(progress)
    metrics["seconds_total"] = round(time.perf_counter() - started, 3)
    metrics["loss"] = loss_kind
    metrics["examples"] = len(prepared.examples)
    metrics["ranks"] = run.ranks.world
    metrics["device"] = str(device)
    metrics["bf16"] = fit.bf16
    return Trained(model=model, prepared=prepared, metrics=metrics)


def _resumable(
    run: RunOptions, config: TrainConfig, fingerprint: dict[str, Any]
) -> dict[str, Any] | None:
    """The checkpoint to continue from (checked against this run), or None."""
    if run.checkpoint is None or not run.resume:
        return None
    if not run.checkpoint.exists():
        logger.warning("--resume: no checkpoint at %s, starting from the beginning", run.checkpoint)
        return None
    state = ckpt.load(run.checkpoint)
    ckpt.check_same_run(run.checkpoint, state, config, fingerprint, run.ranks.world)
    logger.info(
        "resuming from %s: epoch %d, step %d",
        run.checkpoint,
        state["next_epoch"],
        state["next_step"],
    )
    return state


@dataclass
class FitState:
    """Where a fit stands; saved in checkpoints. ``loss_sum`` / ``examples`` cover the
    current epoch so far, over all ranks."""

    next_epoch: int = 1
    next_step: int = 0
    stopped: bool = False  # early stopping ended the run
    best_valid_hr: float = -1.0
    best_epoch: int = 0
    epochs_without_gain: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0
    examples: int = 0


class _Fit:
    """The epochs of one run: steps, validation, early stopping and checkpoints."""

    def __init__(
        self,
        model: CandidateModel,
        data: DeviceData,
        prepared: Prepared,
        config: TrainConfig,
        loss_kind: str,
        generator: torch.Generator,
        run: RunOptions,
        fingerprint: dict[str, Any],
    ) -> None:
        self.model, self.data, self.prepared, self.config = model, data, prepared, config
        self.loss_kind, self.generator, self.options = loss_kind, generator, run
        self.fingerprint = fingerprint
        self.ranks = run.ranks
        self.optimizers = _optimizers(model, config, loss_kind == "sampled")
        sparse_ids = {id(p) for p in _sparse_params(model)} if loss_kind == "sampled" else set()
        self.sparse = [p for p in model.parameters() if id(p) in sparse_ids]
        self.dense = [p for p in model.parameters() if id(p) not in sparse_ids]
        n = len(prepared.examples)
        self.n = n
        self.steps = math.ceil(n / config.batch_size)
        if config.max_steps_per_epoch is not None:
            self.steps = min(self.steps, config.max_steps_per_epoch)
        q = torch.as_tensor(
            sampling_distribution(prepared.item_counts, config.sampling_alpha),
            dtype=torch.float32,
            device=data.device,
        )
        self.cdf = torch.cumsum(q.double(), 0).float()
        self.log_q = torch.log(q * config.negatives)
        self.validation = Validation.sample(
            prepared.split, config.validation_users, np.random.default_rng(config.seed + 1)
        )
        owners = shard_owners(prepared.examples.users, prepared.split.n_users, self.ranks.world)
        self.example_owner = torch.as_tensor(owners[prepared.examples.users], device=data.device)
        self.bf16 = bf16_autocast(config.bf16, data.device)
        self.state = FitState()
        self.best_model: dict[str, Tensor] | None = None
        self.epoch_start: Tensor | None = None  # generator state before this epoch's shuffle

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue where the run that wrote checkpoint ``saved`` stopped."""
        self.model.load_state_dict(saved["model"])
        for opt, opt_state in zip(self.optimizers, saved["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.best_model = saved["best_model"]
        self.state = FitState(**saved["fit"])
        self.generator.set_state(saved["generator"]["now"])
        self.epoch_start = saved["generator"]["epoch_start"]
        own = saved["rank_rng"][self.ranks.rank]
        torch.set_rng_state(own["torch"])
        if self.data.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.data.device)

    def run(self, progress: bool) -> dict[str, Any]:
        config, state = self.config, self.state
        while not state.stopped and state.next_epoch <= config.epochs:
            self._epoch(state.next_epoch, progress)
        if self.best_model is not None:
            self.model.load_state_dict(self.best_model)
        self.model.eval()
        k = config.validation_k
        return {
            "best_epoch": state.best_epoch,
            f"valid_hr@{k}": round(state.best_valid_hr, 5),
            # the same users, items excluded and k, ranked by training popularity
            "popularity": {
                f"valid_hr@{k}": round(
                    popularity_hit_rate(self.prepared.item_counts, self.validation, k), 5
                )
            },
            "validation_users": len(self.validation.users),
            "examples_per_second": round(
                float(np.mean([h["examples_per_second"] for h in state.history])), 1
            ),
            "epochs": state.history,
        }

    def _order(self) -> Tensor:
        """This epoch's permutation of all examples (the same on every rank); on resume
        mid-epoch, replayed from the generator state the epoch started with."""
        generator = self.generator
        if self.state.next_step > 0 and self.epoch_start is not None:
            now = generator.get_state()
            generator.set_state(self.epoch_start)
            order = torch.randperm(self.n, generator=generator, device=self.data.device)
            generator.set_state(now)
            return order
        self.epoch_start = generator.get_state()
        return torch.randperm(self.n, generator=generator, device=self.data.device)

    def _epoch(self, epoch: int, progress: bool) -> None:
        config, state = self.config, self.state
        self.model.train()
        t0 = time.perf_counter()
        order = self._order()
        first = state.next_step
        examples_before = state.examples
        bar = tqdm(
            range(first, self.steps),
            desc=f"epoch {epoch}",
            unit="step",
            initial=first,
            total=self.steps,
            mininterval=1.0,
            disable=None if progress and self.ranks.is_writer else True,  # None: a terminal
        )
        # Summed on the device (float64, the same sum as in Python floats): reading a loss
        # back every step would make the host wait for the GPU at every step.
        loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=self.data.device)
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch_loss = self._step(idx)
            loss_sum += batch_loss.double() * len(idx)
            state.examples += len(idx)
            state.next_step = step + 1
            if step % 20 == 0 and not bar.disable:
                rate = (state.examples - examples_before) / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{float(batch_loss):.3f}", ex_s=f"{rate:,.0f}")
            every = self.options.checkpoint_steps
            if (
                every
                and ((epoch - 1) * self.steps + step + 1) % every == 0
                and step + 1 < self.steps
            ):
                state.loss_sum = float(loss_sum)
                self._checkpoint()
        bar.close()
        state.loss_sum = float(loss_sum)  # waits for the epoch's last step: then the clock
        train_seconds = time.perf_counter() - t0
        valid_hr = self._valid_hr()
        record = {
            "epoch": epoch,
            "train_loss": round(state.loss_sum / max(state.examples, 1), 5),
            "valid_hr": round(valid_hr, 5),
            "examples_per_second": round((state.examples - examples_before) / train_seconds, 1),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        state.history.append(record)
        logger.info(
            "epoch %d: loss %.4f, valid HR@%d %.4f, %.0f examples/s, %.1f s",
            epoch,
            record["train_loss"],
            config.validation_k,
            valid_hr,
            record["examples_per_second"],
            record["seconds"],
        )
        if valid_hr > state.best_valid_hr:
            state.best_valid_hr, state.best_epoch = valid_hr, epoch
            self.best_model = copy.deepcopy(self.model.state_dict())
            state.epochs_without_gain = 0
        else:
            state.epochs_without_gain += 1
            if state.epochs_without_gain >= config.patience:
                logger.info("early stop after epoch %d (best %d)", epoch, state.best_epoch)
                state.stopped = True
        state.next_epoch, state.next_step = epoch + 1, 0
        state.loss_sum, state.examples = 0.0, 0
        self._checkpoint()

    def _step(self, idx: Tensor) -> Tensor:
        """One optimizer step on the global batch ``idx`` (example positions); this rank
        computes the examples it owns. The batch's mean loss over all ranks, a float32
        scalar on the device (not read back: no wait for the GPU)."""
        config, data, model, ranks = self.config, self.data, self.model, self.ranks
        n_batch = len(idx)
        if ranks.distributed:
            idx = idx[self.example_owner[idx] == ranks.rank]
        if self.loss_kind == "sampled":
            # Every rank draws every rank's negatives: the generator stays the same on all.
            draws = torch.rand(
                config.negatives * ranks.world, generator=self.generator, device=data.device
            )
            own = draws[ranks.rank * config.negatives : (ranks.rank + 1) * config.negatives]
            negatives = torch.searchsorted(self.cdf, own).clamp(max=len(self.cdf) - 1)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=data.device)
        if len(idx):
            with torch.autocast(data.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                batch = data.batch(
                    data.users[idx], data.ends[idx], data.hist_lens[idx], data.ages[idx]
                )
                u = model(batch)
                labels = data.labels[idx]
                if self.loss_kind == "full":
                    loss = full_softmax_loss(model, u, labels)
                else:
                    loss = sampled_softmax_loss(model, u, labels, negatives, self.log_q)
            if len(idx) != n_batch:  # this rank's share of the batch's mean loss
                loss = loss * (len(idx) / n_batch)
            loss.backward()  # type: ignore[no-untyped-call]
        batch_loss = loss.detach().float()
        if ranks.distributed:
            batch_loss = sum_gradients(self.dense, self.sparse, batch_loss.reshape(1))[0]
        for opt in self.optimizers:
            opt.step()
        return batch_loss

    def _valid_hr(self) -> float:
        """HR@k on the validation users, each rank ranking every ``world``-th of them."""
        validation, ranks = self.validation, self.ranks
        own = dataclasses.replace(
            validation,
            users=validation.users[ranks.rank :: ranks.world],
            targets=validation.targets[ranks.rank :: ranks.world],
        )
        hits = hit_count(
            self.model, self.data, self.prepared.histories, own, self.config.validation_k
        )
        if ranks.distributed:
            hits = int(all_sum(torch.tensor([hits], device=self.data.device)).item())
        return hits / max(len(validation.users), 1)

    def _checkpoint(self) -> None:
        """Save where the run stands (rank 0 writes; every rank sends its RNG states)."""
        path = self.options.checkpoint
        if path is None:
            return
        device = self.data.device
        torch_states = gather_states(torch.get_rng_state(), device)
        cuda_states = (
            gather_states(torch.cuda.get_rng_state(device), device)
            if device.type == "cuda"
            else [None] * self.ranks.world
        )
        if not self.ranks.is_writer:
            return
        ckpt.save(
            path,
            {
                "config": self.config.model_dump(mode="json"),
                "data": self.fingerprint,
                "world_size": self.ranks.world,
                "next_epoch": self.state.next_epoch,
                "next_step": self.state.next_step,
                "model": self.model.state_dict(),
                "optimizers": [opt.state_dict() for opt in self.optimizers],
                "best_model": self.best_model,
                "fit": dataclasses.asdict(self.state),
                "generator": {"now": self.generator.get_state(), "epoch_start": self.epoch_start},
                "rank_rng": [
                    {"torch": t, "cuda": c} for t, c in zip(torch_states, cuda_states, strict=True)
                ],
            },
        )
