"""The backbone contract shared by every Alice backbone: input checks, SimMIM voxel masking, token layout.

Alice (Jiang et al., "Anatomical Invariance Modeling and Semantic Alignment for Self-supervised Learning in 3D
Medical Image Analysis", ICCV 2023) masks the student's input by zeroing voxels (the encoder still sees the
full grid) and reads three token sets off the backbone. Every backbone here returns the same dict:

- ``cls``: (B, C_enc), the mean of the bottleneck tokens;
- ``enc_tokens``: (B, N_enc, C_enc), the bottleneck tokens;
- ``dec_tokens``: (B, N_dec, C_dec), the tokens of the first decoder stage;
- ``recon``: (B, C_in, X, Y, Z), the voxel reconstruction of the (unmasked) input;
- ``features``: (B, feature_size, X / s, Y / s, Z / s), the last decoder map that ``recon`` is made from, with
  ``s = backbone.feature_stride``: a segmentation head replaces the reconstruction layer on it.

``forward(x, mask, tokens_only=True)`` stops after the first decoder stage and returns ``cls`` and the two token
sets only (the correspondence term's teacher pass over the shifted crops needs no more).

Token order: a token grid (X', Y', Z') is flattened in C order, token ``n = (x' * Y' + y') * Z' + z'``, the
order ``tensor.flatten`` gives for a (B, X', Y', Z', C) or (B, C, X', Y', Z') map. ``tokens_to_grid`` undoes it,
so with ``backbone.token_grid[key]`` any token (or attention map over tokens) maps back onto the crop: token
cell (x', y', z') covers voxels ``[x' * s, (x' + 1) * s)`` along X with ``s = roi // X'`` (same for Y, Z).
"""

from __future__ import annotations

import torch

OUTPUT_KEYS = ("cls", "enc_tokens", "dec_tokens", "recon", "features")


def check_input(x: torch.Tensor, mask: torch.Tensor | None, roi: tuple[int, int, int], in_channels: int) -> None:
    """Refuse an input or mask whose shape does not fit a backbone built for ``roi`` and ``in_channels``.

    Raises:
        ValueError: the message names the expected and the given shapes.
    """
    if x.ndim != 5 or x.shape[1] != in_channels or tuple(x.shape[2:]) != tuple(roi):
        raise ValueError(f"backbone input must be (B, {in_channels}, {roi[0]}, {roi[1]}, {roi[2]}); "
                         f"got {tuple(x.shape)}")
    if mask is None:
        return
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = masked voxel); got dtype {mask.dtype}")
    if mask.ndim != 5 or mask.shape[0] != x.shape[0] or mask.shape[1] not in (1, in_channels) \
            or mask.shape[2:] != x.shape[2:]:
        raise ValueError(f"mask must be (B, 1, X, Y, Z) matching the input {tuple(x.shape)}; got {tuple(mask.shape)}")


def zero_masked_voxels(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The input with masked voxels set to 0 (SimMIM-style); ``mask`` (B, 1, X, Y, Z) broadcasts over channels."""
    return x if mask is None else x.masked_fill(mask, 0.0)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, X, Y, Z, C) channel-last map -> (B, X * Y * Z, C) tokens in C order."""
    return x.flatten(1, 3)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, N, C) tokens in C order -> (B, C, X, Y, Z) map, the house layout; ``grid`` is (X, Y, Z)."""
    if tokens.shape[1] != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"{tokens.shape[1]} tokens do not fill a {grid} grid")
    return tokens.unflatten(1, grid).movedim(-1, 1)
