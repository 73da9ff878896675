"""nnFormer-style encoder-decoder, the backbone of Alice pretraining.

Alice (Jiang et al., ICCV 2023, arXiv 2302.05615) pretrains an nnFormer (Zhou et al., "nnFormer: Volumetric
Medical Image Segmentation via a 3D Transformer", IEEE TIP 2023): a convolutional patch embedding, four
stages of 3D Swin window attention with shifted windows and strided-conv patch merging, a decoder whose
stages add the encoder skip to the upsampled tokens and whose first block per stage attends from that sum to
the skip, and a transposed conv back to the input resolution. Written from the method description; it departs
from the official code where that code is broken: the absolute position embedding is a learned parameter (saved, EMA'd
and exported with the weights), every token map is flattened in one (X, Y, Z) C order (see
``alice.models.tokens``), and the decoder upsamples by interpolation, not by transposed convs (``PatchExpanding``).

Layout: (B, C, X, Y, Z) at the module boundary; channel-last (B, X, Y, Z, C) inside the attention stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.layers import DropPath
from torch import nn

from alice.models.tokens import check_input, grid_to_tokens, zero_masked_voxels

Grid = tuple[int, int, int]
NUM_STAGES = 4
MLP_RATIO = 4.0
INIT_STD = 0.02


def stage_windows(grid: Grid, window: int) -> tuple[Grid, Grid]:
    """Window and shift of a stage: the window is clamped to the stage's grid, and an axis the window covers
    entirely is not shifted (a shift there would only wrap the volume onto itself)."""
    size = tuple(min(window, g) for g in grid)
    shift = tuple(w // 2 if g > w else 0 for g, w in zip(grid, size))
    return size, shift


def window_partition(x: torch.Tensor, window: Grid) -> torch.Tensor:
    """(B, X, Y, Z, C) -> (B, n_windows, window tokens, C); windows and their tokens in C order."""
    wx, wy, wz = window
    return rearrange(x, "b (nx wx) (ny wy) (nz wz) c -> b (nx ny nz) (wx wy wz) c", wx=wx, wy=wy, wz=wz)


def window_merge(windows: torch.Tensor, grid: Grid, window: Grid) -> torch.Tensor:
    """Inverse of ``window_partition``: (B, n_windows, window tokens, C) -> (B, X, Y, Z, C)."""
    (wx, wy, wz), (gx, gy, gz) = window, grid
    return rearrange(windows, "b (nx ny nz) (wx wy wz) c -> b (nx wx) (ny wy) (nz wz) c",
                     nx=gx // wx, ny=gy // wy, nz=gz // wz, wx=wx, wy=wy, wz=wz)


def shifted_window_mask(grid: Grid, window: Grid, shift: Grid) -> torch.Tensor:
    """Which token pairs of each window may attend after the grid is rolled by ``-shift``.

    Rolling brings tokens from the far end of each axis next to the near end. Two tokens of one window are
    neighbours in the unrolled volume only if, along every axis, both wrapped around or neither did.

    Returns:
        Bool (n_windows, T, T), T = window tokens; True = may attend. Windows in ``window_partition`` order.
    """
    wrapped = [torch.arange(g) >= g - s for g, s in zip(grid, shift)]
    # One region id per voxel: three wrap flags as bits.
    region = (wrapped[0][:, None, None].long() * 4 + wrapped[1][None, :, None].long() * 2
              + wrapped[2][None, None, :].long())
    windows = window_partition(region[None, ..., None], window)[0, ..., 0]  # (n_windows, T)
    return windows[:, :, None] == windows[:, None, :]


def relative_position_index(window: Grid) -> torch.Tensor:
    """(T, T) index into a table of the (2wx-1)(2wy-1)(2wz-1) possible offsets between two window tokens."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(w) for w in window], indexing="ij")).flatten(1)  # (3, T)
    offset = coords[:, :, None] - coords[:, None, :] + torch.tensor(window)[:, None, None] - 1  # (3, T, T), >= 0
    _, span_y, span_z = (2 * w - 1 for w in window)
    return (offset[0] * span_y + offset[1]) * span_z + offset[2]


class WindowAttention(nn.Module):
    """Multi-head attention inside 3D windows with a learned relative position bias.

    Queries come from ``x``; keys and values from ``context`` (``x`` itself for self-attention).

    Args:
        dim: token width.
        num_heads: attention heads; must divide ``dim``.
        window: window size (X, Y, Z).
    """

    def __init__(self, dim: int, num_heads: int, window: Grid):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        table_size = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        nn.init.trunc_normal_(self.bias_table, std=INIT_STD)
        # A function of the window only: rebuilt at construction, so kept out of the state dict.
        self.register_buffer("bias_index", relative_position_index(window), persistent=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attend within windows.

        Args:
            x: queries (B, n_windows, T, C).
            context: keys and values (B, n_windows, T, C).
            mask: bool (n_windows, T, T), True = may attend; None = all pairs.

        Returns:
            (B, n_windows, T, C).
        """
        n_windows = x.shape[1]
        # Windows and heads share one axis: 4-D inputs for the fused kernels, a mask that broadcasts over B.
        q = rearrange(self.q(x), "b w t (h d) -> b (w h) t d", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b w t (two h d) -> two b (w h) t d", two=2, h=self.num_heads)
        bias = self.bias_table[self.bias_index].permute(2, 0, 1).expand(n_windows, -1, -1, -1)  # (w, h, T, T)
        if mask is not None:
            bias = bias.masked_fill(~mask[:, None], float("-inf"))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.flatten(0, 1))
        return self.proj(rearrange(out, "b (w h) t d -> b w t (h d)", w=n_windows))


class SwinBlock(nn.Module):
    """Pre-norm Swin block on a fixed grid: (shifted-)window attention and an MLP, each with a residual.

    A ``cross`` block takes its keys and values from a second map (the decoder's skip connection) and is never
    shifted.

    Args:
        dim: token width.
        num_heads: attention heads.
        grid: the stage's token grid (X, Y, Z).
        window: window size, already clamped to ``grid`` (see ``stage_windows``).
        shift: cyclic shift before windowing, (0, 0, 0) for none.
        drop_path: stochastic-depth rate of both residual branches.
        cross: attend to a context map instead of to the input.
    """

    def __init__(self, dim: int, num_heads: int, grid: Grid, window: Grid, shift: Grid, drop_path: float,
                 cross: bool = False):
        super().__init__()
        if cross and any(shift):
            raise ValueError(f"a cross-attention block is not shifted; got shift {shift}")
        self.grid, self.window, self.shift = grid, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim) if cross else None
        self.attn = WindowAttention(dim, num_heads, window)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * MLP_RATIO)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        mask = shifted_window_mask(grid, window, shift) if any(shift) else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """(B, X, Y, Z, C) -> the same shape; ``context`` (same shape) is required exactly for cross blocks."""
        if (context is None) != (self.norm_context is None):
            raise ValueError("a cross block needs a context map and a self-attention block takes none")
        h = self.norm1(x)
        kv = h if self.norm_context is None else self.norm_context(context)
        if self.attn_mask is not None:  # shifted blocks are self-attention: keys are the rolled queries
            h = kv = torch.roll(h, shifts=tuple(-s for s in self.shift), dims=(1, 2, 3))
        h = self.attn(window_partition(h, self.window), window_partition(kv, self.window), self.attn_mask)
        h = window_merge(h, self.grid, self.window)
        if self.attn_mask is not None:
            h = torch.roll(h, shifts=self.shift, dims=(1, 2, 3))
        x = x + self.drop_path(h)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def swin_stage(dim: int, depth: int, num_heads: int, grid: Grid, window: int, drop_path: Sequence[float],
               cross_first: bool = False) -> nn.ModuleList:
    """``depth`` blocks alternating plain and shifted windows; the first one optionally a cross block."""
    size, shift = stage_windows(grid, window)
    no_shift = (0, 0, 0)
    return nn.ModuleList(
        SwinBlock(dim, num_heads, grid, size, shift if i % 2 else no_shift, drop_path[i], cross=cross_first and i == 0)
        for i in range(depth))


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv3d:
    """A 3x3x3 convolution that pads by repeating the edge voxels, not with zeros.

    Zero padding tells every conv where the crop ends; trained, the network amplified that into tokens that said
    where they sat in the crop and little else (over 0.95 of their variance across crops explained by their place,
    ``alice.pretrain.positions``, after 50 steps of any loss, reconstruction alone included), so the pooled cls
    was the same for every crop and dense embeddings matched places by their position in the window. Replicated
    edges carry no such signal: with them the same trained weights gave a share of 0.00.
    """
    return nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode="replicate")


def spatial_norm(channels: int) -> nn.InstanceNorm3d:
    """Normalise each channel over the crop's voxels (instance norm; no affine, as a conv or the position
    embedding follows each one).

    nnFormer normalises each voxel over its channels (LayerNorm) instead. Then most of every conv's input is one
    vector shared by all voxels (0.8 of its mean square, untrained), the gradient steps align each conv with it,
    and each layer amplified it: after 20-40 steps of any loss, reconstruction alone included, every bottleneck
    token was that one vector (crop variance 0.0001, ``alice.pretrain.positions``; at a 10x lower LR the same,
    later). Removing each channel's mean over the crop, as nnU-Net's instance norm does, leaves no shared vector
    to amplify.
    """
    return nn.InstanceNorm3d(channels)


class ConvPatchEmbed(nn.Module):
    """nnFormer's convolutional stem: two stages of two 3x3x3 convs with GELU and a norm, total stride
    ``patch_size`` (2 or 4), then a norm (``spatial_norm`` where nnFormer has LayerNorm).

    Args:
        in_channels: input channels.
        dim: output width (the feature size); the first stage is half as wide.
        patch_size: total stride, 2 or 4.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        if patch_size not in (2, 4):
            raise ValueError(f"patch_size must be 2 or 4, got {patch_size}")
        half = dim // 2
        self.layers = nn.Sequential(
            conv3x3(in_channels, half, stride=2), nn.GELU(), spatial_norm(half),
            conv3x3(half, half), nn.GELU(), spatial_norm(half),
            conv3x3(half, dim, stride=patch_size // 2), nn.GELU(), spatial_norm(dim),
            conv3x3(dim, dim), spatial_norm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, X, Y, Z) -> (B, dim, X / patch, Y / patch, Z / patch)."""
        return self.layers(x)


class PatchMerging(nn.Module):
    """Halve the grid and double the width: GELU, norm, 3x3x3 conv with stride 2 (as in nnFormer, but with
    ``spatial_norm`` and the edge-replicating ``conv3x3``)."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.Sequential(nn.GELU(), spatial_norm(dim), conv3x3(dim, 2 * dim, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, X, Y, Z, C) -> (B, X / 2, Y / 2, Z / 2, 2C), channel-last in and out."""
        return self.layers(x.movedim(-1, 1)).movedim(1, -1)


class PatchExpanding(nn.Module):
    """Double the grid and halve the width: a linear map, then nearest-neighbour upsampling.

    nnFormer upsamples with a 2x2x2 stride-2 transposed conv, which applies one of eight weight matrices to each
    output cell by its parity. Those per-parity terms dominate the decoder's tokens (ours had the same anatomy
    at cosine ~0 after a one-cell shift, ~0.5 after a two-cell shift), so dense embeddings told where a token
    sat in its crop instead of what it showed; resize-then-project has no parity (Odena et al., "Deconvolution
    and Checkerboard Artifacts", Distill 2016). The projection runs on the coarse grid (the two commute), and the
    cross-attention to the encoder skip that follows puts the detail back. Nearest, not trilinear: on CPU,
    trilinear's backward costs over twice the transposed conv's; nearest costs half of it.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, X, Y, Z, C) -> (B, 2X, 2Y, 2Z, C / 2), channel-last in and out."""
        h = self.proj(x).movedim(-1, 1)
        return F.interpolate(h, scale_factor=2, mode="nearest").movedim(1, -1)


class NnFormer(nn.Module):
    """The Alice backbone: nnFormer encoder-decoder returning the dict of ``alice.models.tokens``.

    Widths: stage i of the encoder is ``feature_size * 2**i`` wide on a grid of ``roi / (patch_size * 2**i)``;
    decoder stage j mirrors encoder stage ``2 - j``. So ``enc_tokens`` are ``8 * feature_size`` wide on
    ``roi / (8 * patch_size)`` and ``dec_tokens`` ``4 * feature_size`` wide on ``roi / (4 * patch_size)``
    (``token_grid``).

    Args:
        roi: input size (X, Y, Z); every stage grid must be tiled by its (clamped) window.
        in_channels: input channels; ``recon`` has as many.
        feature_size: width of the first stage.
        depths: blocks per encoder stage (four stages); the mirrored decoder stage has as many.
        num_heads: heads per encoder stage.
        window_sizes: window edge per encoder stage, clamped to the stage's grid.
        patch_size: stride of the patch embedding, 2 or 4.
        drop_path: largest stochastic-depth rate; encoder blocks ramp up to it linearly, decoder stages reuse
            the rates of the encoder stage they mirror.
    """

    def __init__(self, roi: Grid, in_channels: int, feature_size: int, depths: Sequence[int],
                 num_heads: Sequence[int], window_sizes: Sequence[int], patch_size: int, drop_path: float):
        super().__init__()
        if not len(depths) == len(num_heads) == len(window_sizes) == NUM_STAGES:
            raise ValueError(f"nnFormer has {NUM_STAGES} stages; got depths {tuple(depths)}, num_heads "
                             f"{tuple(num_heads)}, window_sizes {tuple(window_sizes)}")
        self.roi, self.in_channels = tuple(roi), in_channels
        grids = [tuple(r // (patch_size * 2 ** i) for r in roi) for i in range(NUM_STAGES)]
        dims = [feature_size * 2 ** i for i in range(NUM_STAGES)]
        rates = torch.linspace(0, drop_path, sum(depths)).tolist()
        stage_rates = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(NUM_STAGES)]

        self.embed = ConvPatchEmbed(in_channels, feature_size, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, feature_size, *grids[0]))
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        self.encoder = nn.ModuleList(swin_stage(dims[i], depths[i], num_heads[i], grids[i], window_sizes[i],
                                                stage_rates[i]) for i in range(NUM_STAGES))
        # Normalised stage outputs: skips for stages 0-2, the bottleneck tokens for stage 3.
        self.encoder_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
        self.merges = nn.ModuleList(PatchMerging(d) for d in dims[:-1])
        mirrored = [2, 1, 0]
        self.ups = nn.ModuleList(PatchExpanding(dims[i + 1]) for i in mirrored)
        self.decoder = nn.ModuleList(swin_stage(dims[i], depths[i], num_heads[i], grids[i], window_sizes[i],
                                                stage_rates[i], cross_first=True) for i in mirrored)
        self.final = nn.ConvTranspose3d(feature_size, in_channels, patch_size, stride=patch_size)
        self.enc_dim, self.dec_dim = dims[3], dims[2]
        self.token_grid: dict[str, Grid] = {"enc_tokens": grids[3], "dec_tokens": grids[2]}
        self.feature_stride = patch_size
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                tokens_only: bool = False) -> dict[str, torch.Tensor]:
        """Encode and reconstruct a crop.

        Args:
            x: (B, C_in, X, Y, Z) at ``roi``.
            mask: bool (B, 1, X, Y, Z), True = voxel zeroed before the encoder; None = no masking.
            tokens_only: stop after the first decoder stage and return ``cls`` and the tokens only.

        Returns:
            ``cls`` (B, C_enc), ``enc_tokens`` (B, N_enc, C_enc), ``dec_tokens`` (B, N_dec, C_dec),
            ``recon`` (B, C_in, X, Y, Z), ``features`` (B, feature_size, X/p, Y/p, Z/p); tokens in (X, Y, Z) C
            order.
        """
        check_input(x, mask, self.roi, self.in_channels)
        h = (self.embed(zero_masked_voxels(x, mask)) + self.pos_embed).movedim(1, -1)  # (B, X/p, Y/p, Z/p, C)
        skips = []
        for i, blocks in enumerate(self.encoder):
            for block in blocks:
                h = block(h)
            skips.append(self.encoder_norms[i](h))
            if i < len(self.merges):
                h = self.merges[i](h)
        h = bottleneck = skips.pop()  # (B, X/8p, Y/8p, Z/8p, 8 fs)
        decoded = []
        for up, blocks, skip in zip(self.ups, self.decoder, reversed(skips)):
            # The skip joins the residual stream, as in nnFormer: through attention alone (an average over a
            # window) the decoder lost the encoder's detail below the window size, so fine-tuning could not
            # fit thin structures (aorta, vertebrae) at all.
            h = blocks[0](up(h) + skip, context=skip)
            for block in blocks[1:]:
                h = block(h)
            decoded.append(h)
            if tokens_only:
                break
        enc_tokens = grid_to_tokens(bottleneck)
        if tokens_only:
            return {"cls": enc_tokens.mean(dim=1), "enc_tokens": enc_tokens, "dec_tokens": grid_to_tokens(decoded[0])}
        features = h.movedim(-1, 1)
        return {"cls": enc_tokens.mean(dim=1), "enc_tokens": enc_tokens, "dec_tokens": grid_to_tokens(decoded[0]),
                "recon": self.final(features), "features": features}


def _init_weights(module: nn.Module) -> None:
    """Swin initialisation: truncated-normal linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
