"""SAM network: dense local and global anatomical embeddings of a CT volume, and its checkpoints.

After Yan et al., "SAM: Self-supervised Learning of Pixel-wise Anatomical Embeddings in Radiological Images",
IEEE TMI 2022 (arXiv 2012.02383): a 3D ResNet whose early stages use in-plane kernels, an FPN over stages 1-3 for
the local (fine) embedding at half the input resolution and a one-level FPN on stage 4 for the global (coarse)
embedding. Both are L2-normalised along channels. Tensors are (B, C, X, Y, Z) in canonical RAS; Z is the
depth (superior) axis that the paper strides least.

Every downsampling layer is centred (kernel 3, stride 2, padding 1, or a 1x1x1 strided shortcut), so voxel i of
a map with total stride s sits on input voxel s * i; ``alice.anatomy.grid.grid_affine`` turns that into the
map's world affine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn

from alice import __version__
from alice.atomic import atomic_write
from alice.config import plain_data
from alice.errors import InputError

CHECKPOINT_KIND = "sam"
FORMAT_VERSION = 1
# SAM's intensity scaling: clipped HU mapped to [0, 255], minus 50.
INTENSITY_RANGE = 255.0
INTENSITY_SHIFT = 50.0
INPLANE_KERNEL = (3, 3, 1)
FULL_KERNEL = (3, 3, 3)


@dataclass(frozen=True)
class SAMModelConfig:
    """The network and its input.

    Attributes:
        spacing_mm: isotropic voxel size the network sees; every image is resampled to it.
        hu_clip: HU window before scaling to SAM's [0, 255] - 50.
        base_channels: channels of the stem and stage 1; stage i has base * 2**(i-1).
        blocks_per_stage: residual blocks in stages 1-4 (ResNet-18: 2, 2, 2, 2).
        stage_strides: (x, y, z) stride of stages 1-4. A stride along an axis the stage's kernel does not span
            (z in the in-plane stages) is done by average pooling after the stage (the paper's depth pool).
        inplane_stages: how many early stages use (3, 3, 1) kernels; the rest use (3, 3, 3).
        fpn_channels: width of the FPN heads before their 1x1x1 projection to ``embedding_dim``.
        embedding_dim: channels of both embeddings.
    """

    spacing_mm: float = 4.0
    hu_clip: tuple[float, float] = (-1024.0, 3071.0)
    base_channels: int = 16
    blocks_per_stage: tuple[int, int, int, int] = (2, 2, 2, 2)
    # At 4 mm: local map 8 mm, global map (32, 32, 16) mm, about the paper's (2 mm, /16, /16, /4) global cells.
    stage_strides: tuple[tuple[int, int, int], ...] = ((2, 2, 2), (2, 2, 1), (2, 2, 2), (1, 1, 1))
    inplane_stages: int = 2
    # The head's 3x3x3 conv at the local resolution dominates the cost; 64 wide is 3.5x cheaper than 128.
    fpn_channels: int = 64
    embedding_dim: int = 128


@dataclass(frozen=True)
class SAMTrainConfig:
    """Views, losses and optimiser of SAM pretraining: the CPU preset (``PRESETS["published"]`` has the paper's).

    Attributes:
        crop_shape: voxels of each view at ``spacing_mm`` (paper: 96 x 96 x 32 at 2 mm, the same mm extent).
        zoom_range: each view's random rescale factor (>1 enlarges anatomy).
        independent_crop_probability: chance that the two views are placed independently (may not overlap).
        noise_sd: range of the Gaussian noise SD, in scaled intensity units (1 unit ~ 16 HU).
        blur_sigma_voxels: range of the Gaussian blur SD; blur is applied with ``blur_probability``.
        volumes_per_batch: scans per step, two views each; the other scans give cross-volume negatives.
        temperature: InfoNCE temperature of both losses.
        local_queries: query voxels per view and direction for the local loss.
        local_positive_radius_mm: a query counts when the other view has a voxel this close to it.
        local_ignore_radius_mm: candidates this close to the query are never negatives.
        local_hard_candidates, local_negatives: the most similar candidates by local + global similarity,
            then a random subset of them as negatives (hard-negative mining).
        global_queries, global_positive_radius_mm, global_positive_z_gap_mm, global_ignore_radius_mm,
        global_hard_candidates, global_negatives: the same for the global loss (z gap: at most this far
            apart along the depth axis).
        global_cross_negatives: random global voxels of the batch's other scans added as negatives.
        optimizer: "adamw" (CPU default: learns far more in the ~2,500 steps a CPU affords) or "sgd" (paper).
        lr, weight_decay: of that optimiser; momentum: SGD only.
        warmup_steps: linear warm-up (capped at a tenth of the run), then cosine decay to zero.
        checkpoint_every: steps between writes of ``checkpoints/last.pt``.
    """

    # 192 x 192 x 128 mm at 4 mm: twice the paper's depth, which stops repeated vertebrae being confused.
    crop_shape: tuple[int, int, int] = (48, 48, 32)
    zoom_range: tuple[float, float] = (0.8, 1.2)
    independent_crop_probability: float = 0.2
    noise_sd: tuple[float, float] = (0.0, 2.0)
    blur_sigma_voxels: tuple[float, float] = (0.0, 1.0)
    blur_probability: float = 0.5
    volumes_per_batch: int = 2
    temperature: float = 0.5
    local_queries: int = 100
    # Paper: within 2-5 mm of a 4 mm local grid; ours is 8 mm at the CPU spacing.
    local_positive_radius_mm: float = 5.0
    local_ignore_radius_mm: float = 8.0
    local_hard_candidates: int = 2000
    local_negatives: int = 500
    global_queries: int = 100
    global_positive_radius_mm: float = 25.0
    global_positive_z_gap_mm: float = 10.0
    global_ignore_radius_mm: float = 40.0
    global_hard_candidates: int = 250
    global_negatives: int = 200
    global_cross_negatives: int = 500
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.01
    warmup_steps: int = 500
    checkpoint_every: int = 100


@dataclass(frozen=True)
class SAMConfig:
    """Everything a SAM run needs; stored as plain data in every checkpoint."""

    model: SAMModelConfig = field(default_factory=SAMModelConfig)
    train: SAMTrainConfig = field(default_factory=SAMTrainConfig)

    def to_dict(self) -> dict:
        """Plain data (dicts, lists, numbers, strings) that ``torch.load(weights_only=True)`` accepts."""
        return plain_data(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> SAMConfig:
        """The inverse of ``to_dict``; missing keys take defaults, unknown keys are an error.

        Raises:
            ValueError: an unknown section or key.
            TypeError: a section that is not a mapping, or a value the dataclass rejects.
        """
        _check_keys("config", data, {f.name for f in dataclasses.fields(cls)})
        sections = {}
        for name, section_type in (("model", SAMModelConfig), ("train", SAMTrainConfig)):
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise TypeError(f"config section {name!r} must be a mapping, got {type(values).__name__}")
            _check_keys(f"config section {name!r}", values, {f.name for f in dataclasses.fields(section_type)})
            sections[name] = section_type(**{k: _tuples(v) for k, v in values.items()})
        return cls(**sections)


PRESETS: dict[str, SAMConfig] = {
    "cpu": SAMConfig(),
    # The paper's setting: 2 mm input, ResNet-18 widths and depths, strides (x, y) /16 and z /4 at stage 4.
    "published": SAMConfig(
        SAMModelConfig(spacing_mm=2.0, base_channels=64,
                       stage_strides=((2, 2, 2), (2, 2, 1), (2, 2, 1), (2, 2, 2)), fpn_channels=128),
        SAMTrainConfig(crop_shape=(96, 96, 32), local_positive_radius_mm=3.0, local_ignore_radius_mm=4.0,
                       global_positive_z_gap_mm=6.0, optimizer="sgd", lr=0.02, weight_decay=1e-4,
                       checkpoint_every=1000)),
}


def normalize_hu(hu: torch.Tensor, hu_clip: tuple[float, float]) -> torch.Tensor:
    """SAM's input scaling: HU clipped to ``hu_clip``, mapped to [0, 255], minus 50."""
    low, high = hu_clip
    return (hu.clamp(low, high) - low) * (INTENSITY_RANGE / (high - low)) - INTENSITY_SHIFT


class SAMNet(nn.Module):
    """3D ResNet with two FPN heads; ``forward`` gives unit-norm local and global embeddings.

    Args:
        spacing_mm: voxel size of the input (kept so callers resample to it).
        hu_clip: HU window of ``normalize_hu`` (kept so callers scale with it).
        base_channels: stem and stage-1 channels; doubled at each later stage.
        blocks_per_stage: residual blocks per stage (four stages).
        stage_strides: (x, y, z) stride of each stage.
        inplane_stages: number of early stages with (3, 3, 1) kernels.
        fpn_channels: width of the FPN heads.
        embedding_dim: channels of both embeddings.
    """

    def __init__(self, spacing_mm: float, hu_clip: tuple[float, float], base_channels: int,
                 blocks_per_stage: tuple[int, ...], stage_strides: tuple[tuple[int, int, int], ...],
                 inplane_stages: int, fpn_channels: int, embedding_dim: int):
        super().__init__()
        if len(blocks_per_stage) != 4 or len(stage_strides) != 4:
            raise ValueError(f"SAMNet has 4 stages; got {len(blocks_per_stage)} block counts and "
                             f"{len(stage_strides)} strides")
        if any(s not in (1, 2) for stride in stage_strides for s in stride):
            raise ValueError(f"stage strides must be 1 or 2 per axis, got {stage_strides}")
        self.spacing_mm = float(spacing_mm)
        self.hu_clip = (float(hu_clip[0]), float(hu_clip[1]))
        self.stem = Convolution(3, 1, base_channels, strides=1, kernel_size=(7, 7, 3), norm="batch", act="relu")
        channels = [base_channels * 2 ** i for i in range(4)]
        self.stages = nn.ModuleList()
        in_channels = base_channels
        for i, (blocks, stride, out_channels) in enumerate(zip(blocks_per_stage, stage_strides, channels)):
            kernel = INPLANE_KERNEL if i < inplane_stages else FULL_KERNEL
            self.stages.append(_stage(in_channels, out_channels, blocks, kernel, stride))
            in_channels = out_channels
        self.local_head = FPNHead(channels[:3], fpn_channels, embedding_dim)
        self.global_head = FPNHead(channels[3:], fpn_channels, embedding_dim)
        total = np.cumprod(np.array(stage_strides), axis=0)
        self.local_stride: tuple[int, int, int] = tuple(int(s) for s in total[0])
        self.global_stride: tuple[int, int, int] = tuple(int(s) for s in total[3])

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage 1-4 feature maps of a scaled input (B, 1, X, Y, Z)."""
        features = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Embeddings of a scaled input (B, 1, X, Y, Z) (see ``normalize_hu``).

        Returns:
            "local": (B, D, ceil(X/2), ceil(Y/2), ceil(Z/2)) at ``local_stride``; "global": (B, D, ...) at
            ``global_stride``; both unit-norm along D.
        """
        f1, f2, f3, f4 = self.forward_features(x)
        local = self.local_head([f1, f2, f3])
        coarse = self.global_head([f4])
        return {"local": F.normalize(local, dim=1), "global": F.normalize(coarse, dim=1)}


class FPNHead(nn.Module):
    """Feature pyramid down to the finest level only: 1x1x1 laterals, nearest top-down upsampling and sum,
    a 3x3x3 conv, ReLU, and a 1x1x1 projection to the embedding.

    Args:
        in_channels: channels of each level, finest first.
        fpn_channels: width of the laterals and the 3x3x3 conv.
        out_channels: embedding channels.
    """

    def __init__(self, in_channels: list[int], fpn_channels: int, out_channels: int):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv3d(c, fpn_channels, 1) for c in in_channels)
        self.smooth = nn.Conv3d(fpn_channels, fpn_channels, 3, padding=1)
        self.project = nn.Conv3d(fpn_channels, out_channels, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Levels finest first, each (B, C_i, ...); returns (B, out_channels) at the finest level's grid."""
        x = self.laterals[-1](features[-1])
        for lateral, feature in zip(self.laterals[-2::-1], features[-2::-1]):
            x = lateral(feature) + F.interpolate(x, size=feature.shape[2:], mode="nearest")
        return self.project(F.relu(self.smooth(x)))


def _stage(in_channels: int, out_channels: int, blocks: int, kernel: tuple[int, int, int],
           stride: tuple[int, int, int]) -> nn.Sequential:
    """Residual blocks; the first one strides along the axes its kernel spans, a pool strides the others."""
    conv_stride = tuple(s if k > 1 else 1 for k, s in zip(kernel, stride))
    pool_stride = tuple(s if k == 1 else 1 for k, s in zip(kernel, stride))
    layers: list[nn.Module] = [UnetResBlock(3, in_channels, out_channels, kernel, conv_stride, norm_name="batch",
                                            act_name="relu")]
    layers += [UnetResBlock(3, out_channels, out_channels, kernel, 1, norm_name="batch", act_name="relu")
               for _ in range(blocks - 1)]
    if any(s > 1 for s in pool_stride):
        # Kernel 3 / padding 1 keeps output voxel i centred on input voxel 2i, like the strided convs.
        layers.append(nn.AvgPool3d(tuple(3 if s > 1 else 1 for s in pool_stride), pool_stride,
                                   tuple(1 if s > 1 else 0 for s in pool_stride), count_include_pad=False))
    return nn.Sequential(*layers)


def build_sam(config: SAMConfig | dict) -> SAMNet:
    """A fresh ``SAMNet`` from a config (or its plain-data form)."""
    if isinstance(config, dict):
        config = SAMConfig.from_dict(config)
    m = config.model
    return SAMNet(m.spacing_mm, m.hu_clip, m.base_channels, m.blocks_per_stage, m.stage_strides, m.inplane_stages,
                  m.fpn_channels, m.embedding_dim)


@dataclass(frozen=True, eq=False)
class SAMCheckpoint:
    """A loaded checkpoint: the rebuilt network (eval mode), its config and the step it was saved at."""

    model: SAMNet
    config: SAMConfig
    step: int
    alice_version: str


def save_sam(path: str | Path, model: SAMNet, config: SAMConfig, step: int) -> Path:
    """Write a checkpoint atomically: kind, format version, package version, config as plain data, weights."""
    payload = {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION, "alice_version": __version__,
               "config": config.to_dict(), "step": int(step),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_sam(path: str | Path) -> SAMCheckpoint:
    """Rebuild a network from a checkpoint alone.

    Raises:
        InputError: unreadable file, another kind or format version, or a config / weights that do not fit.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint file")
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise InputError(path, f"cannot read as a checkpoint (truncated or not a torch file?): {exc}") from exc
    if not isinstance(payload, dict):
        raise InputError(path, f"holds a {type(payload).__name__}, not a checkpoint dict")
    kind = payload.get("kind")
    if kind != CHECKPOINT_KIND:
        raise InputError(path, f"is a checkpoint of kind {kind!r}; expected kind {CHECKPOINT_KIND!r}")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(path, f"has format_version {version!r}; this code reads format_version {FORMAT_VERSION} "
                               f"(written by alice {payload.get('alice_version', 'unknown')})")
    missing = [k for k in ("config", "state_dict") if k not in payload]
    if missing:
        raise InputError(path, f"checkpoint lacks {missing}")
    try:
        config = SAMConfig.from_dict(payload["config"])
        model = build_sam(config)
        model.load_state_dict(payload["state_dict"])
    except (ValueError, TypeError, RuntimeError) as exc:
        raise InputError(path, f"checkpoint config or weights do not fit the SAM network: {exc}") from exc
    model.eval()
    return SAMCheckpoint(model, config, int(payload.get("step", 0)), str(payload.get("alice_version", "unknown")))


def _tuples(value):
    """Lists back to the tuples the dataclasses hold."""
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value


def _check_keys(what: str, data: dict, known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{what} has unknown key(s) {unknown}; known: {sorted(known)}")
