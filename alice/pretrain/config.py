"""The whole Alice pretraining config: frozen dataclasses, presets, YAML, ``--set`` overrides and validation.

One mechanism end to end: a preset gives the defaults, a YAML file overrides them, ``--set a.b=c`` overrides
both. Unknown keys are an error, values are checked against the field types, and ``validate`` reports every
inconsistency at start, naming the values. Checkpoints and ``config.yaml`` hold ``to_dict()`` (plain data).
Defaults follow ALICE_METHOD.md: the paper's description, with flags for the official code's variant.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from alice import paths
from alice.atomic import atomic_write_text
from alice.config import apply_overrides, build_dataclass, merge, plain_data
from alice.errors import InputError
from alice.mining.views import MODES
from alice.models.build import PRESETS as MODEL_PRESETS
from alice.models.build import ModelConfig
from alice.pretrain.masking import MASK_SHAPES

KV_SOURCES = ("teacher_encoder", "teacher_decoder")
TARGET_ATTNS = ("ema", "shared")
TARGET_QUERIES = ("teacher", "student")


@dataclass(frozen=True)
class DataConfig:
    """Which cases views are mined from.

    Attributes:
        manifest: cohort manifest CSV; empty means the shipped sample cohort.
        split: the manifest split used for training.
    """

    manifest: str = ""
    split: str = "train"


@dataclass(frozen=True)
class ViewConfig:
    """Online view-pair mining and cropping; crops are ``model.roi`` voxels on a side (the model's input).

    Attributes:
        mode: ``sam`` (cross-patient, SAM-matched: Alice), ``random_cross`` or ``same_volume`` (ablations).
        threshold: SAM score a match must reach; otherwise the query point is redrawn.
        max_tries: query points per pair at most (the best match is kept when none reaches the threshold).
        margin_voxels: query points stay this far from the volume border.
        hu_window: HU mapped linearly to [0, 1] (clipped); padding outside the volume is 0.
        sam_checkpoint: SAM checkpoint for ``sam`` mode; empty means ``alice.paths.sam_checkpoint()``.
    """

    mode: str = "sam"
    threshold: float = 0.7
    max_tries: int = 100
    margin_voxels: int = 10
    hu_window: tuple[float, float] = (-125.0, 225.0)
    sam_checkpoint: str = ""


@dataclass(frozen=True)
class MaskConfig:
    """The student's input masks (see ``alice.pretrain.masking``).

    Attributes:
        cell_voxels: edge of a mask cell in voxels.
        ratio: fraction of cells masked (rounded up); 0 turns masked image modelling off.
        shape: ``tube`` (official: cells on the first two axes, through the depth) or ``cube``.
    """

    cell_voxels: int = 16
    ratio: float = 0.75
    shape: str = "tube"


@dataclass(frozen=True)
class LossConfig:
    """The three losses and the CAFA variant.

    Attributes:
        cls_weight: lambda1 of the inter-volume cls loss.
        patch_weight: lambda2 of the intra-volume (CAFA) token loss.
        rec_weight: lambda3 of the reconstruction MSE (1 in the first official release, 10 in the latest).
        rec_masked_only: MSE over the masked voxels only (default: all voxels, as the official code).
        student_temp: student softmax temperature.
        teacher_temp_start: teacher temperature at step 0.
        teacher_temp: teacher temperature after the warm-up.
        teacher_temp_warmup_steps: steps of the linear teacher-temperature warm-up (a shorter run ends during it).
        centre_momentum: EMA momentum of the cls and patch centres.
        uniformity_weight: weight of a uniformity term on the student's cls embeddings against a queue of its
            recent ones (``alice.pretrain.losses.UniformityLoss``; not in Alice; 0 = off, the paper).
        uniformity_queue: student cls embeddings in that queue.
        correspondence_weight: weight of a token-level InfoNCE across window placements and across the two
            patients of a pair (``alice.pretrain.losses.CorrespondenceLoss``; not in Alice; 0 = off, the paper).
            On, the teacher also sees a crop of each view's scan shifted by about one bottleneck cell along 1-3
            axes (``alice.pretrain.views.shifted_crops``).
        correspondence_temp: its temperature.
        correspondence_bank: teacher tokens per token grid kept as its global negatives: the far places of the
            same scan (``alice.pretrain.losses.TokenBank``); 0 = none, each softmax then spans one crop.
        cafa: align tokens with CAFA; off = direct same-view CE between student and teacher decoder tokens.
        kv_source: keys/values of the teacher branch: ``teacher_encoder`` (paper) or ``teacher_decoder`` (code).
        target_attn: attention of the teacher branch: ``ema`` copy (paper) or ``shared`` with the student (code).
        target_queries: queries of the teacher branch: the ``teacher``'s encoder tokens of the unmasked view
            (default), or the ``student``'s encoder tokens of the masked view, as the official code (and, as far
            as Fig. 3 shows, the paper). With the student's, both branches carry the same queries through the
            residual and the loss is met by silencing the attention (the token loss fell to 0 within 50 steps).
    """

    cls_weight: float = 1.0
    patch_weight: float = 1.0
    rec_weight: float = 1.0
    rec_masked_only: bool = False
    student_temp: float = 0.1
    teacher_temp_start: float = 0.008
    teacher_temp: float = 0.01
    teacher_temp_warmup_steps: int = 7500
    centre_momentum: float = 0.9
    uniformity_weight: float = 0.0
    uniformity_queue: int = 256
    correspondence_weight: float = 0.0
    correspondence_temp: float = 0.1
    correspondence_bank: int = 0
    cafa: bool = True
    kv_source: str = "teacher_encoder"
    target_attn: str = "ema"
    target_queries: str = "teacher"


@dataclass(frozen=True)
class OptimConfig:
    """AdamW, per-step schedules and the update.

    Attributes:
        lr: peak learning rate, used as given (the official code scales by batch * world / 256).
        min_lr: learning rate at the last step; below ``lr``.
        warmup_steps: linear LR warm-up (a shorter run ends during it).
        weight_decay_start: weight decay at step 0 (cosine to ``weight_decay_end``); never on biases and norms.
        weight_decay_end: weight decay at the last step.
        momentum_start: teacher EMA momentum at step 0 (cosine to ``momentum_end``).
        momentum_end: teacher EMA momentum at the last step.
        clip_grad: per-parameter gradient-norm clip (DINO style); 0 turns it off.
        freeze_last_layer_steps: the prototype layers get no update for this many first steps.
        batch_pairs: view pairs per rank and micro-batch.
        grad_accumulation: micro-batches per optimiser step.
        bf16: bf16 autocast on CUDA (ignored on CPU).
    """

    lr: float = 1e-4
    min_lr: float = 1e-6
    warmup_steps: int = 12500
    weight_decay_start: float = 0.04
    weight_decay_end: float = 0.4
    momentum_start: float = 0.996
    momentum_end: float = 1.0
    clip_grad: float = 3.0
    freeze_last_layer_steps: int = 250
    batch_pairs: int = 1
    grad_accumulation: int = 1
    bf16: bool = True


@dataclass(frozen=True)
class RunConfig:
    """Length, checkpoints, logging and seed of a run.

    Attributes:
        steps: optimiser steps.
        checkpoint_every: steps between checkpoints (one is also written at the end and on a stop request).
        log_every: steps between metrics records (each the mean over its steps).
        seed: seeds weights, view sampling, masks and dropout; rank r samples with (seed, r).
    """

    steps: int = 125000
    checkpoint_every: int = 1000
    log_every: int = 10
    seed: int = 0


@dataclass(frozen=True)
class PretrainConfig:
    """Everything an Alice pretraining run needs; stored as plain data in every checkpoint."""

    model: ModelConfig = field(default_factory=lambda: MODEL_PRESETS["paper"])
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        """Plain data (dicts, lists, numbers, strings) that YAML and ``torch.load(weights_only=True)`` accept."""
        return plain_data(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> PretrainConfig:
        """The inverse of ``to_dict``; missing keys take the dataclass defaults.

        Raises:
            InputError: an unknown key or a value of the wrong type, named by its dotted key.
        """
        return build_dataclass(cls, data, "")


# The official schedule at 2,000 cases on 8 GPUs (one pair each): 250 steps per epoch, 500 epochs, LR warm-up
# 50 epochs, teacher-temperature warm-up 30 epochs, prototypes frozen for 1 epoch.
PRESETS: dict[str, PretrainConfig] = {
    "paper": PretrainConfig(),
    # About 1 s per step on 2 CPU cores (ALICE_DETAILS.md section 9.2).
    "cpu-tiny": PretrainConfig(
        model=MODEL_PRESETS["cpu-tiny"],
        # One pair per step: a uniformity term against the cls collapse (not in Alice; it does not prevent it,
        # README); the correspondence term asks the tokens to locate anatomy across the scan (not in Alice, README).
        loss=LossConfig(teacher_temp_warmup_steps=300, uniformity_weight=1.0, correspondence_weight=1.0,
                        correspondence_bank=4096),
        optim=OptimConfig(lr=5e-4, min_lr=1e-5, warmup_steps=100, freeze_last_layer_steps=50),
        run=RunConfig(steps=2000, checkpoint_every=50, log_every=5)),
}


def load_config(preset: str = "cpu-tiny", file: str | Path | None = None,
                overrides: typing.Sequence[str] = ()) -> PretrainConfig:
    """A validated config: the preset, then the YAML file, then ``key=value`` overrides (dotted keys).

    Raises:
        InputError: an unknown preset, an unreadable file, a malformed override, an unknown key, a value of the
            wrong type, or an inconsistent config.
    """
    if preset not in PRESETS:
        raise InputError(None, f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    data = PRESETS[preset].to_dict()
    if file is not None:
        merge(data, read_yaml(file))
    apply_overrides(data, overrides)
    config = PretrainConfig.from_dict(data)
    validate(config)
    return config


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping.

    Raises:
        InputError: missing or unreadable file, or a document that is not a mapping.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InputError(path, f"is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(path, f"must hold a mapping of config sections, not a {type(data).__name__}")
    return data


def save_config(config: PretrainConfig, path: str | Path) -> Path:
    """Write a config as YAML that ``load_config(file=...)`` reads back."""
    return atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def resolve_config(config: PretrainConfig) -> PretrainConfig:
    """The config with default paths filled in (the shipped cohort, the app's SAM checkpoint), as a run records it."""
    data = config.data if config.data.manifest else dataclasses.replace(config.data,
                                                                        manifest=str(paths.SAMPLE_MANIFEST))
    views = config.views
    if views.mode == "sam" and not views.sam_checkpoint:
        views = dataclasses.replace(views, sam_checkpoint=str(paths.sam_checkpoint()))
    return dataclasses.replace(config, data=data, views=views)


def validate(config: PretrainConfig) -> None:
    """Refuse an inconsistent config before anything runs, naming every offending value.

    Raises:
        InputError: one message listing every problem.
    """
    problems = []

    def check(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    views, mask, loss, optim, run = config.views, config.mask, config.loss, config.optim, config.run
    check(views.mode in MODES, f"views.mode={views.mode!r} is not one of {list(MODES)}")
    check(views.max_tries >= 1, f"views.max_tries={views.max_tries} must be at least 1")
    check(views.margin_voxels >= 0, f"views.margin_voxels={views.margin_voxels} must not be negative")
    low, high = views.hu_window
    check(math.isfinite(low) and math.isfinite(high) and low < high,
          f"views.hu_window=[{low:g}, {high:g}] is impossible: the lower bound must be below the upper")
    check(mask.cell_voxels > 0, f"mask.cell_voxels={mask.cell_voxels} must be positive")
    check(mask.cell_voxels <= 0 or config.model.roi % mask.cell_voxels == 0,
          f"the crop model.roi={config.model.roi} is not a multiple of mask.cell_voxels={mask.cell_voxels}")
    check(0 <= mask.ratio < 1, f"mask.ratio={mask.ratio:g} is not in [0, 1)")
    check(mask.shape in MASK_SHAPES, f"mask.shape={mask.shape!r} is not one of {list(MASK_SHAPES)}")
    check(config.model.head_out_dim == config.model.head_patch_out_dim,
          f"model.head_out_dim={config.model.head_out_dim} must equal model.head_patch_out_dim="
          f"{config.model.head_patch_out_dim}: the teacher shares one prototype layer for cls and tokens")
    weights = (loss.cls_weight, loss.patch_weight, loss.rec_weight)
    check(all(w >= 0 for w in weights) and any(w > 0 for w in weights),
          f"loss weights cls={loss.cls_weight:g}, patch={loss.patch_weight:g}, rec={loss.rec_weight:g} must be "
          "non-negative and not all 0")
    check(not loss.rec_masked_only or mask.ratio > 0,
          "loss.rec_masked_only=true needs masked voxels, but mask.ratio=0")
    for name in ("student_temp", "teacher_temp_start", "teacher_temp"):
        check(getattr(loss, name) > 0, f"loss.{name}={getattr(loss, name):g} must be positive")
    check(loss.teacher_temp_warmup_steps >= 0,
          f"loss.teacher_temp_warmup_steps={loss.teacher_temp_warmup_steps} must not be negative")
    check(0 <= loss.centre_momentum < 1, f"loss.centre_momentum={loss.centre_momentum:g} is not in [0, 1)")
    check(loss.uniformity_weight >= 0, f"loss.uniformity_weight={loss.uniformity_weight:g} must not be negative")
    check(loss.correspondence_weight >= 0,
          f"loss.correspondence_weight={loss.correspondence_weight:g} must not be negative")
    check(loss.correspondence_temp > 0, f"loss.correspondence_temp={loss.correspondence_temp:g} must be positive")
    check(loss.correspondence_bank >= 0,
          f"loss.correspondence_bank={loss.correspondence_bank} must not be negative")
    check(loss.uniformity_queue >= 1, f"loss.uniformity_queue={loss.uniformity_queue} must be at least 1")
    check(loss.kv_source in KV_SOURCES, f"loss.kv_source={loss.kv_source!r} is not one of {list(KV_SOURCES)}")
    check(loss.target_attn in TARGET_ATTNS,
          f"loss.target_attn={loss.target_attn!r} is not one of {list(TARGET_ATTNS)}")
    check(loss.target_queries in TARGET_QUERIES,
          f"loss.target_queries={loss.target_queries!r} is not one of {list(TARGET_QUERIES)}")
    check(optim.lr > 0, f"optim.lr={optim.lr:g} must be positive")
    check(0 <= optim.min_lr < optim.lr,
          f"optim.min_lr={optim.min_lr:g} must be at least 0 and below the peak optim.lr={optim.lr:g}")
    check(optim.warmup_steps >= 0, f"optim.warmup_steps={optim.warmup_steps} must not be negative")
    check(optim.weight_decay_start >= 0 and optim.weight_decay_end >= 0,
          f"optim.weight_decay_start={optim.weight_decay_start:g} and optim.weight_decay_end="
          f"{optim.weight_decay_end:g} must not be negative")
    check(0 <= optim.momentum_start <= 1 and 0 <= optim.momentum_end <= 1,
          f"optim.momentum_start={optim.momentum_start:g} and optim.momentum_end={optim.momentum_end:g} must be "
          "in [0, 1]")
    check(optim.clip_grad >= 0, f"optim.clip_grad={optim.clip_grad:g} must not be negative (0 = no clipping)")
    check(optim.freeze_last_layer_steps >= 0,
          f"optim.freeze_last_layer_steps={optim.freeze_last_layer_steps} must not be negative")
    check(optim.batch_pairs >= 1, f"optim.batch_pairs={optim.batch_pairs} must be at least 1")
    check(optim.grad_accumulation >= 1, f"optim.grad_accumulation={optim.grad_accumulation} must be at least 1")
    check(run.steps >= 1, f"run.steps={run.steps} must be at least 1")
    check(run.checkpoint_every >= 1, f"run.checkpoint_every={run.checkpoint_every} must be at least 1")
    check(run.log_every >= 1, f"run.log_every={run.log_every} must be at least 1")
    if problems:
        raise InputError(None, "invalid pretraining config: " + "; ".join(problems))
