"""Per-step schedules of Alice pretraining, as arrays indexed by optimiser step (as in DINO and dinov2).

LR: linear warm-up from 0 to the peak, then cosine decay to ``min_lr``. Weight decay: cosine 0.04 -> 0.4.
Teacher EMA momentum: cosine 0.996 -> 1. Teacher temperature: linear warm-up, then constant. The official code's
min LR lies above its scaled peak, so its "decay" raises the LR; ``lr_schedule`` refuses that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def cosine_schedule(start: float, end: float, steps: int) -> np.ndarray:
    """``steps`` values from ``start`` (step 0) to ``end`` (last step) along half a cosine."""
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {steps}")
    progress = np.arange(steps, dtype=np.float64) / max(steps - 1, 1)
    return end + 0.5 * (start - end) * (1 + np.cos(np.pi * progress))


def lr_schedule(peak_lr: float, min_lr: float, steps: int, warmup_steps: int) -> np.ndarray:
    """Linear warm-up to ``peak_lr`` over ``warmup_steps`` (step 0 at ``peak_lr / warmup_steps``), then cosine decay
    to ``min_lr`` at the last step; a run shorter than the warm-up ends during it.

    Raises:
        ValueError: ``min_lr`` not below ``peak_lr``, or a negative warm-up.
    """
    if not min_lr < peak_lr:
        raise ValueError(f"min_lr={min_lr:g} must be below the peak lr={peak_lr:g}; otherwise the cosine "
                         "'decay' raises the learning rate")
    if warmup_steps < 0:
        raise ValueError(f"warm-up of {warmup_steps} steps is negative")
    ramp = min(warmup_steps, steps)
    warmup = peak_lr * np.arange(1, ramp + 1, dtype=np.float64) / max(warmup_steps, 1)
    if ramp == steps:
        return warmup
    return np.concatenate([warmup, cosine_schedule(peak_lr, min_lr, steps - ramp)])


def warmup_schedule(start: float, end: float, steps: int, warmup_steps: int) -> np.ndarray:
    """Linear from ``start`` to ``end`` over ``warmup_steps``, then ``end`` (the teacher-temperature schedule)."""
    values = np.full(steps, end, dtype=np.float64)
    ramp = min(warmup_steps, steps)
    if ramp:
        values[:ramp] = np.linspace(start, end, warmup_steps)[:ramp]
    return values


@dataclass(frozen=True)
class Schedules:
    """Every per-step value of a run; index with the 0-based step."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray

    def at(self, step: int) -> dict[str, float]:
        """The values of one step, as plain floats keyed like the metrics."""
        return {"lr": float(self.lr[step]), "wd": float(self.weight_decay[step]),
                "momentum": float(self.momentum[step]), "teacher_temp": float(self.teacher_temp[step])}


def build_schedules(steps: int, peak_lr: float, min_lr: float, warmup_steps: int, weight_decay: tuple[float, float],
                    momentum: tuple[float, float], teacher_temp: tuple[float, float],
                    teacher_temp_warmup_steps: int) -> Schedules:
    """All schedules of a run of ``steps`` optimiser steps; pairs are (start, end) values."""
    return Schedules(lr=lr_schedule(peak_lr, min_lr, steps, warmup_steps),
                     weight_decay=cosine_schedule(*weight_decay, steps),
                     momentum=cosine_schedule(*momentum, steps),
                     teacher_temp=warmup_schedule(*teacher_temp, steps, teacher_temp_warmup_steps))
