"""The plain intensity baseline for landmark matching: normalised cross-correlation (NCC) of HU patches.

For each query point, the HU patch around it in the query scan is compared with every patch of the key scan; the
match is the position of the highest NCC. Both scans are first resampled to one coarse spacing so that patches
cover the same physical size. All points are matched at once as the output channels of one 3D convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from alice.data.io import AIR_HU, Volume, resample_volume


@dataclass(frozen=True)
class NCCMatcher:
    """NCC template matching on a grid of ``spacing_mm`` with cubic patches of ``2 * radius + 1`` voxels."""

    spacing_mm: float = 4.0
    radius: int = 4
    batch: int = 32

    def match(self, query: Volume, key: Volume, xyz_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Matched positions (N, 3) in the key, world mm, and their NCC scores (N,)."""
        query_grid = resample_volume(query.with_array(query.array.astype(np.float32)), self.spacing_mm)
        key_grid = resample_volume(key.with_array(key.array.astype(np.float32)), self.spacing_mm)
        kernels = self._patches(query_grid, np.asarray(xyz_mm, dtype=np.float64))
        image = torch.as_tensor(key_grid.array, dtype=torch.float32)[None, None]
        size = 2 * self.radius + 1
        ones = torch.ones(1, 1, size, size, size)
        local_sum = F.conv3d(image, ones, padding=self.radius)
        local_sq = F.conv3d(image * image, ones, padding=self.radius)
        local_spread = (local_sq - local_sum ** 2 / size ** 3).clamp(min=0).sqrt()  # sqrt of sum of (I - mean)^2
        flat_best, scores = [], []
        with torch.no_grad():
            for start in range(0, len(kernels), self.batch):
                response = F.conv3d(image, kernels[start:start + self.batch], padding=self.radius)
                ncc = torch.where(local_spread > 1e-3, response / local_spread.clamp(min=1e-3), torch.zeros(()))
                best = ncc.flatten(2).max(dim=2)
                flat_best.append(best.indices[0])
                scores.append(best.values[0])
        ijk = np.stack(np.unravel_index(torch.cat(flat_best).numpy(), key_grid.shape), axis=1)
        return key_grid.ijk_to_xyz(ijk), torch.cat(scores).numpy()

    def _patches(self, grid: Volume, xyz_mm: np.ndarray) -> torch.Tensor:
        """Zero-mean, unit-norm HU patches around each point: (N, 1, s, s, s) convolution kernels."""
        r = self.radius
        padded = np.pad(grid.array, r, constant_values=AIR_HU)
        centres = np.rint(grid.xyz_to_ijk(xyz_mm)).astype(int)
        centres = np.clip(centres, 0, np.array(grid.shape) - 1) + r
        patches = np.stack([padded[i - r:i + r + 1, j - r:j + r + 1, k - r:k + r + 1] for i, j, k in centres])
        patches = patches - patches.mean(axis=(1, 2, 3), keepdims=True)
        norms = np.sqrt((patches ** 2).sum(axis=(1, 2, 3), keepdims=True))
        patches = np.where(norms > 1e-6, patches / np.maximum(norms, 1e-6), 0.0)
        return torch.as_tensor(patches[:, None], dtype=torch.float32)
