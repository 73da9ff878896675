"""The segmentation network: an Alice backbone whose reconstruction layer is replaced by a C-class output.

As in the official hand-off (``extract_backbone_weights.py`` keeps encoder and decoder; Jiang et al., ICCV 2023),
fine-tuning starts from the pretrained encoder and decoder and learns a new output layer (``SegmentationHead``).
The backbone is kept whole (its unused reconstruction layer included) so pretrained weights load strictly, key for
key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from alice.errors import InputError
from alice.models.build import ModelConfig, build_backbone
from alice.models.tokens import tokens_to_grid
from alice.pretrain.export import backbone_weights_file, bundle_model_config, read_backbone, read_json

SCRATCH = "scratch"
CHECKPOINT_KIND = "segmentation"
FORMAT_VERSION = 7  # 3: parity-free decoder upsampling; 4: decoder skips added; 5: edge-replicating convs;
# 6: instance norm in the convs; 7: the head also reads the token sets
# The token sets the head reads beside the last decoder map: the ones Alice's alignment losses train.
HEAD_TOKENS = ("dec_tokens", "enc_tokens")
# The ModelConfig fields that decide the backbone's weights; the others (drop path, head, CAFA) may differ.
ARCHITECTURE_FIELDS = ("backbone", "roi", "in_channels", "feature_size", "depths", "num_heads", "window_sizes",
                       "patch_size")


class SegmentationNet(nn.Module):
    """Backbone plus a class head: (B, C_in, R, R, R) crops in [0, 1] -> (B, C, R, R, R) class logits.

    Args:
        config: the backbone's sizes; ``roi`` is the crop the network sees.
        class_names: output channels, background first.
        hu_window: the HU window that maps CT to the input's [0, 1] (kept with the network for inference).
    """

    def __init__(self, config: ModelConfig, class_names: Sequence[str], hu_window: tuple[float, float]):
        super().__init__()
        self.config = config
        self.class_names = tuple(class_names)
        self.hu_window = tuple(float(v) for v in hu_window)
        self.backbone = build_backbone(config)
        self.head = SegmentationHead(config, len(self.class_names), self.backbone.token_grid,
                                     self.backbone.feature_stride)

    @property
    def roi(self) -> tuple[int, int, int]:
        return (self.config.roi,) * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, R, R, R) -> logits (B, C, R, R, R)."""
        return self.head(self.backbone(x))


class SegmentationHead(nn.Module):
    """Class logits from the backbone's last decoder map (``features``) and its two token sets.

    Pretraining trains the token sets with Alice's alignment losses, and the last decoder map with reconstruction
    alone: a linear layer on that map, trained with the backbone frozen, found no more organs in pretrained than in
    random weights (mean Dice 0.045 against 0.047 on the held-out pseudo-subjects). So the new layer also reads
    the tokens, upsampled to the map's grid (the comparison it gives: bench/RESULTS.md, segmentation). The map is
    instance-normalised (per crop and channel, as nnU-Net normalises): the layer gets its spatial variation, not
    the part shared by the whole crop, so it does not learn the class priors first. The tokens are layer-normalised
    per place: what a coarse token shares with the whole crop says where in the body the crop is. The output layer
    is a transposed conv of the reconstruction layer's stride.

    Args:
        config: the backbone's widths.
        num_classes: output channels.
        token_grid: the backbone's token grids by key.
        stride: the backbone's ``feature_stride``.
    """

    def __init__(self, config: ModelConfig, num_classes: int, token_grid: dict, stride: int):
        super().__init__()
        self.token_grid = {key: tuple(token_grid[key]) for key in HEAD_TOKENS}
        token_widths = {"dec_tokens": config.dec_dim, "enc_tokens": config.enc_dim}
        self.features_norm = nn.InstanceNorm3d(config.feature_size, affine=True)
        self.token_norms = nn.ModuleDict({key: nn.LayerNorm(token_widths[key]) for key in HEAD_TOKENS})
        width = config.feature_size + sum(token_widths[key] for key in HEAD_TOKENS)
        self.out = nn.ConvTranspose3d(width, num_classes, stride, stride=stride)

    def forward(self, backbone_out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The backbone's output dict -> logits (B, C, X, Y, Z)."""
        features = backbone_out["features"]
        parts = [self.features_norm(features)]
        for key in HEAD_TOKENS:
            grid = tokens_to_grid(self.token_norms[key](backbone_out[key]), self.token_grid[key])
            parts.append(F.interpolate(grid, size=features.shape[2:], mode="trilinear", align_corners=False))
        return self.out(torch.cat(parts, dim=1))


def architecture_differences(pretrained: ModelConfig, config: ModelConfig) -> list[str]:
    """``field: pretrained vs config`` for every weight-shaping field that differs."""
    return [f"{name}: {getattr(pretrained, name)} (pretrained) vs {getattr(config, name)} (fine-tuning config)"
            for name in ARCHITECTURE_FIELDS if getattr(pretrained, name) != getattr(config, name)]


def pretrained_architecture(source: str | Path) -> ModelConfig:
    """The backbone config of a pretrained source (bundle, run folder or checkpoint), to fine-tune it as it is."""
    return read_backbone(source)[0]


def build_segmentation_net(config: ModelConfig, class_names: Sequence[str], hu_window: tuple[float, float],
                           init: str = SCRATCH, seed: int = 0) -> SegmentationNet:
    """A segmentation network, seeded, its backbone random (``scratch``) or pretrained.

    Args:
        init: ``scratch``, or a pretrained source: a bundle folder of ``alice export-backbone``, an Alice
            pretraining run folder or checkpoint file (the student's encoder and decoder). The head is always
            random.

    Raises:
        InputError: an unreadable source, or one whose architecture differs from ``config`` (fields named).
    """
    torch.manual_seed(seed)
    model = SegmentationNet(config, class_names, hu_window)
    if init != SCRATCH:
        pretrained, state, weights = read_backbone(init)
        differences = architecture_differences(pretrained, config)
        if differences:
            raise InputError(weights, "pretrained backbone does not match the fine-tuning architecture: "
                                      + "; ".join(differences) + " (set model.<field> to the pretrained values)")
        try:
            model.backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise InputError(weights, f"backbone weights do not fit their config: {exc}") from exc
    return model


def initial_weights_hash(init: str) -> str:
    """What a run starts from, by content: ``scratch``, or the SHA-256 of the pretrained weights file, which tells
    a retrained checkpoint apart from the one at the same path before it."""
    from alice.anatomy.cache import content_hash

    return SCRATCH if init == SCRATCH else content_hash(backbone_weights_file(init))


def checkpoint_payload(model: SegmentationNet, config: dict, step: int, **extra) -> dict:
    """A segmentation checkpoint as plain data: kind, format version, config, classes, HU window, weights."""
    from alice import __version__

    return {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "alice_version": __version__,
            "torch_version": str(torch.__version__), "config": config, "model_config": model.config.to_dict(),
            "class_names": list(model.class_names), "hu_window": list(model.hu_window), "step": int(step),
            "model": model.state_dict(), **extra}


def load_segmentation_checkpoint(path: str | Path) -> dict:
    """A segmentation checkpoint (``torch.load(weights_only=True)``).

    Raises:
        InputError: missing or unreadable, or a checkpoint of another kind or format version.
    """
    from alice import runs

    return runs.load_checkpoint_file(path, CHECKPOINT_KIND, FORMAT_VERSION)


def load_segmentation_net(source: str | Path) -> SegmentationNet:
    """A fine-tuned network in eval mode, from a run folder (``checkpoints/last.pt``), a checkpoint file or a
    bundle folder of ``export_bundle``.

    Raises:
        InputError: missing files, or weights that do not fit the stored config.
    """
    from alice import runs

    source = Path(source)
    if (source / "configs" / "segmentation.json").is_file():
        info, config = read_json(source / "configs" / "segmentation.json"), bundle_model_config(source)
        weights = source / "models" / "model.pt"
        if not weights.is_file():
            raise InputError(weights, "missing from the bundle")
        state = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        weights = runs.checkpoint_path(source) if source.is_dir() else source
        payload = load_segmentation_checkpoint(weights)
        info, config, state = payload, ModelConfig.from_dict(payload["model_config"]), payload["model"]
    model = SegmentationNet(config, info["class_names"], info["hu_window"])
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise InputError(weights, f"weights do not fit the stored config: {exc}") from exc
    return model.eval()
