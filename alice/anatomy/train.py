"""SAM pretraining on intra-volume view pairs: one plain, seeded loop (Yan et al., IEEE TMI 2022).

Each step draws ``volumes_per_batch`` scans and two views of each: axis-aligned crops in world mm, each rescaled
by a random factor, with noise and blur. Both views contain a shared seed point inside the body, except with
probability ``independent_crop_probability``, when they are placed independently. A view is a grid with its own
affine, rendered from the scan (resampled once to the model spacing) by trilinear sampling, air outside it.

Writes ``<out_dir>/metrics.jsonl`` (a line per step) and ``<out_dir>/checkpoints/last.pt`` (atomic).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.networks.layers import GaussianFilter

from alice.anatomy.cache import body_mask
from alice.anatomy.grid import grid_affine, grid_xyz_mm, sample_at_mm
from alice.anatomy.loss import SAMLoss
from alice.anatomy.model import SAMConfig, SAMTrainConfig, build_sam, normalize_hu, save_sam
from alice.data.cohort import CaseRecord
from alice.data.io import AIR_HU, Volume, load_volume, resample_volume
from alice.errors import InputError

log = logging.getLogger(__name__)

# Seeds keep this far (in view extents) from a view's edge, so the shared point is inside both views.
SEED_MARGIN = 0.8


@dataclass(frozen=True, eq=False)
class TrainingScan:
    """A scan at the model spacing, ready to render views from.

    Attributes:
        hu_above_air: (1, X, Y, Z) float32 HU minus AIR_HU, so zero padding outside the scan means air.
        affine: voxel -> world mm.
        body_ijk: (K, 3) voxel indices inside the body, where seeds are drawn.
    """

    hu_above_air: torch.Tensor
    affine: np.ndarray
    body_ijk: np.ndarray


@dataclass(frozen=True, eq=False)
class ViewBatch:
    """Views of a step: views 2i and 2i+1 come from the same scan.

    Attributes:
        images: (V, 1, X, Y, Z) scaled intensities (``normalize_hu``), augmented.
        affines: (V, 4, 4) voxel -> world mm of each view.
    """

    images: torch.Tensor
    affines: np.ndarray


def prepare_scan(image: Volume, spacing_mm: float) -> TrainingScan:
    """Resample a scan to the model spacing and find its body voxels."""
    resampled = resample_volume(image, spacing_mm)
    hu = resampled.array.astype(np.float32)
    body = np.argwhere(body_mask(hu))
    if len(body) == 0:
        raise InputError(image.source, "no voxel is above the body threshold (-500 HU); is it a CT in HU?")
    return TrainingScan(torch.from_numpy(hu - AIR_HU)[None], resampled.affine, body)


def view_affine(centre_mm: np.ndarray, voxel_mm: float, shape) -> np.ndarray:
    """An axis-aligned (RAS) grid of ``shape`` voxels of ``voxel_mm``, centred on ``centre_mm``."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = centre_mm - voxel_mm * (np.asarray(shape) - 1) / 2
    return affine


def sample_view_pair(scan: TrainingScan, spacing_mm: float, config: SAMTrainConfig,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Affines of two views of a scan: rescaled crops that share a seed point (or, sometimes, are independent)."""

    def body_point() -> np.ndarray:
        ijk = scan.body_ijk[rng.integers(len(scan.body_ijk))] + rng.uniform(-0.5, 0.5, 3)
        return ijk @ scan.affine[:3, :3].T + scan.affine[:3, 3]

    independent = rng.random() < config.independent_crop_probability
    seed = body_point()
    affines = []
    for _ in range(2):
        voxel_mm = spacing_mm / rng.uniform(*config.zoom_range)
        if independent:
            centre = body_point()
        else:
            half_extent = voxel_mm * (np.asarray(config.crop_shape) - 1) / 2
            centre = seed + rng.uniform(-1, 1, 3) * half_extent * SEED_MARGIN
        affines.append(view_affine(centre, voxel_mm, config.crop_shape))
    return affines[0], affines[1]


def render_view(scan: TrainingScan, affine: np.ndarray, shape) -> torch.Tensor:
    """HU of a view grid, (1, X, Y, Z), trilinear from the scan; air outside the scan."""
    values = sample_at_mm(scan.hu_above_air, scan.affine, grid_xyz_mm(shape, affine), padding_mode="zeros")
    return values.T.reshape(1, *shape) + AIR_HU


def augment(image: torch.Tensor, config: SAMTrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Gaussian blur (sometimes) and Gaussian noise on one scaled view (1, X, Y, Z)."""
    if rng.random() < config.blur_probability:
        sigma = float(rng.uniform(*config.blur_sigma_voxels))
        if sigma > 0:
            image = GaussianFilter(3, sigma)(image[None])[0]
    noise_sd = float(rng.uniform(*config.noise_sd))
    noise = torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32))
    return image + noise_sd * noise


def make_batch(scans: Sequence[TrainingScan], config: SAMConfig, rng: np.random.Generator) -> ViewBatch:
    """Two augmented views of each of ``volumes_per_batch`` distinct scans."""
    train = config.train
    chosen = rng.choice(len(scans), size=min(train.volumes_per_batch, len(scans)), replace=False)
    images, affines = [], []
    for index in chosen:
        for affine in sample_view_pair(scans[index], config.model.spacing_mm, train, rng):
            hu = render_view(scans[index], affine, train.crop_shape)
            images.append(augment(normalize_hu(hu, config.model.hu_clip), train, rng))
            affines.append(affine)
    return ViewBatch(torch.stack(images), np.stack(affines))


def build_sam_loss(config: SAMTrainConfig) -> SAMLoss:
    """The loss module with a config's values."""
    return SAMLoss(
        temperature=config.temperature, local_queries=config.local_queries,
        local_positive_radius_mm=config.local_positive_radius_mm,
        local_ignore_radius_mm=config.local_ignore_radius_mm, local_hard_candidates=config.local_hard_candidates,
        local_negatives=config.local_negatives, global_queries=config.global_queries,
        global_positive_radius_mm=config.global_positive_radius_mm,
        global_positive_z_gap_mm=config.global_positive_z_gap_mm,
        global_ignore_radius_mm=config.global_ignore_radius_mm,
        global_hard_candidates=config.global_hard_candidates, global_negatives=config.global_negatives,
        global_cross_negatives=config.global_cross_negatives)


def build_optimizer(model: torch.nn.Module, config: SAMTrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD with momentum, as the config says."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    raise ValueError(f"optimizer {config.optimizer!r} is not 'adamw' or 'sgd'")


def lr_schedule(lr: float, steps: int, warmup_steps: int) -> np.ndarray:
    """Learning rate of every step: linear warm-up, then cosine decay to zero."""
    step = np.arange(steps, dtype=np.float64)
    warm = lr * (step + 1) / max(warmup_steps, 1)
    progress = (step - warmup_steps) / max(steps - warmup_steps, 1)
    cosine = lr * 0.5 * (1 + np.cos(math.pi * np.clip(progress, 0, 1)))
    return np.where(step < warmup_steps, warm, cosine)


def train_sam(cases: Sequence[CaseRecord | Volume], config: SAMConfig, steps: int, out_dir: str | Path,
              seed: int = 0, progress: Callable[[int, int, dict], None] | None = None) -> Path:
    """Train a SAM network from scratch on the given scans.

    Args:
        cases: training scans, as manifest records or volumes. Records of the "test" split are refused.
        config: model and training settings.
        steps: optimiser steps.
        out_dir: run folder; gets ``metrics.jsonl`` and ``checkpoints/last.pt``.
        seed: seeds weights, views, augmentation and sampling; the same seed gives the same run.
        progress: called after each step with (step, steps, metrics record).

    Returns:
        The path of the last checkpoint.

    Raises:
        ValueError: no scans, held-out test cases among them, steps < 1, or an unknown optimiser.
        InputError: a scan cannot be read or shows no body.
    """
    held_out = [c.case_id for c in cases if isinstance(c, CaseRecord) and c.split == "test"]
    if held_out:
        raise ValueError(f"refusing to train on held-out test case(s) {held_out}")
    if not cases:
        raise ValueError("no training scans")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    out_dir = Path(out_dir)
    checkpoint = out_dir / "checkpoints" / "last.pt"
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)

    model = build_sam(config)
    model.train()
    loss_fn = build_sam_loss(config.train)
    train = config.train
    optimizer = build_optimizer(model, train)
    scans = [prepare_scan(c if isinstance(c, Volume) else load_volume(c.image), config.model.spacing_mm)
             for c in cases]
    warmup = min(train.warmup_steps, steps // 10)
    schedule = lr_schedule(train.lr, steps, warmup)
    log.info("SAM training: %d scans, %d steps (warm-up %d), %d parameters, out %s", len(scans), steps, warmup,
             sum(p.numel() for p in model.parameters()), out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "metrics.jsonl").open("w") as metrics:
        for step in range(steps):
            start = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = float(schedule[step])
            batch = make_batch(scans, config, rng)
            out = model(batch.images)
            losses = loss_fn(out["local"], out["global"],
                             np.stack([grid_affine(a, model.local_stride) for a in batch.affines]),
                             np.stack([grid_affine(a, model.global_stride) for a in batch.affines]), generator)
            if not torch.isfinite(losses["loss"]):
                raise RuntimeError(f"SAM loss became {losses['loss'].item()} at step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            optimizer.step()
            record = {"step": step + 1, "loss": losses["loss"].item(), "loss/local": losses["loss/local"].item(),
                      "loss/global": losses["loss/global"].item(), "lr": optimizer.param_groups[0]["lr"],
                      "seconds": round(time.perf_counter() - start, 4)}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if (step + 1) % train.checkpoint_every == 0 or step + 1 == steps:
                save_sam(checkpoint, model, config, step + 1)
            if progress is not None:
                progress(step + 1, steps, record)
            if (step + 1) % 50 == 0:
                log.info("step %d/%d loss %.4f (local %.4f, global %.4f) %.2fs", step + 1, steps, record["loss"],
                         record["loss/local"], record["loss/global"], record["seconds"])
    return checkpoint
