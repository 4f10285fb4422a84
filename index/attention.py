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
_EPS = np.float32(LAYER_NORM_EPS)
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


def layer_norm(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, average: np.ndarray
) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, eps 1e-5, as torch), float32.

    ``average`` is the (d, 1) column of ``1/d``: a mean as a matrix product is the same
    float32 result within rounding, and a few microseconds less per call for one user than
    ``np.mean`` or a reduction (the cost here is the number of numpy calls)."""
    centred = x - x @ average
    out: np.ndarray = centred / np.sqrt(np.square(centred) @ average + _EPS) * weight + bias
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
        # Folded at load (float64, then float32), so that a call is a few matmuls:
        # scores_h = x_t . r_h with r = last @ query_key + query_key_bias, (B, H * d);
        # attention = pooled (B, H * d) @ value_output + value_output_bias.
        h, dh = heads, dim // heads
        wq, bq = w["query.weight"].astype(np.float64), w["query.bias"].astype(np.float64)
        key = w["key.weight"].astype(np.float64).reshape(h, dh, dim)
        value = w["value.weight"].astype(np.float64).reshape(h, dh, dim)
        wo = w["output.weight"].astype(np.float64)
        key_blocks = np.zeros((dim, h * dim))  # q_h -> W_k,h^T q_h, scaled by 1/sqrt(d/H)
        value_blocks = np.zeros((h * dim, dim))  # pooled_h -> W_v,h pooled_h, head h's slice
        for j in range(h):
            key_blocks[j * dh : (j + 1) * dh, j * dim : (j + 1) * dim] = key[j] / math.sqrt(dh)
            value_blocks[j * dim : (j + 1) * dim, j * dh : (j + 1) * dh] = value[j].T
        self.heads = heads
        self.position = w["position.weight"]
        self.query_key = (wq.T @ key_blocks).astype(np.float32)
        self.query_key_bias = (bq @ key_blocks).astype(np.float32)
        self.value_output = (value_blocks @ wo.T).astype(np.float32)
        self.value_output_bias = (
            w["value.bias"].astype(np.float64) @ wo.T + w["output.bias"]
        ).astype(np.float32)
        self.norm1 = (w["norm1.weight"], w["norm1.bias"])
        self.ffn_in_t = np.ascontiguousarray(w["ffn_in.weight"].T)
        self.ffn_in_bias = w["ffn_in.bias"]
        self.ffn_out_t = np.ascontiguousarray(w["ffn_out.weight"].T)
        self.ffn_out_bias = w["ffn_out.bias"]
        self.norm2 = (w["norm2.weight"], w["norm2.bias"])
        self.average = np.full((dim, 1), 1 / dim, dtype=np.float32)  # for layer_norm

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
        r = (last @ self.query_key + self.query_key_bias).reshape(b, self.heads, dim)
        scores = r @ x.transpose(0, 2, 1)  # (B, H, L)
        # None in the usual case, a full window: nothing to mask, nothing to zero
        present = None if mask.all() else np.asarray(mask.any(axis=1))
        if present is not None:  # padded slots get -inf; an empty window attends to all (zeroed)
            attend = (mask | ~present[:, None])[:, None]
            scores = np.where(attend, scores, np.float32(-np.inf))
        scores -= scores.max(axis=-1, keepdims=True)
        a = np.exp(scores)
        a /= a.sum(axis=-1, keepdims=True)
        pooled = (a @ x).reshape(b, self.heads * dim)  # each head's weighted token mean
        attended = pooled @ self.value_output + self.value_output_bias
        y = layer_norm(last + attended, *self.norm1, self.average)
        hidden = np.maximum(y @ self.ffn_in_t + self.ffn_in_bias, 0.0)
        z = layer_norm(y + hidden @ self.ffn_out_t + self.ffn_out_bias, *self.norm2, self.average)
        if present is not None:
            z[~present] = 0.0
        return z.astype(np.float32, copy=False)
