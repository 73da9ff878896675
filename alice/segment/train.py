"""Fine-tuning for segmentation: a scratch or Alice-initialised network trained on a few labelled cases.

The downstream protocol of Alice (Jiang et al., ICCV 2023) at CPU scale: random crops of ``model.roi`` voxels,
biased to the labelled structures, from the first ``data.train_cases`` labelled cases of the training split; HU
windowed as in pretraining; MONAI DiceCELoss (softmax, Dice without background); AdamW with a cosine learning
rate. Flips are off by default because anatomy is lateralised (left and right kidney differ only by side).

The run folder follows ``alice.runs``: ``config.yaml``, ``status.json``, ``metrics.jsonl`` (the loss of every
step, validation Dice every ``run.val_every`` steps), ``train.log``, TensorBoard events and
``checkpoints/{last,best}.pt`` (best = highest validation Dice), written atomically; a ``STOP`` file ends the run
after a checkpoint, and ``resume=True`` continues exactly (weights, optimiser, crop sampler and torch RNG).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.losses import DiceCELoss

from alice import paths, runs
from alice.atomic import atomic_write
from alice.config import apply_overrides, build_dataclass, plain_data
from alice.data.cohort import LoadedCase, load_case, load_manifest
from alice.data.io import AIR_HU
from alice.errors import InputError
from alice.models.build import PRESETS as MODEL_PRESETS
from alice.models.build import ModelConfig
from alice.pretrain.config import ViewConfig
from alice.pretrain.schedules import lr_schedule
from alice.pretrain.train import parameter_groups
from alice.pretrain.views import window_hu
from alice.segment.labels import LabelSet, get_label_set, remap
from alice.segment.metrics import average_scores, mean_of, segmentation_scores
from alice.segment.network import (
    SCRATCH,
    SegmentationNet,
    build_segmentation_net,
    checkpoint_payload,
    initial_weights_hash,
    load_segmentation_checkpoint,
    pretrained_architecture,
)
from alice.segment.predict import predict_case

log = logging.getLogger(__name__)

RUN_KIND = "segment"


@dataclass(frozen=True)
class SegDataConfig:
    """Which cases train and validate, and how their labels and intensities are read.

    Attributes:
        manifest: cohort manifest CSV; empty means the shipped sample cohort.
        label_set: a name of ``alice.segment.labels.LABEL_SETS`` or a Decathlon-style ``dataset.json``.
        split: the training split.
        origins: manifest origins used (the sample cohort trains on its pseudo-subjects only).
        train_cases: at most this many labelled training cases, in manifest order.
        val_split: split of the validation cases. The sample cohort has no labelled organ case in ``val``, so
            its held-out ``test`` split is monitored; evaluation scores ``last.pt``, never ``best.pt``.
        val_cases: at most this many labelled validation cases (0 = no validation, no ``best.pt``).
        hu_window: HU mapped to [0, 1]; the pretraining window (``ViewConfig.hu_window``) by default.
    """

    manifest: str = ""
    label_set: str = "organs"
    split: str = "train"
    origins: tuple[str, ...] = ("pseudo",)
    train_cases: int = 4
    val_split: str = "test"
    val_cases: int = 1
    hu_window: tuple[float, float] = ViewConfig().hu_window


@dataclass(frozen=True)
class SegOptimConfig:
    """AdamW with linear warm-up and cosine decay of the learning rate.

    Attributes:
        lr: peak learning rate of the backbone.
        min_lr: learning rate of the backbone at the last step.
        head_lr_scale: the new output layer learns this many times faster: it starts from nothing, and its logits
            grow only as fast as AdamW moves its weights.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay (none on biases and norms).
        batch_size: crops per step.
    """

    lr: float = 1e-3
    min_lr: float = 1e-5
    head_lr_scale: float = 5.0
    warmup_steps: int = 20
    weight_decay: float = 1e-4
    batch_size: int = 2


@dataclass(frozen=True)
class AugmentConfig:
    """Crop sampling and augmentation.

    Attributes:
        foreground_fraction: share of crops centred on a voxel of a class (drawn uniformly among the case's
            classes, so small organs are seen); the others are centred anywhere in the volume.
        flip_prob: probability of a flip along each axis (off: anatomy is lateralised).
        contrast: before windowing, a crop's HU above air are scaled by a uniform factor in [1 - c, 1 + c]:
            scanners and patients differ by about that much (soft tissue moves by up to ~100 HU, a third of the
            default window), more than the shift and scale below can imitate.
        intensity_shift: crops get a uniform shift in [-s, s] of the windowed [0, 1] values.
        intensity_scale: and a uniform scale in [1 - s, 1 + s].
    """

    foreground_fraction: float = 0.67
    flip_prob: float = 0.0
    contrast: float = 0.1
    intensity_shift: float = 0.1
    intensity_scale: float = 0.1


@dataclass(frozen=True)
class SegRunConfig:
    """Length, validation, checkpoints, logging and seed.

    The defaults fit a run in under 10 minutes on 2 CPU cores with the ``cpu-tiny`` network: about 0.75 s per
    step (batch 2, roi 48) and about 15 s per validation of a sample case (sliding window); the measured run
    times are in bench/RESULTS.md (segmentation).

    Attributes:
        steps: optimiser steps.
        val_every: steps between validations (also at the last step).
        checkpoint_every: steps between checkpoints (also at the end, on a stop and at a new best).
        seed: seeds the head (and a scratch backbone), the crops and dropout.
        tensorboard: also write TensorBoard events.
    """

    steps: int = 600
    val_every: int = 200
    checkpoint_every: int = 50
    seed: int = 0
    tensorboard: bool = True


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run needs; stored as plain data in ``config.yaml`` and every checkpoint.

    Attributes:
        init: ``scratch`` or a pretrained source (Alice run folder, checkpoint or exported backbone bundle).
    """

    init: str = SCRATCH
    model: ModelConfig = field(default_factory=lambda: MODEL_PRESETS["cpu-tiny"])
    data: SegDataConfig = field(default_factory=SegDataConfig)
    optim: SegOptimConfig = field(default_factory=SegOptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    run: SegRunConfig = field(default_factory=SegRunConfig)

    def to_dict(self) -> dict:
        """Plain data for YAML and ``torch.load(weights_only=True)``."""
        return plain_data(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> FinetuneConfig:
        """The inverse of ``to_dict``; missing keys take defaults.

        Raises:
            InputError: an unknown key or a value of the wrong type, named by its dotted key.
        """
        return build_dataclass(cls, data, "")


def default_config(init: str = SCRATCH) -> FinetuneConfig:
    """The defaults, fine-tuning from ``init``; a pretrained source brings its own architecture, so it loads."""
    if init == SCRATCH:
        return FinetuneConfig()
    model = dataclasses.replace(pretrained_architecture(init), drop_path=FinetuneConfig().model.drop_path)
    return FinetuneConfig(init=init, model=model)


def load_finetune_config(overrides=(), base: FinetuneConfig | None = None) -> FinetuneConfig:
    """A validated config: ``base`` (default: the defaults), then ``key=value`` overrides (dotted keys).

    Raises:
        InputError: a malformed override, an unknown key, a wrong type or an inconsistent config.
    """
    data = apply_overrides((base or FinetuneConfig()).to_dict(), overrides)
    config = FinetuneConfig.from_dict(data)
    validate(config)
    return config


def resolve_config(config: FinetuneConfig) -> FinetuneConfig:
    """Paths made absolute (the shipped cohort for an empty manifest), as a run records them, so the same run
    started from another folder has the same config."""

    def absolute(path: str) -> str:
        return str(Path(path).expanduser().resolve())

    data = config.data
    data = dataclasses.replace(data, manifest=absolute(data.manifest or str(paths.SAMPLE_MANIFEST)),
                               label_set=absolute(data.label_set) if data.label_set.endswith(".json")
                               else data.label_set)
    return dataclasses.replace(config, data=data, init=config.init if config.init == SCRATCH else absolute(config.init))


def validate(config: FinetuneConfig) -> None:
    """Refuse an inconsistent config before anything runs, naming every offending value.

    Raises:
        InputError: one message listing every problem.
    """
    data, optim, augment, run = config.data, config.optim, config.augment, config.run
    problems = []

    def check(ok: bool, problem: str) -> None:
        if not ok:
            problems.append(problem)

    check(config.init == SCRATCH or Path(config.init).exists(),
          f"init={config.init!r} is neither 'scratch' nor an existing run folder, checkpoint or bundle")
    check(data.train_cases >= 1, f"data.train_cases={data.train_cases} must be at least 1")
    check(data.val_cases >= 0, f"data.val_cases={data.val_cases} must not be negative")
    low, high = data.hu_window
    check(low < high, f"data.hu_window=[{low:g}, {high:g}]: the lower bound must be below the upper")
    check(optim.lr > 0 and 0 <= optim.min_lr < optim.lr,
          f"optim.lr={optim.lr:g} must be positive and optim.min_lr={optim.min_lr:g} in [0, lr)")
    check(optim.head_lr_scale > 0, f"optim.head_lr_scale={optim.head_lr_scale:g} must be positive")
    check(optim.warmup_steps >= 0, f"optim.warmup_steps={optim.warmup_steps} must not be negative")
    check(optim.weight_decay >= 0, f"optim.weight_decay={optim.weight_decay:g} must not be negative")
    check(optim.batch_size >= 1, f"optim.batch_size={optim.batch_size} must be at least 1")
    check(0 <= augment.foreground_fraction <= 1,
          f"augment.foreground_fraction={augment.foreground_fraction:g} is not in [0, 1]")
    check(0 <= augment.flip_prob <= 1, f"augment.flip_prob={augment.flip_prob:g} is not in [0, 1]")
    check(0 <= augment.contrast < 1, f"augment.contrast={augment.contrast:g} is not in [0, 1)")
    check(0 <= augment.intensity_scale < 1, f"augment.intensity_scale={augment.intensity_scale:g} is not in [0, 1)")
    check(augment.intensity_shift >= 0, f"augment.intensity_shift={augment.intensity_shift:g} must not be negative")
    for name in ("steps", "val_every", "checkpoint_every"):
        check(getattr(run, name) >= 1, f"run.{name}={getattr(run, name)} must be at least 1")
    try:
        get_label_set(data.label_set)
    except InputError as exc:
        problems.append(str(exc))
    if problems:
        raise InputError(None, "invalid fine-tuning config: " + "; ".join(problems))


def labelled_cases(manifest: str | Path, split: str, origins: tuple[str, ...], limit: int | None,
                   label_set: LabelSet) -> list[tuple[LoadedCase, np.ndarray]]:
    """Up to ``limit`` (None: all) cases of a split and of the given origins, in manifest order, with their label
    maps as class indices of ``label_set``. A case without a label map, or whose labels hold none of the classes,
    is skipped with a warning.

    Raises:
        InputError: an unreadable manifest or case, or a label map with values outside a dataset label set.
    """
    cases = []
    for record in load_manifest(manifest).split(split):
        if len(cases) == limit:
            break
        if record.origin not in origins:
            continue
        if record.label is None:
            log.warning("%s: no label map; skipped", record.case_id)
            continue
        case = load_case(record)
        classes = remap(case.label.array, case.label_names, label_set, record.label)
        if not classes.any():
            log.warning("%s: its labels hold none of the %s classes; skipped", record.case_id, label_set.name)
            continue
        cases.append((case, classes))
    return cases


@dataclass(frozen=True, eq=False)
class TrainingCase:
    """A case ready for cropping: HU and class map, padded with air and background by half a crop on every side,
    so the crop centred on voxel c of the original grid is ``[c, c + roi)`` of the padded one along each axis.

    Attributes:
        case_id: the manifest's case id.
        hu: (X + R, Y + R, Z + R) float32 HU (windowed per crop, after the contrast augmentation).
        classes: the same shape, uint8 class indices.
        voxels: class -> flat indices (original grid) of its voxels, for foreground-biased crops.
        shape: the original grid.
    """

    case_id: str
    hu: np.ndarray
    classes: np.ndarray
    voxels: dict[int, np.ndarray]
    shape: tuple[int, int, int]

    @classmethod
    def prepare(cls, case: LoadedCase, classes: np.ndarray, roi: int) -> TrainingCase:
        half = roi // 2
        flat = classes.ravel()
        voxels = {int(c): np.flatnonzero(flat == c) for c in np.unique(flat) if c != 0}
        hu = np.pad(case.image.array.astype(np.float32), half, constant_values=AIR_HU)
        return cls(case.record.case_id, hu, np.pad(classes, half), voxels, classes.shape)


class CropSampler:
    """Batches of (image, class) crops, every random choice from one seeded generator so a resumed run draws the
    same crops (MONAI's random transforms each hold their own state; this is the whole sampler in a few lines).

    Args:
        cases: the training cases.
        roi: crop edge in voxels.
        batch_size: crops per batch.
        augment: foreground bias, flips and intensity changes.
        hu_window: HU mapped to the network's [0, 1].
        seed: seeds the generator.
    """

    def __init__(self, cases: list[TrainingCase], roi: int, batch_size: int, augment: AugmentConfig,
                 hu_window: tuple[float, float], seed: int):
        self.cases, self.roi, self.batch_size, self.augment = cases, roi, batch_size, augment
        self.hu_window = hu_window
        self.rng = np.random.default_rng(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, R, R, R) float32 and class indices (B, 1, R, R, R) int64."""
        images, labels = [], []
        rng, augment = self.rng, self.augment
        for _ in range(self.batch_size):
            case = self.cases[rng.integers(len(self.cases))]
            if rng.random() < augment.foreground_fraction:
                voxels = case.voxels[list(case.voxels)[rng.integers(len(case.voxels))]]
                centre = np.unravel_index(voxels[rng.integers(len(voxels))], case.shape)
            else:
                centre = [rng.integers(n) for n in case.shape]
            window = tuple(slice(c, c + self.roi) for c in centre)
            contrast = 1 + rng.uniform(-augment.contrast, augment.contrast)
            image = window_hu((case.hu[window] - AIR_HU) * contrast + AIR_HU, self.hu_window)
            label = case.classes[window]
            for axis in range(3):
                if rng.random() < augment.flip_prob:
                    image, label = np.flip(image, axis), np.flip(label, axis)
            scale = 1 + rng.uniform(-augment.intensity_scale, augment.intensity_scale)
            images.append(image * scale + rng.uniform(-augment.intensity_shift, augment.intensity_shift))
            labels.append(label)
        images, labels = np.stack(images)[:, None].astype(np.float32), np.stack(labels)[:, None].astype(np.int64)
        return torch.from_numpy(images), torch.from_numpy(labels)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]


def finetune(config: FinetuneConfig, out_dir: str | Path, resume: bool = False,
             progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Fine-tune a segmentation network into a run folder, or continue one.

    Args:
        config: the run's config; paths are resolved and recorded in ``config.yaml``.
        out_dir: the run folder (``alice.runs`` contract).
        resume: continue from ``checkpoints/last.pt``; the config must equal the checkpoint's.
        progress: called after every step (its metrics and checkpoint written) with (step, total, record).

    Returns:
        The last checkpoint.

    Raises:
        InputError: an invalid config, a run folder that already holds a run (without ``resume``) or none (with
            it), a config that differs from the one being resumed (keys named), unreadable data, no labelled
            training case, or a pretrained source of another architecture.
        RuntimeError: a non-finite loss.
    """
    config = resolve_config(config)
    validate(config)
    out_dir = Path(out_dir)
    payload = _resume_payload(config, out_dir) if resume else None
    if not resume and (runs.checkpoint_path(out_dir).exists() or runs.read_metrics(out_dir)):
        raise InputError(out_dir, "already holds a run; pass --resume to continue it, or choose another folder")
    start = int(payload["step"]) if payload else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    runs.clear_stop(out_dir)
    runs.write_config(out_dir, config.to_dict())
    runs.write_status(out_dir, "starting", start, config.run.steps, "loading cases")
    if payload:
        runs.truncate_metrics(out_dir, start)
    with runs.log_to_file(out_dir):
        try:
            return _loop(config, out_dir, payload, progress)
        except BaseException as exc:
            log.exception("fine-tuning failed")
            state = runs.read_status(out_dir) or {}
            runs.write_status(out_dir, "failed", state.get("step", start), config.run.steps,
                              f"{type(exc).__name__}: {exc}")
            raise


def _resume_payload(config: FinetuneConfig, out_dir: Path) -> dict:
    return runs.resume_payload(out_dir, config.to_dict(), load_segmentation_checkpoint)


def _loop(config: FinetuneConfig, out_dir: Path, payload: dict | None,
          progress: Callable[[int, int, dict], None] | None) -> Path:
    data, optim, run, roi = config.data, config.optim, config.run, config.model.roi
    label_set = get_label_set(data.label_set)
    train = [TrainingCase.prepare(case, classes, roi) for case, classes in
             labelled_cases(data.manifest, data.split, data.origins, data.train_cases, label_set)]
    if not train:
        raise InputError(data.manifest, f"has no labelled case of origin {list(data.origins)} in split "
                                        f"{data.split!r} for the {label_set.name} label set")
    val = labelled_cases(data.manifest, data.val_split, data.origins, data.val_cases, label_set)
    if not val and data.val_cases:
        log.warning("no labelled validation case in split %r: no validation Dice, no best.pt", data.val_split)

    model = build_segmentation_net(config.model, label_set.class_names, data.hu_window, config.init, run.seed)
    init_weights = initial_weights_hash(config.init)
    model.train()
    groups = [{**group, "lr_scale": 1.0} for group in parameter_groups(model.backbone)]
    groups += [{**group, "lr_scale": optim.head_lr_scale} for group in parameter_groups(model.head)]
    for group in groups[::2]:  # weights (biases and norms get none)
        group["weight_decay"] = optim.weight_decay
    optimizer = torch.optim.AdamW(groups, lr=0.0)
    loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    sampler = CropSampler(train, roi, optim.batch_size, config.augment, data.hu_window, run.seed)
    lrs = lr_schedule(optim.lr, optim.min_lr, run.steps, optim.warmup_steps)
    step, best_dice = 0, None
    if payload:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        sampler.load_state_dict(payload["rng"]["sampler"])
        torch.set_rng_state(payload["rng"]["torch"])
        step, best_dice = int(payload["step"]), payload["best_dice"]
    log.info("fine-tuning from %s: %d steps from step %d, %d parameters, training cases %s, validation cases %s, "
             "%d classes, run folder %s", config.init, run.steps, step, sum(p.numel() for p in model.parameters()),
             [c.case_id for c in train], [c.record.case_id for c, _ in val], label_set.num_classes, out_dir)
    tensorboard = None
    if run.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = SummaryWriter(str(out_dir / runs.TENSORBOARD_DIR), purge_step=step + 1)
    runs.write_status(out_dir, "running", step, run.steps, f"resumed at step {step}" if payload else "started")
    state = "finished"
    try:
        while step < run.steps:
            started = time.perf_counter()
            lr = float(lrs[step])
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            images, labels = sampler.next_batch()
            loss = loss_fn(model(images), labels)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss became {float(loss)} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            record = {"step": step, "loss": float(loss.detach()), "lr": lr,
                      "seconds_per_step": time.perf_counter() - started}
            new_best = False
            if val and (step % run.val_every == 0 or step == run.steps):
                scores = _validate(model, val)
                record["val_dice"] = mean_of(scores, "dice")
                record.update({f"val_dice/{name}": s["dice"] for name, s in scores.items()})
                new_best = np.isfinite(record["val_dice"]) and (best_dice is None or record["val_dice"] > best_dice)
                best_dice = record["val_dice"] if new_best else best_dice
            stop = runs.stop_requested(out_dir)
            _log_step(out_dir, tensorboard, record, run.steps)
            if step % run.checkpoint_every == 0 or step == run.steps or stop or new_best:
                _save(out_dir, config, model, optimizer, sampler, step, best_dice, new_best, init_weights)
            if progress is not None:
                progress(step, run.steps, record)
            if stop:
                state = "stopped"
                break
    finally:
        if tensorboard is not None:
            tensorboard.close()
    return runs.finish_run(out_dir, state, step, run.steps, "alice finetune")


def _validate(model: SegmentationNet, cases: list[tuple[LoadedCase, np.ndarray]]) -> dict[str, dict[str, float]]:
    """Per-class Dice, averaged over the validation cases."""
    return average_scores([segmentation_scores(predict_case(model, case.image).array, truth, model.class_names,
                                               case.image.spacing_mm, hd95=False) for case, truth in cases])


def _log_step(out_dir: Path, tensorboard, record: dict, total: int) -> None:
    runs.append_metrics(out_dir, {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
                                  for k, v in record.items()})
    if tensorboard is not None:
        for key, value in record.items():
            if key != "step":
                tensorboard.add_scalar(key, value, record["step"])
    step = record["step"]
    val = f", validation Dice {record['val_dice']:.3f}" if "val_dice" in record else ""
    runs.write_status(out_dir, "running", step, total, f"step {step}/{total}, loss {record['loss']:.4f}{val}",
                      record["seconds_per_step"] * (total - step))
    if val or step % 10 == 0:
        log.info("step %d/%d loss %.4f%s lr %.2e %.2f s/step", step, total, record["loss"], val, record["lr"],
                 record["seconds_per_step"])


def _save(out_dir: Path, config: FinetuneConfig, model: SegmentationNet, optimizer: torch.optim.Optimizer,
          sampler: CropSampler, step: int, best_dice: float | None, best: bool, init_weights: str) -> None:
    """Write ``last.pt`` (and ``best.pt`` when ``best``) atomically, with everything an exact resume needs and
    ``init_weights`` (``initial_weights_hash``)."""
    payload = checkpoint_payload(model, config.to_dict(), step, optimizer=optimizer.state_dict(),
                                 best_dice=best_dice, init_weights=init_weights,
                                 rng={"torch": torch.get_rng_state(), "sampler": sampler.state_dict()})
    last = runs.checkpoint_path(out_dir)
    atomic_write(last, lambda tmp: torch.save(payload, tmp))
    if best:
        atomic_write(runs.checkpoint_path(out_dir, runs.BEST_CHECKPOINT), lambda tmp: shutil.copyfile(last, tmp))
    log.info("checkpoint at step %d%s", step, " (best validation Dice so far)" if best else "")
