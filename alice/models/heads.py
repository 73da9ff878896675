"""DINO-style projection head of Alice pretraining, for the global (cls) embedding and the patch tokens.

Alice (Jiang et al., ICCV 2023, arXiv 2302.05615) projects the backbone's cls embedding, its bottleneck tokens and
its first-decoder-stage tokens with one DINO head (Caron et al., "Emerging Properties in Self-Supervised Vision
Transformers", ICCV 2021): an MLP to a bottleneck, L2 normalisation, then a weight-normalised prototype layer.
Tokens get their own prototype layer (iBOT's patch head), which the teacher shares with the cls layer. Two
linear adapters bring the token widths to the cls width; unlike the official code, they are sized from the
backbone's widths, so every feature size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

INIT_STD = 0.02


def prototype_layer(bottleneck_dim: int, out_dim: int, norm_last_layer: bool) -> nn.Linear:
    """Weight-normalised linear layer without bias; with ``norm_last_layer`` the norm g is fixed at 1 (the
    prototypes stay unit vectors), otherwise it is learned."""
    layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
    magnitude = layer.parametrizations.weight.original0  # g, (out_dim, 1)
    with torch.no_grad():
        magnitude.fill_(1.0)
    magnitude.requires_grad_(not norm_last_layer)
    return layer


class ProjectionHead(nn.Module):
    """Projection of the cls embedding and of the encoder and decoder tokens onto prototype scores.

    The cls embedding enters the MLP as is; ``enc_adapter`` and ``dec_adapter`` map the token widths to the cls
    width first. The MLP is applied per token, so cls and tokens are not concatenated (as the official code
    does) but stacked into one batch, which gives the same result.

    Args:
        enc_dim: width of ``cls`` and of the encoder tokens (the MLP's input width).
        dec_dim: width of the decoder tokens.
        hidden_dim: MLP hidden width.
        bottleneck_dim: MLP output width, the space that is L2-normalised.
        out_dim: number of cls prototypes.
        patch_out_dim: number of token prototypes.
        norm_last_layer: fix the prototype norms at 1.
        shared_last_layer: tokens use the cls prototype layer (the official teacher); needs
            ``out_dim == patch_out_dim``.
    """

    def __init__(self, enc_dim: int, dec_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int,
                 patch_out_dim: int, norm_last_layer: bool = True, shared_last_layer: bool = False):
        super().__init__()
        if shared_last_layer and out_dim != patch_out_dim:
            raise ValueError(f"a shared last layer needs out_dim == patch_out_dim; got {out_dim} and {patch_out_dim}")
        self.enc_adapter = nn.Linear(enc_dim, enc_dim)
        self.dec_adapter = nn.Linear(dec_dim, enc_dim)
        self.mlp = nn.Sequential(nn.Linear(enc_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim))
        for module in (self.enc_adapter, self.dec_adapter, *self.mlp):
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=INIT_STD)
                nn.init.zeros_(module.bias)
        self.last_layer = prototype_layer(bottleneck_dim, out_dim, norm_last_layer)
        # Shared: no second module, so the state dict has no alias of last_layer that loading could overwrite.
        self.patch_last_layer = None if shared_last_layer else prototype_layer(bottleneck_dim, patch_out_dim,
                                                                               norm_last_layer)

    def forward(self, cls: torch.Tensor, enc_tokens: torch.Tensor, dec_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Project a backbone's outputs.

        Args:
            cls: (B, C_enc).
            enc_tokens: (B, N_enc, C_enc).
            dec_tokens: (B, N_dec, C_dec).

        Returns:
            ``cls_out`` (B, out_dim), ``enc_out`` (B, N_enc, patch_out_dim), ``dec_out`` (B, N_dec, patch_out_dim):
            prototype scores (logits) before any temperature; ``cls_embedding`` (B, bottleneck_dim), the unit
            vector the cls scores are taken from.
        """
        n_enc = enc_tokens.shape[1]
        x = torch.cat([cls[:, None], self.enc_adapter(enc_tokens), self.dec_adapter(dec_tokens)], dim=1)
        x = F.normalize(self.mlp(x), dim=-1)  # (B, 1 + N_enc + N_dec, bottleneck)
        patch_layer = self.last_layer if self.patch_last_layer is None else self.patch_last_layer
        tokens = patch_layer(x[:, 1:])
        return {"cls_out": self.last_layer(x[:, 0]), "enc_out": tokens[:, :n_enc], "dec_out": tokens[:, n_enc:],
                "cls_embedding": x[:, 0]}
