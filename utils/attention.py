"""Self-attention written out: scaled dot-product attention, the causal mask, and multi-head self-attention.

Defined for notebook 01 (book chapter 1, the transformer at the core of every foundation model). The functions
are deliberately plain so each line maps to a formula; tests check them against `torch.nn.functional.
scaled_dot_product_attention` and `torch.nn.MultiheadAttention`. Needs torch only.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def causal_mask(length: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (length, length) mask, True where query i may attend to key j, i.e. j <= i (no peeking ahead)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, causal: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T / sqrt(d) + mask) v, returning (output, attention weights).

    q: (..., T_q, d), k: (..., T_k, d), v: (..., T_k, d_v). `mask` is boolean, broadcastable to (..., T_q, T_k),
    True where attention is allowed; `causal=True` adds the causal mask. Dividing by sqrt(d) keeps the scores'
    variance near 1 for unit-variance inputs, so the softmax does not saturate (Vaswani et al., 2017, section 3.2.1).
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        allowed = causal_mask(q.shape[-2], q.device)
        mask = allowed if mask is None else mask & allowed
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention: project to queries, keys and values, attend per head, mix heads back.

    `width` is split over `heads` heads of width // heads dimensions each; one linear layer makes q, k and v
    (laid out as torch.nn.MultiheadAttention's `in_proj_weight`, so weights can be copied across).
    """

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (batch, T, width) -> (output (batch, T, width), weights (batch, heads, T, T))."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)
        q, k, v = (t.view(batch, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        mixed, weights = scaled_dot_product_attention(q, k, v, causal=self.causal)
        return self.out(mixed.transpose(1, 2).reshape(batch, length, width)), weights


def from_bert_self_attention(attention: nn.Module, heads: int, causal: bool = False) -> MultiHeadSelfAttention:
    """Our module with the weights of a transformers BERT self-attention block (`query`, `key`, `value`
    linears), so its attention weights can be checked against the real model's. The output projection lives in
    BERT's next sub-module and is left as identity here: compare weights, not outputs."""
    width = attention.query.in_features
    ours = MultiHeadSelfAttention(width, heads, causal=causal)
    with torch.no_grad():
        ours.qkv.weight.copy_(torch.cat([attention.query.weight, attention.key.weight, attention.value.weight]))
        ours.qkv.bias.copy_(torch.cat([attention.query.bias, attention.key.bias, attention.value.bias]))
        ours.out.weight.copy_(torch.eye(width))
        ours.out.bias.zero_()
    return ours
