"""Swin UNETR backbone for Alice pretraining, assembled from MONAI's Swin UNETR components.

Swin UNETR (Hatamizadeh et al., "Swin UNETR: Swin Transformers for Semantic Segmentation of Brain Tumors in MRI
Images", BrainLes 2021) is a baseline in Alice (Jiang et al., ICCV 2023, Fig. 4). This module wires MONAI's
``PatchEmbed``, Swin ``BasicLayer`` / ``PatchMerging`` and UNETR blocks into the backbone contract of
``alice.models.tokens``, so it is a drop-in alternative to ``alice.models.nnformer.NnFormer``.

One departure from MONAI's ``SwinUNETR``: the last Swin stage does not merge patches (as in the original Swin
Transformer), so the bottleneck sits at ``roi / (8 * patch_size)`` like nnFormer's. Token grids and widths then
match nnFormer's (``8 * feature_size`` bottleneck, ``4 * feature_size`` first decoder stage) and a 48-voxel crop
works (MONAI's ``SwinUNETR`` needs multiples of 32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed, UnetOutBlock, UnetrBasicBlock, UnetrUpBlock
from monai.networks.nets.swin_unetr import BasicLayer, PatchMerging
from torch import nn

from alice.models.tokens import check_input, grid_to_tokens, zero_masked_voxels

NUM_STAGES = 4
NORM_NAME = "instance"


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm without affine over the channels of a (B, C, X, Y, Z) map, as Swin UNETR does to each stage."""
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


def _basic_block(in_channels: int, out_channels: int) -> UnetrBasicBlock:
    return UnetrBasicBlock(3, in_channels, out_channels, kernel_size=3, stride=1, norm_name=NORM_NAME, res_block=True)


def _up_block(in_channels: int, out_channels: int, stride: int) -> UnetrUpBlock:
    return UnetrUpBlock(3, in_channels, out_channels, kernel_size=3, upsample_kernel_size=stride,
                        norm_name=NORM_NAME, res_block=True)


class SwinUNETRBackbone(nn.Module):
    """Swin encoder with a UNETR convolutional decoder, returning the dict of ``alice.models.tokens``.

    Stage i of the Swin encoder runs at width ``feature_size * 2**i`` on a grid of ``roi / (patch_size * 2**i)``
    and merges patches afterwards, except the last. ``enc_tokens`` are the normalised last-stage tokens;
    ``dec_tokens`` the output of the first UNETR up-block (``roi / (4 * patch_size)``, ``4 * feature_size``).

    Args:
        roi: input size (X, Y, Z).
        in_channels: input channels; ``recon`` has as many.
        feature_size: width of the first stage.
        depths: Swin blocks per stage (four stages).
        num_heads: heads per stage.
        window_sizes: window edge per stage (MONAI clamps it to the stage's grid).
        patch_size: stride of the patch embedding.
        drop_path: largest stochastic-depth rate, reached linearly over the Swin blocks.
    """

    def __init__(self, roi: tuple[int, int, int], in_channels: int, feature_size: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_sizes: Sequence[int], patch_size: int, drop_path: float):
        super().__init__()
        if not len(depths) == len(num_heads) == len(window_sizes) == NUM_STAGES:
            raise ValueError(f"the Swin encoder has {NUM_STAGES} stages; got depths {tuple(depths)}, num_heads "
                             f"{tuple(num_heads)}, window_sizes {tuple(window_sizes)}")
        self.roi, self.in_channels = tuple(roi), in_channels
        dims = [feature_size * 2 ** i for i in range(NUM_STAGES)]
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_channels, embed_dim=feature_size,
                                      norm_layer=None, spatial_dims=3)
        self.stages = nn.ModuleList(
            BasicLayer(dim=dims[i], depth=depths[i], num_heads=num_heads[i], window_size=(window_sizes[i],) * 3,
                       drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])], qkv_bias=True,
                       downsample=PatchMerging if i < NUM_STAGES - 1 else None)
            for i in range(NUM_STAGES))
        # Convolutional encoders of the input and of the stage inputs at strides p, 2p, 4p, and of the bottleneck.
        self.skip_blocks = nn.ModuleList(_basic_block(c_in, c_out) for c_in, c_out in
                                         ((in_channels, dims[0]), (dims[0], dims[0]), (dims[1], dims[1]),
                                          (dims[2], dims[2])))
        self.bottleneck_block = _basic_block(dims[3], dims[3])
        self.up_blocks = nn.ModuleList([_up_block(dims[3], dims[2], 2), _up_block(dims[2], dims[1], 2),
                                        _up_block(dims[1], dims[0], 2), _up_block(dims[0], dims[0], patch_size)])
        self.out = UnetOutBlock(3, dims[0], in_channels)
        grid = tuple(r // (8 * patch_size) for r in roi)
        self.enc_dim, self.dec_dim = dims[3], dims[2]
        self.token_grid: dict[str, tuple[int, int, int]] = {"enc_tokens": grid, "dec_tokens": tuple(2 * g for g in grid)}
        self.feature_stride = 1

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                tokens_only: bool = False) -> dict[str, torch.Tensor]:
        """Encode and reconstruct a crop.

        Args:
            x: (B, C_in, X, Y, Z) at ``roi``.
            mask: bool (B, 1, X, Y, Z), True = voxel zeroed before the encoder; None = no masking.
            tokens_only: stop after the first decoder stage and return ``cls`` and the tokens only.

        Returns:
            ``cls`` (B, C_enc), ``enc_tokens`` (B, N_enc, C_enc), ``dec_tokens`` (B, N_dec, C_dec),
            ``recon`` (B, C_in, X, Y, Z), ``features`` (B, feature_size, X, Y, Z); tokens in (X, Y, Z) C order.
        """
        check_input(x, mask, self.roi, self.in_channels)
        x = zero_masked_voxels(x, mask)
        hidden = [self.patch_embed(x)]  # strides p, 2p, 4p, 8p, 8p
        for stage in self.stages:
            hidden.append(stage(hidden[-1].contiguous()))
        bottleneck = _normalize(hidden[-1])  # (B, 8 fs, X/8p, Y/8p, Z/8p)
        skip_inputs = [x, *map(_normalize, hidden[:3])]  # strides 1, p, 2p, 4p
        h = self.bottleneck_block(bottleneck)
        decoded = []
        for up, skip_block, skip_input in zip(self.up_blocks, reversed(self.skip_blocks), reversed(skip_inputs)):
            h = up(h, skip_block(skip_input))
            decoded.append(h)
            if tokens_only:
                break
        enc_tokens = grid_to_tokens(bottleneck.movedim(1, -1))
        if tokens_only:
            return {"cls": enc_tokens.mean(dim=1), "enc_tokens": enc_tokens,
                    "dec_tokens": grid_to_tokens(decoded[0].movedim(1, -1))}
        return {"cls": enc_tokens.mean(dim=1), "enc_tokens": enc_tokens,
                "dec_tokens": grid_to_tokens(decoded[0].movedim(1, -1)), "recon": self.out(h), "features": h}
