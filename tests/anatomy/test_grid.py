"""World-mm bookkeeping of grids and feature maps."""

import numpy as np
import pytest
import torch

from alice.anatomy.grid import grid_affine, grid_xyz_mm, resample_to_grid, sample_at_mm, xyz_to_ijk


def test_grid_affine_places_output_voxel_i_on_input_voxel_stride_times_i():
    affine = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 5], [0, 0, 4.0, 1], [0, 0, 0, 1]])
    out = grid_affine(affine, (2, 2, 4))
    i = np.array([3.0, 1.0, 2.0])
    np.testing.assert_allclose(out[:3, :3] @ i + out[:3, 3], affine[:3, :3] @ (i * [2, 2, 4]) + affine[:3, 3])


def test_grid_xyz_is_in_reshape_order():
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    xyz = grid_xyz_mm((2, 3, 4), affine)
    flat = np.arange(24).reshape(2, 3, 4)
    i, j, k = np.unravel_index(flat.reshape(-1)[17], (2, 3, 4))
    np.testing.assert_allclose(xyz[17], [2.0 * i, 3.0 * j, 4.0 * k])
    np.testing.assert_allclose(xyz_to_ijk(affine, xyz[17]), [i, j, k])


def test_sampling_a_ramp_returns_world_coordinates():
    affine = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 5], [0, 0, 4.0, 1], [0, 0, 0, 1]])
    shape = (6, 5, 7)
    ramps = torch.tensor(grid_xyz_mm(shape, affine).T.reshape(3, *shape), dtype=torch.float32)
    points = np.array([[-7.3, 9.1, 12.5], [0.0, 12.0, 13.0], [-10.0, 5.0, 1.0]])
    np.testing.assert_allclose(sample_at_mm(ramps, affine, points).numpy(), points, atol=1e-4)


def test_resampling_to_a_parallel_grid_equals_sampling_at_its_voxels():
    maps = torch.randn(5, 4, 3, 6)
    affine = np.array([[8.0, 0, 0, -10], [0, 8.0, 0, 5], [0, 0, 4.0, 1], [0, 0, 0, 1]])
    target = np.array([[2.0, 0, 0, -14], [0, 2.0, 0, 5], [0, 0, 2.0, -2], [0, 0, 0, 1]])  # reaches past the edges
    shape = (19, 13, 14)
    expected = sample_at_mm(maps, affine, grid_xyz_mm(shape, target)).T.reshape(5, *shape)
    torch.testing.assert_close(resample_to_grid(maps, affine, shape, target), expected, atol=1e-5, rtol=1e-5)


def test_resampling_refuses_grids_that_are_not_parallel():
    rotated = np.eye(4)
    rotated[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]
    with pytest.raises(ValueError, match="parallel"):
        resample_to_grid(torch.zeros(1, 2, 2, 2), np.eye(4), (2, 2, 2), rotated)
