"""The cross-attentive module: concepts are queries, global tokens are keys and values."""

from __future__ import annotations

import torch
from torch import nn


class CrossAttentiveModule(nn.Module):
    """One layer of concept->image cross-attention.

    O = Z_l + Dropout(Attn(Q=Z_l, K=V=Z_g) W_o);  O = O + MLP(LN(O)).
    ``nn.MultiheadAttention`` holds the Q/K/V projections and W_o. Each concept attends to the
    tokens independently, so padded concepts cannot change the output of real ones.
    """

    def __init__(self, dim: int = 256, heads: int = 8, dropout: float = 0.1, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, local: torch.Tensor, global_tokens: torch.Tensor) -> torch.Tensor:
        """local [B, n, dim] (queries), global_tokens [B, T, dim] -> [B, n, dim]."""
        attended, _ = self.attn(local, global_tokens, global_tokens, need_weights=False)
        out = local + self.drop(attended)
        return out + self.mlp(self.norm(out))
