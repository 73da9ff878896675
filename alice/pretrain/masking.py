"""Masks for the student's views, made on the data side and delivered in the batch (as in dinov2).

Alice (Jiang et al., ICCV 2023) masks SimMIM-style: the student's crop keeps its full voxel grid and the masked
voxels are set to 0. The official masks are *tubes*: a grid of ``cell`` x ``cell`` voxel cells over the first two
axes, ``ceil(ratio * cells)`` of them masked, each extended through the whole depth (third axis). Unlike the
official code (one mask per view, shared by the batch), every sample here gets its own mask. ``cube`` masks
(``cell``-voxel cubes over all three axes) are the optional alternative.
"""

from __future__ import annotations

import math

import numpy as np

MASK_SHAPES = ("tube", "cube")


def masked_cell_count(cells: int, ratio: float) -> int:
    """How many of ``cells`` cells are masked at ``ratio`` (rounded up, as the official code does)."""
    # A tiny tolerance keeps 0.75 * 16 = 12 from rounding up to 13 through floating-point error.
    return min(cells, math.ceil(ratio * cells - 1e-9))


def make_masks(batch: int, roi_voxels: int, cell_voxels: int, ratio: float, shape: str,
               rng: np.random.Generator) -> np.ndarray:
    """A different random mask for each of ``batch`` crops of ``roi_voxels``^3 voxels.

    Args:
        batch: number of masks.
        roi_voxels: crop edge in voxels; a multiple of ``cell_voxels``.
        cell_voxels: edge of a mask cell in voxels.
        ratio: fraction of cells masked, in [0, 1).
        shape: ``tube`` (cells on the first two axes, through the depth) or ``cube`` (cells on all three axes).
        rng: the data side's generator (its state is part of a checkpoint).

    Returns:
        (batch, 1, roi, roi, roi) bool, True where the student's input is zeroed.

    Raises:
        ValueError: a shape that is not ``tube`` or ``cube``, a crop that the cells do not tile, or a ratio
            outside [0, 1).
    """
    if shape not in MASK_SHAPES:
        raise ValueError(f"mask shape {shape!r} is not one of {MASK_SHAPES}")
    if roi_voxels % cell_voxels:
        raise ValueError(f"crop of {roi_voxels} voxels is not a multiple of the mask cell of {cell_voxels} voxels")
    if not 0 <= ratio < 1:
        raise ValueError(f"mask ratio {ratio} is not in [0, 1)")
    per_axis = roi_voxels // cell_voxels
    grid = (per_axis, per_axis) if shape == "tube" else (per_axis, per_axis, per_axis)
    cells = math.prod(grid)
    masked = masked_cell_count(cells, ratio)
    flat = np.zeros((batch, cells), dtype=bool)
    for b in range(batch):
        flat[b, rng.permutation(cells)[:masked]] = True
    coarse = flat.reshape(batch, *grid)
    if shape == "tube":
        coarse = coarse[..., None]  # one cell through the whole depth
    full = coarse.repeat(cell_voxels, axis=1).repeat(cell_voxels, axis=2)
    full = full.repeat(cell_voxels if shape == "cube" else roi_voxels, axis=3)
    return full[:, None]
