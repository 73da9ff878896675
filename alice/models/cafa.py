"""CAFA, the conditional anatomical feature alignment block of Alice pretraining.

Alice (Jiang et al., ICCV 2023, arXiv 2302.05615; "CASA" in the official code) aligns the student's tokens of a
masked view with uncorrupted features through one Transformer cross-attention layer: queries are the student's
encoder tokens of the masked view, keys and values either the student's decoder tokens (branch S) or the
teacher's uncorrupted tokens (branch T). In the paper the T branch uses an EMA copy of this block
(``CAFA.ema_copy``); the official code shares one block between S and T. Every parameter takes part in the
forward pass (the official block carries ~9M unused ones).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class CAFA(nn.Module):
    """Post-norm Transformer cross-attention block (as the official code's): multi-head attention from queries to
    keys, residual from the queries and LayerNorm, then a ReLU feed-forward network, residual and LayerNorm. Queries
    and keys are LayerNorm-ed first (see ``__init__``), and the output tokens have unit length (see ``forward``).

    Args:
        d_model: token width of queries, keys and the output.
        n_head: attention heads.
        d_k: width per head of the query, key and value projections.
        d_inner: feed-forward hidden width.
        dropout: dropout on the attention weights and on both residual branches.
    """

    def __init__(self, d_model: int, n_head: int, d_k: int, d_inner: int, dropout: float):
        super().__init__()
        self.n_head, self.d_k = n_head, d_k
        # The inputs are prototype scores of unit vectors (entries ~0.1): without a norm, q.k / sqrt(d_k) is ~1e-3,
        # every attention row is uniform and stays so (measured: peak 1.005x uniform after 2000 steps).
        self.norm_queries = nn.LayerNorm(d_model)
        self.norm_keys = nn.LayerNorm(d_model)
        self.w_q = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_k = nn.Linear(d_model, n_head * d_k, bias=False)
        self.w_v = nn.Linear(d_model, n_head * d_k, bias=False)
        self.fc = nn.Linear(n_head * d_k, d_model, bias=False)
        self.attn_dropout = nn.Dropout(dropout)
        self.dropout = nn.Dropout(dropout)
        self.norm_attn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, d_inner), nn.ReLU(), nn.Linear(d_inner, d_model),
                                 nn.Dropout(dropout))
        self.norm_ffn = nn.LayerNorm(d_model)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Align ``queries`` with ``keys`` (which also serve as values).

        Args:
            queries: (B, Nq, d_model).
            keys: (B, Nk, d_model).

        Returns:
            The aligned tokens (B, Nq, d_model), unit vectors, and the attention (B, n_head, Nq, Nk) before
            dropout, each row a distribution over the keys (for display; map Nk back to space with the keys' token
            grid).
        """
        queries, keys = self.norm_queries(queries), self.norm_keys(keys)
        q = rearrange(self.w_q(queries), "b n (h d) -> b h n d", h=self.n_head)
        k = rearrange(self.w_k(keys), "b n (h d) -> b h n d", h=self.n_head)
        v = rearrange(self.w_v(keys), "b n (h d) -> b h n d", h=self.n_head)
        # Explicit rather than fused attention: the weights are an output.
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.d_k ** -0.5, dim=-1)
        mixed = rearrange(self.attn_dropout(attn) @ v, "b h n d -> b n (h d)")
        x = self.norm_attn(queries + self.dropout(self.fc(mixed)))
        # The token loss reads these as prototype scores at the temperatures of the cls scores (cosines). At the
        # LayerNorm's scale (entries ~1) a teacher temperature of 0.01 made every target one-hot on one prototype:
        # the token loss fell to ~0 by step 250, the attention went uniform again (peak 1.05x) and all tokens
        # got the same output (cosine 0.998). As unit vectors (entries ~1/sqrt(d_model)), measured at step 300:
        # attention peak 4.5x uniform, output tokens at mean cosine 0.18.
        return F.normalize(self.norm_ffn(x + self.ffn(x)), dim=-1), attn

    def ema_copy(self) -> CAFA:
        """A frozen copy for the target branch: same weights, no gradients, eval mode (no dropout). It is meant
        to follow this block by an exponential moving average and must be left out of the optimiser."""
        target = copy.deepcopy(self).eval()
        target.requires_grad_(False)
        return target
