"""The networks of Alice pretraining from one config: backbone, projection head and CAFA block.

Alice (Jiang et al., ICCV 2023, arXiv 2302.05615) pretrains an nnFormer with a DINO-style head and a
cross-attention alignment block; ``ModelConfig`` holds their sizes (defaults = the paper's) and refuses sizes
that cannot work when it is created, naming the values. ``PRESETS["cpu-tiny"]`` is the 2-core CPU setting
(about 1 s per training step at roi 48).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from alice.models.cafa import CAFA
from alice.models.heads import ProjectionHead
from alice.models.nnformer import NnFormer
from alice.models.swin import SwinUNETRBackbone

# Name -> class; both take the same constructor arguments and return the dict of ``alice.models.tokens``.
BACKBONES: dict[str, type[nn.Module]] = {"nnformer": NnFormer, "swin_unetr": SwinUNETRBackbone}
NUM_STAGES = 4
PATCH_SIZES = (2, 4)
# Version of the backbones' code: a change that gives the same weights another meaning bumps it, and checkpoints,
# bundles and cached embeddings of another version are refused or recomputed. 5: edge-replicating convs;
# 6: instance norm in the nnFormer convolutions.
NETWORK_VERSION = 6


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the backbone, the projection head and the CAFA block.

    Attributes:
        backbone: a key of ``BACKBONES``.
        roi: edge of the cubic input crop in voxels; a multiple of ``patch_size * 8``.
        in_channels: input channels (1 for CT); the reconstruction has as many.
        feature_size: width of the first stage; stage i is ``feature_size * 2**i`` wide.
        depths, num_heads, window_sizes: blocks, attention heads and window edge of the four encoder stages
            (decoder stages mirror them). Windows are clamped to a stage's grid and must tile it.
        patch_size: stride of the patch embedding (2 or 4).
        drop_path: largest stochastic-depth rate.
        head_hidden_dim, head_bottleneck_dim: widths of the head's MLP.
        head_out_dim, head_patch_out_dim: number of cls and token prototypes.
        head_norm_last_layer: fix the prototype norms at 1.
        cafa_heads, cafa_d_k, cafa_d_inner, cafa_dropout: CAFA's heads, width per head, feed-forward width and
            dropout; its token width is ``head_patch_out_dim``.
    """

    backbone: str = "nnformer"
    roi: int = 64
    in_channels: int = 1
    feature_size: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_sizes: tuple[int, ...] = (4, 4, 8, 4)
    patch_size: int = 2
    drop_path: float = 0.2
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_out_dim: int = 512
    head_patch_out_dim: int = 512
    head_norm_last_layer: bool = True
    cafa_heads: int = 8
    cafa_d_k: int = 64
    cafa_d_inner: int = 2048
    cafa_dropout: float = 0.1

    def __post_init__(self):
        self.validate()

    @property
    def enc_dim(self) -> int:
        """Width of ``cls`` and ``enc_tokens``."""
        return self.feature_size * 2 ** (NUM_STAGES - 1)

    @property
    def dec_dim(self) -> int:
        """Width of ``dec_tokens``."""
        return self.feature_size * 2 ** (NUM_STAGES - 2)

    def validate(self) -> None:
        """Refuse sizes no network can be built or run with.

        Raises:
            ValueError: the message names the offending values.
        """
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {sorted(BACKBONES)}")
        stages = {"depths": self.depths, "num_heads": self.num_heads, "window_sizes": self.window_sizes}
        for name, values in stages.items():
            if len(values) != NUM_STAGES or min(values) < 1:
                raise ValueError(f"{name} must be {NUM_STAGES} positive integers, one per stage; got {values}")
        if self.patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {PATCH_SIZES}; got {self.patch_size}")
        for name in ("in_channels", "feature_size", "head_hidden_dim", "head_bottleneck_dim", "head_out_dim",
                     "head_patch_out_dim", "cafa_heads", "cafa_d_k", "cafa_d_inner"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}")
        if self.backbone == "nnformer" and self.feature_size % 2:
            raise ValueError(f"nnformer needs an even feature_size (its stem starts at half width); "
                             f"got {self.feature_size}")
        for name in ("drop_path", "cafa_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1); got {getattr(self, name)}")
        stride = self.patch_size * 2 ** (NUM_STAGES - 1)
        if self.roi < stride or self.roi % stride:
            raise ValueError(f"roi {self.roi} must be a positive multiple of patch_size {self.patch_size} * "
                             f"2**{NUM_STAGES - 1} = {stride} (patch embedding, then {NUM_STAGES - 1} patch mergings)")
        if self.backbone == "swin_unetr" and self.roi < 2 * stride:
            raise ValueError(f"swin_unetr needs roi >= {2 * stride} (instance norm on a bottleneck of one voxel "
                             f"cannot train); got roi {self.roi} with patch_size {self.patch_size}")
        for i, (heads, window) in enumerate(zip(self.num_heads, self.window_sizes)):
            width = self.feature_size * 2 ** i
            if width % heads:
                raise ValueError(f"stage {i} width {width} (feature_size {self.feature_size} * 2**{i}) is not "
                                 f"divisible by num_heads[{i}] = {heads}")
            grid = self.roi // (self.patch_size * 2 ** i)
            if grid % min(window, grid):
                raise ValueError(f"window_sizes[{i}] = {window} cannot tile stage {i}'s {grid}^3 token grid "
                                 f"(roi {self.roi} / (patch_size {self.patch_size} * 2**{i}))")

    def to_dict(self) -> dict:
        """Plain data (tuples as lists) for YAML and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """The inverse of ``to_dict``; missing keys take defaults.

        Raises:
            ValueError: an unknown key, or sizes ``validate`` refuses.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config has unknown key(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(),
    # Measured at about 1 s per training step (two crops through student and teacher) on 2 CPU cores.
    "cpu-tiny": ModelConfig(roi=48, feature_size=24, num_heads=(3, 6, 12, 24), drop_path=0.0, head_hidden_dim=512,
                            head_bottleneck_dim=128, head_out_dim=256, head_patch_out_dim=256, cafa_d_inner=512),
}


def build_backbone(config: ModelConfig) -> nn.Module:
    """A fresh backbone (``config.backbone``) with the interface of ``alice.models.tokens``; its ``token_grid``
    gives the (X, Y, Z) grid of ``enc_tokens`` and ``dec_tokens``."""
    return BACKBONES[config.backbone](
        roi=(config.roi,) * 3, in_channels=config.in_channels, feature_size=config.feature_size,
        depths=config.depths, num_heads=config.num_heads, window_sizes=config.window_sizes,
        patch_size=config.patch_size, drop_path=config.drop_path)


def build_head(config: ModelConfig, shared_last_layer: bool = False) -> ProjectionHead:
    """A fresh projection head sized for the backbone of ``config``.

    Args:
        config: the model config.
        shared_last_layer: tokens use the cls prototype layer (the official teacher). Such a head has no
            ``patch_last_layer``, so loading a student's state dict into it needs ``strict=False``.

    Raises:
        ValueError: a shared last layer with ``head_out_dim != head_patch_out_dim``.
    """
    return ProjectionHead(config.enc_dim, config.dec_dim, config.head_hidden_dim, config.head_bottleneck_dim,
                          config.head_out_dim, config.head_patch_out_dim, config.head_norm_last_layer,
                          shared_last_layer)


def build_cafa(config: ModelConfig) -> CAFA:
    """A fresh CAFA block working on the head's token outputs (width ``head_patch_out_dim``)."""
    return CAFA(config.head_patch_out_dim, config.cafa_heads, config.cafa_d_k, config.cafa_d_inner,
                config.cafa_dropout)
