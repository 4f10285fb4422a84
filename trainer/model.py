"""The next-watch softmax model of YouTube's candidate generation (Covington et al. 2016).

User side: the tower of :mod:`recall.index.tower` (same inputs, same order; with
``spec.tower == "attention"`` the window also goes through :class:`AttentionReadout`). Output
side: a
separate softmax weight matrix ``W`` (n_items, dim) and bias ``b`` (n_items,), not tied to
the input item embeddings. The model's logit for (user, item) is ``u . W_i + b_i``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from recall.index.attention import PREFIX as ATTENTION_PREFIX
from recall.index.tower import SPEC_KEY, TowerSpec
from recall.trainer.attention import AttentionReadout


class UserBatch:
    """Tower inputs for B users, already on the model's device.

    history: (B, L) int64 item rows, masked slots hold 0; mask: (B, L) bool;
    categorical: (B, n_cat) int64; numeric: (B, n_num) float32; age: (B,) float32.
    """

    def __init__(
        self, history: Tensor, mask: Tensor, categorical: Tensor, numeric: Tensor, age: Tensor
    ) -> None:
        self.history = history
        self.mask = mask
        self.categorical = categorical
        self.numeric = numeric
        self.age = age


class CandidateModel(nn.Module):
    """User tower + output softmax layer."""

    item_genres: Tensor  # buffer (n_items, max_genres_per_item) int64

    def __init__(
        self,
        spec: TowerSpec,
        item_genres: np.ndarray,
        *,
        sparse: bool,
        dropout: float = 0.0,
    ) -> None:
        """``item_genres``: (n_items, max_genres_per_item) genre rows, 0 = padding.

        ``sparse`` makes the item tables emit sparse gradients (for SparseAdam on large
        catalogs, where a dense update of every row per step would dominate).
        """
        super().__init__()
        self.spec = spec
        self.item_embedding = nn.Embedding(spec.n_items, spec.item_dim, sparse=sparse)
        nn.init.normal_(self.item_embedding.weight, std=0.05)
        self.genre_embedding: nn.Embedding | None = None
        if spec.has_genres:
            self.genre_embedding = nn.Embedding(
                len(spec.genre_vocab) + 1, spec.genre_dim, padding_idx=0
            )
            nn.init.normal_(self.genre_embedding.weight, std=0.05)
            with torch.no_grad():
                self.genre_embedding.weight[0].zero_()
        self.attention: AttentionReadout | None = None
        if spec.tower == "attention":
            self.attention = AttentionReadout(
                spec.history_length, spec.item_dim, spec.attention_heads
            )
        self.register_buffer("item_genres", torch.as_tensor(item_genres, dtype=torch.int64))
        tables = [nn.Embedding(len(c.vocabulary) + 1, c.dim) for c in spec.categorical]
        for table in tables:
            nn.init.normal_(table.weight, std=0.05)
        self.categorical = nn.ModuleList(tables)
        layers: list[nn.Module] = []
        width = spec.input_width
        for out in spec.hidden:
            layers += [nn.Linear(width, out), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = out
        self.tower = nn.Sequential(*layers)
        self.output = nn.Embedding(spec.n_items, spec.dim, sparse=sparse)
        nn.init.normal_(self.output.weight, std=0.05)
        self.output_bias = nn.Embedding(spec.n_items, 1, sparse=sparse)
        nn.init.zeros_(self.output_bias.weight)

    def forward(self, batch: UserBatch) -> Tensor:
        """User vectors ``u``: (B, dim)."""
        weights = batch.mask.unsqueeze(-1).float()
        count = weights.sum(dim=1).clamp(min=1.0)
        tokens = self.item_embedding(batch.history)  # (B, L, item_dim)
        parts = [(tokens * weights).sum(dim=1) / count]
        if self.attention is not None:
            parts.append(self.attention(tokens, batch.mask))
        if self.genre_embedding is not None:
            tokens = self.item_genres[batch.history]  # (B, L, G)
            token_weights = ((tokens > 0) & batch.mask.unsqueeze(-1)).float().unsqueeze(-1)
            token_count = token_weights.sum(dim=(1, 2)).clamp(min=1.0)
            bag = (self.genre_embedding(tokens) * token_weights).sum(dim=(1, 2))
            parts.append(bag / token_count)
        parts.extend(table(batch.categorical[:, j]) for j, table in enumerate(self.categorical))
        parts.append(batch.numeric)
        age = batch.age
        parts.append(torch.stack([age, age * age, age.sqrt()], dim=1))
        h = torch.cat(parts, dim=1)
        return self.tower(h)  # type: ignore[no-any-return]

    def logits(self, u: Tensor, items: Tensor | None = None) -> Tensor:
        """``u . W_i + b_i`` for all items (B, n_items), or for ``items`` (B,) -> (B,)."""
        if items is None:
            return u @ self.output.weight.T + self.output_bias.weight.T
        picked: Tensor = (u * self.output(items)).sum(dim=1) + self.output_bias(items).squeeze(1)
        return picked

    def folded_items(self) -> np.ndarray:
        """Item vectors ``[W_i, b_i]``: (n_items, dim + 1) float32."""
        with torch.no_grad():
            w = torch.cat([self.output.weight, self.output_bias.weight], dim=1)
        return np.ascontiguousarray(w.detach().cpu().numpy(), dtype=np.float32)

    def tower_arrays(self) -> dict[str, np.ndarray]:
        """The contents of ``user_tower.npz``: weights named as :class:`UserTower` reads them."""

        def arr(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().cpu().numpy())

        arrays = {
            SPEC_KEY: np.asarray(self.spec.model_dump_json()),
            "item_embedding": arr(self.item_embedding.weight),
            "item_genres": arr(self.item_genres).astype(np.int32),
        }
        if self.attention is not None:
            for name, value in self.attention.named_parameters():
                arrays[ATTENTION_PREFIX + name] = arr(value)
        if self.genre_embedding is not None:
            arrays["genre_embedding"] = arr(self.genre_embedding.weight)
        for j, table in enumerate(self.categorical):
            arrays[f"categorical.{j}"] = arr(table.weight)  # type: ignore[arg-type]
        linears = [m for m in self.tower if isinstance(m, nn.Linear)]
        for j, linear in enumerate(linears):
            arrays[f"layers.{j}.weight"] = arr(linear.weight)
            arrays[f"layers.{j}.bias"] = arr(linear.bias)
        return arrays


def sampled_softmax_loss(
    model: CandidateModel,
    u: Tensor,
    labels: Tensor,
    negatives: Tensor,
    log_q: Tensor,
) -> Tensor:
    """Sampled softmax with log-Q correction and accidental hits removed.

    u: (B, dim); labels: (B,) item rows; negatives: (S,) item rows drawn with replacement
    from the sampling distribution q shared by the batch; log_q: (n_items,) log of the
    expected count of each item among the S draws (``log(S * q_i)``). Every logit,
    positive and negative, is corrected by subtracting the log expected count, so the
    sampled loss estimates the full softmax without favouring popular items.

    Under bf16 autocast the (B, S) product runs in bf16; the logits, the correction and
    the cross entropy are float32.
    """
    pos = model.logits(u, labels).float() - log_q[labels]
    neg_w = model.output(negatives)  # (S, dim)
    neg_b = model.output_bias(negatives).squeeze(1)
    neg = (u @ neg_w.T).float() + neg_b - log_q[negatives]
    neg = neg.masked_fill(negatives.unsqueeze(0) == labels.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1)
    target = torch.zeros(len(labels), dtype=torch.int64, device=u.device)
    return nn.functional.cross_entropy(logits, target)


def full_softmax_loss(model: CandidateModel, u: Tensor, labels: Tensor) -> Tensor:
    """Cross entropy over the whole catalog: u (B, dim), labels (B,). Under bf16 autocast
    the (B, n_items) product runs in bf16, the cross entropy in float32."""
    return nn.functional.cross_entropy(model.logits(u).float(), labels)
