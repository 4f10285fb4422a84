"""The attention readout of the ``attention`` user tower, in numpy (float32).

One self-attention block over the window (SASRec's, post-norm), read at the most recent
position. Shapes: B users, L = ``history_length`` slots (right-aligned, so slot ``L - 1`` is
the most recent item), d = ``item_dim``, H heads of width d / H.

- tokens ``x_t = E[item_t] + P[t]`` (item embedding plus a learned embedding of the slot,
  which is the item's recency rank), padded slots masked out;
- the query is the most recent token's, ``q = W_q x_(L-1) + b_q``; head ``h`` weighs the
  tokens by ``softmax_t(q_h . (W_k,h x_t) / sqrt(d / H))`` and returns ``W_v,h`` applied to
  the weighted token mean, plus ``b_v,h``; the heads are joined and mixed by ``W_o``;
- ``y = LN1(x_(L-1) + attention)``, ``z = LN2(y + W_2 relu(W_1 y + b_1) + b_2)``.

Only the last position's output is pooled, so only its query is computed, and ``q_h . W_k,h
x_t`` is evaluated as ``(W_k,h^T q_h) . x_t`` (a key bias would add the same number to every
score of a head, so there is none). An empty history reads as 0. The trainer's
:class:`recall.trainer.attention.AttentionReadout` computes the same function; the weights
are stored in ``user_tower.npz`` under its parameter names, prefixed ``attention.``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

PREFIX = "attention."
LAYER_NORM_EPS = 1e-5
FFN_EXPANSION = 2


def weight_shapes(length: int, dim: int) -> dict[str, tuple[int, ...]]:
    """Every stored array of the readout (without :data:`PREFIX`) and its shape."""
    hidden = FFN_EXPANSION * dim
    return {
        "position.weight": (length, dim),
        "query.weight": (dim, dim),
        "query.bias": (dim,),
        "key.weight": (dim, dim),
        "value.weight": (dim, dim),
        "value.bias": (dim,),
        "output.weight": (dim, dim),
        "output.bias": (dim,),
        "norm1.weight": (dim,),
        "norm1.bias": (dim,),
        "ffn_in.weight": (hidden, dim),
        "ffn_in.bias": (hidden,),
        "ffn_out.weight": (dim, hidden),
        "ffn_out.bias": (dim,),
        "norm2.weight": (dim,),
        "norm2.bias": (dim,),
    }


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, eps 1e-5, as torch), float32."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    out: np.ndarray = centred / np.sqrt(var + np.float32(LAYER_NORM_EPS)) * weight + bias
    return out


class AttentionReadout:
    """The block's output at the most recent slot: (B, L) item rows -> (B, d) float32."""

    def __init__(
        self, weights: Mapping[str, np.ndarray], *, length: int, dim: int, heads: int
    ) -> None:
        w: dict[str, np.ndarray] = {}
        for name, shape in weight_shapes(length, dim).items():
            try:
                array = np.asarray(weights[PREFIX + name], dtype=np.float32)
            except KeyError:
                raise ValueError(f"user tower weights lack {PREFIX + name!r}") from None
            if array.shape != shape:
                raise ValueError(
                    f"user tower weight {PREFIX + name!r} has shape {array.shape}, expected {shape}"
                )
            if not np.isfinite(array).all():
                raise ValueError(f"user tower weight {PREFIX + name!r} holds NaN/Inf")
            w[name] = array
        self.heads, self.head_dim = heads, dim // heads
        self.position = w["position.weight"]
        self.query_t = np.ascontiguousarray(w["query.weight"].T)
        self.query_bias = w["query.bias"]
        self.key = w["key.weight"].reshape(heads, self.head_dim, dim)  # (H, d/H, d)
        self.value_t = np.ascontiguousarray(
            w["value.weight"].reshape(heads, self.head_dim, dim).transpose(0, 2, 1)
        )  # (H, d, d/H)
        self.value_bias = w["value.bias"]
        self.output_t = np.ascontiguousarray(w["output.weight"].T)
        self.output_bias = w["output.bias"]
        self.norm1 = (w["norm1.weight"], w["norm1.bias"])
        self.ffn_in_t = np.ascontiguousarray(w["ffn_in.weight"].T)
        self.ffn_in_bias = w["ffn_in.bias"]
        self.ffn_out_t = np.ascontiguousarray(w["ffn_out.weight"].T)
        self.ffn_out_bias = w["ffn_out.bias"]
        self.norm2 = (w["norm2.weight"], w["norm2.bias"])

    def norm_bound(self) -> float:
        """An upper bound (float64) of the readout's norm for any input: LayerNorm output
        ``gamma * z + beta`` with ``|z| <= sqrt(d)`` (0 for an empty history)."""
        gamma, beta = (a.astype(np.float64) for a in self.norm2)
        return math.sqrt(len(gamma)) * float(np.abs(gamma).max()) + float(np.linalg.norm(beta))

    def __call__(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """tokens: (B, L, d) item embeddings of the window; mask: (B, L) bool -> (B, d)."""
        b, _, dim = tokens.shape
        x = tokens + self.position  # (B, L, d)
        last = x[:, -1]  # (B, d)
        q = (last @ self.query_t + self.query_bias).reshape(b, self.heads, 1, self.head_dim)
        r = q @ self.key  # (B, H, 1, d): W_k,h^T q_h
        scores = (r @ x.transpose(0, 2, 1)[:, None]) * np.float32(1 / math.sqrt(self.head_dim))
        valid = mask[:, None, None, :]  # (B, 1, 1, L)
        scores = np.where(valid, scores, np.float32(-np.inf))
        present = mask.any(axis=1)
        scores[~present] = 0.0  # an empty window: finite, zeroed below
        scores -= scores.max(axis=-1, keepdims=True)
        a = np.exp(scores)
        a /= a.sum(axis=-1, keepdims=True)  # (B, H, 1, L)
        pooled = a @ x[:, None]  # (B, H, 1, d)
        heads = (pooled @ self.value_t).reshape(b, dim) + self.value_bias
        y = layer_norm(last + heads @ self.output_t + self.output_bias, *self.norm1)
        hidden = np.maximum(y @ self.ffn_in_t + self.ffn_in_bias, 0.0)
        z = layer_norm(y + hidden @ self.ffn_out_t + self.ffn_out_bias, *self.norm2)
        z[~present] = 0.0
        return z.astype(np.float32, copy=False)
