"""Segmentation scores of one case with MONAI: Dice and the 95th-percentile Hausdorff distance (HD95) in mm.

Conventions (MONAI's): Dice is 1 for a perfect class and 0 for an empty prediction of a present class; a class
absent from the ground truth has no Dice (NaN) and is left out of means. HD95 is NaN when either the prediction or
the ground truth of a class is empty.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from monai.networks.utils import one_hot


def segmentation_scores(pred: np.ndarray, truth: np.ndarray, class_names: Sequence[str], spacing_mm,
                        hd95: bool = True) -> dict[str, dict[str, float]]:
    """Per foreground class (background excluded): ``{"dice", "hd95"}`` (hd95 only when asked).

    Args:
        pred, truth: class-index maps of one case, same shape.
        class_names: the output channels, background first.
        spacing_mm: voxel size along each axis, for HD95 in mm.
    """
    n = len(class_names)
    p = one_hot(torch.as_tensor(pred.astype(np.int64))[None, None], n)
    t = one_hot(torch.as_tensor(truth.astype(np.int64))[None, None], n)
    dice = compute_dice(p, t, include_background=False)[0].tolist()
    scores = {name: {"dice": d} for name, d in zip(class_names[1:], dice)}
    if hd95:
        with warnings.catch_warnings():  # MONAI warns for every empty class; the NaN says it
            warnings.simplefilter("ignore")
            distances = compute_hausdorff_distance(p, t, include_background=False, percentile=95,
                                                   spacing=[float(s) for s in spacing_mm])[0].tolist()
        for name, h in zip(class_names[1:], distances):
            scores[name]["hd95"] = h if np.isfinite(h) else float("nan")
    return scores


def mean_of(scores: dict[str, dict[str, float]], key: str) -> float:
    """The mean of one score over the entries (classes, cases, seeds) where it is defined (NaN when nowhere)."""
    return _finite_mean([s.get(key, float("nan")) for s in scores.values()])


def average_scores(per_case: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per class and score, the mean over the cases where it is defined (e.g. Dice over the cases holding it)."""
    return {name: {key: _finite_mean([case[name][key] for case in per_case]) for key in scores}
            for name, scores in per_case[0].items()}


def _finite_mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")
