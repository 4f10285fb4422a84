"""Training: prepare data -> create model -> train epochs with early stopping -> finalize."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from recall.index.tower import TowerSpec
from recall.trainer.config import TrainConfig
from recall.trainer.data import Dataset
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


def hit_rate(
    model: CandidateModel, data: DeviceData, hist: Histories, validation: Validation, k: int
) -> float:
    """HR@k of the validation items over all items, training items excluded."""
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
    return hits / max(len(users), 1)


def popularity_hit_rate(item_counts: np.ndarray, validation: Validation, k: int) -> float:
    """HR@k of the validation items when every user gets the most popular items (training
    interactions per item, ``item_counts`` (n_items,)), training items excluded and ties
    to the lower item row: :func:`hit_rate`'s rules with popularity as the score."""
    order = np.lexsort((np.arange(len(item_counts)), -item_counts))  # most popular first
    position = np.empty(len(item_counts), dtype=np.int64)
    position[order] = np.arange(len(item_counts))
    seen_indptr, seen_items = validation.seen_indptr, validation.seen_items
    hits = 0
    for user, target in zip(validation.users.tolist(), validation.targets.tolist(), strict=True):
        seen = seen_items[seen_indptr[user] : seen_indptr[user + 1]]
        if (seen == target).any():  # excluded, as in hit_rate (score -inf)
            continue
        ahead = position[target] - int((position[np.unique(seen)] < position[target]).sum())
        hits += int(ahead < k)
    return hits / max(len(validation.users), 1)


def _optimizers(model: CandidateModel, config: TrainConfig, sparse: bool) -> list[Any]:
    if not sparse:
        return [
            torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        ]
    sparse_params = [model.item_embedding.weight, model.output.weight, model.output_bias.weight]
    sparse_ids = {id(p) for p in sparse_params}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    return [
        torch.optim.SparseAdam(sparse_params, lr=config.lr),
        torch.optim.Adam(dense, lr=config.lr, weight_decay=config.weight_decay),
    ]


def sampling_distribution(item_counts: np.ndarray, alpha: float) -> np.ndarray:
    """Negative sampling probabilities q ~ (count + 1)^alpha: (n_items,) float64."""
    weights: np.ndarray = (item_counts.astype(np.float64) + 1.0) ** alpha
    q: np.ndarray = weights / weights.sum()
    return q


def train(dataset: Dataset, config: TrainConfig, *, progress: bool = True) -> Trained:
    """Fit the model; the returned model holds the weights of the best validation epoch."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    started = time.perf_counter()
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        generator = torch.Generator(device=device).manual_seed(config.seed)
        model = CandidateModel(
            prepared.spec, prepared.item_genres, sparse=sparse, dropout=config.dropout
        ).to(device)
        data = DeviceData(prepared, device)
        metrics = _fit(model, data, prepared, config, loss_kind, generator, progress)
    metrics["seconds_total"] = round(time.perf_counter() - started, 3)
    metrics["loss"] = loss_kind
    metrics["examples"] = len(prepared.examples)
    return Trained(model=model, prepared=prepared, metrics=metrics)


def _fit(
    model: CandidateModel,
    data: DeviceData,
    prepared: Prepared,
    config: TrainConfig,
    loss_kind: str,
    generator: torch.Generator,
    progress: bool,
) -> dict[str, Any]:
    split = prepared.split
    optimizers = _optimizers(model, config, loss_kind == "sampled")
    n = len(prepared.examples)
    steps = math.ceil(n / config.batch_size)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)

    q = torch.as_tensor(
        sampling_distribution(prepared.item_counts, config.sampling_alpha),
        dtype=torch.float32,
        device=data.device,
    )
    cdf = torch.cumsum(q.double(), 0).float()
    log_q = torch.log(q * config.negatives)

    validation = Validation.sample(
        split, config.validation_users, np.random.default_rng(config.seed + 1)
    )

    best: dict[str, Any] = {"valid_hr": -1.0, "epoch": 0}
    best_state: dict[str, Tensor] | None = None
    history = []
    epochs_without_gain = 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=generator, device=data.device)
        total_loss = 0.0
        seen_examples = 0
        bar = tqdm(
            range(steps),
            desc=f"epoch {epoch}",
            unit="step",
            mininterval=1.0,
            disable=None if progress else True,  # None: only on a terminal
        )
        for step in bar:
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = data.batch(data.users[idx], data.ends[idx], data.hist_lens[idx], data.ages[idx])
            u = model(batch)
            labels = data.labels[idx]
            if loss_kind == "full":
                loss = full_softmax_loss(model, u, labels)
            else:
                draws = torch.rand(config.negatives, generator=generator, device=data.device)
                negatives = torch.searchsorted(cdf, draws).clamp(max=len(q) - 1)
                loss = sampled_softmax_loss(model, u, labels, negatives, log_q)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            for opt in optimizers:
                opt.step()
            batch_loss = float(loss.detach())
            total_loss += batch_loss * len(idx)
            seen_examples += len(idx)
            if step % 20 == 0:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{batch_loss:.3f}", ex_s=f"{seen_examples / elapsed:,.0f}")
        bar.close()
        train_seconds = time.perf_counter() - t0
        valid_hr = hit_rate(model, data, prepared.histories, validation, config.validation_k)
        record = {
            "epoch": epoch,
            "train_loss": round(total_loss / max(seen_examples, 1), 5),
            "valid_hr": round(valid_hr, 5),
            "examples_per_second": round(seen_examples / train_seconds, 1),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        history.append(record)
        logger.info(
            "epoch %d: loss %.4f, valid HR@%d %.4f, %.0f examples/s, %.1f s",
            epoch,
            record["train_loss"],
            config.validation_k,
            valid_hr,
            record["examples_per_second"],
            record["seconds"],
        )
        if valid_hr > best["valid_hr"]:
            best = {"valid_hr": valid_hr, "epoch": epoch}
            best_state = copy.deepcopy(model.state_dict())
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
            if epochs_without_gain >= config.patience:
                logger.info("early stop after epoch %d (best %d)", epoch, best["epoch"])
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {
        "best_epoch": best["epoch"],
        f"valid_hr@{config.validation_k}": round(best["valid_hr"], 5),
        # the same users, items excluded and k, ranked by training popularity
        "popularity": {
            f"valid_hr@{config.validation_k}": round(
                popularity_hit_rate(prepared.item_counts, validation, config.validation_k), 5
            )
        },
        "validation_users": len(validation.users),
        "examples_per_second": round(
            float(np.mean([h["examples_per_second"] for h in history])), 1
        ),
        "epochs": history,
    }
