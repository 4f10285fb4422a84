"""The attention readout of the ``attention`` user tower, in torch.

The function is the one :mod:`recall.index.attention` documents and serves in numpy: one
post-norm self-attention block over the window, tokens ``item embedding + slot (recency)
embedding``, read at the most recent slot (so only that slot's query is computed).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recall.index.attention import FFN_EXPANSION, LAYER_NORM_EPS


class AttentionReadout(nn.Module):
    """(B, L, d) window tokens and a (B, L) bool mask -> the block's (B, d) output at slot
    ``L - 1``; 0 for an empty window."""

    def __init__(self, length: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.position = nn.Embedding(length, dim)
        nn.init.normal_(self.position.weight, std=0.05)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim, bias=False)  # a bias would shift a head's scores alike
        self.value = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.ffn_in = nn.Linear(dim, FFN_EXPANSION * dim)
        self.ffn_out = nn.Linear(FFN_EXPANSION * dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        b, _, dim = tokens.shape
        x = tokens + self.position.weight  # (B, L, d)
        last = x[:, -1]
        q = self.query(last).view(b, self.heads, self.head_dim)
        key = self.key.weight.view(self.heads, self.head_dim, dim)
        r = torch.einsum("bhe,hed->bhd", q, key)  # W_k,h^T q_h: (B, H, d)
        scores = torch.bmm(r, x.transpose(1, 2)) / math.sqrt(self.head_dim)  # (B, H, L)
        present = mask.any(dim=1)
        valid = mask.unsqueeze(1) | ~present[:, None, None]  # an empty window: all, zeroed
        a = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1)
        pooled = torch.bmm(a, x)  # (B, H, d)
        value = self.value.weight.view(self.heads, self.head_dim, dim)
        heads = torch.einsum("bhd,hed->bhe", pooled, value).reshape(b, dim) + self.value.bias
        y = self.norm1(last + self.output(heads))
        z: Tensor = self.norm2(y + self.ffn_out(torch.relu(self.ffn_in(y))))
        return z * present.unsqueeze(1).to(z.dtype)
