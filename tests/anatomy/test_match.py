"""Point matching: self-matches, a known shift, vectorised = per point, no-match reasons, similarity maps."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from alice.anatomy.cache import embed_case
from alice.anatomy.grid import sample_at_mm, xyz_to_ijk
from alice.anatomy.match import REFINE_STEPS_PER_VOXEL, NoMatch, match_points
from alice.anatomy.model import SAMConfig, build_sam
from alice.data.io import Volume
from tests.anatomy.conftest import SPACING_MM, lung_point, synthetic_ct, tiny_config

MARGIN = 16  # voxels of air around the synthetic body: rolling it by 8 moves only air, far from the borders


@pytest.fixture(scope="module")
def model():
    """A random network with 32-d embeddings: distinctive enough on textured tissue, no training needed."""
    torch.manual_seed(0)
    config = tiny_config()
    config = SAMConfig(dataclasses.replace(config.model, base_channels=8, fpn_channels=16, embedding_dim=32),
                       config.train)
    return build_sam(config).eval()


@pytest.fixture(scope="module")
def volume() -> Volume:
    v = synthetic_ct(shape=(32, 32, 24))
    affine = v.affine.copy()
    affine[:3, 3] -= MARGIN * SPACING_MM
    return Volume(np.pad(v.array, MARGIN, constant_values=-1024), affine)


@pytest.fixture(scope="module")
def embedding(model, volume):
    return embed_case(model, volume)


def tissue_points(embedding, volume) -> np.ndarray:
    """Local voxel centres at least 3 voxels inside textured tissue (not the lung, not the body's edge)."""
    tissue = ndimage.binary_erosion(volume.array > -500, iterations=3)
    ijk = np.rint(volume.xyz_to_ijk(embedding.local_xyz_mm)).astype(int)
    inside = volume.contains_ijk(ijk)
    keep = np.zeros(len(ijk), dtype=bool)
    keep[inside] = tissue[tuple(ijk[inside].T)]
    return embedding.local_xyz_mm[keep][::3]


def test_a_voxel_matched_within_its_own_case_returns_itself_exactly(embedding):
    points = embedding.local_xyz_mm[embedding.local_in_body.numpy()]
    result = match_points(embedding, embedding, points)
    assert result.valid.all()
    np.testing.assert_array_equal(result.xyz_mm, points)
    np.testing.assert_allclose(result.score, 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.cycle_error_mm, 0.0)


def test_an_off_grid_point_matched_within_its_own_case_lands_within_one_voxel(embedding, volume):
    rng = np.random.default_rng(0)
    points = tissue_points(embedding, volume) + rng.uniform(-2, 2, size=(1, 3))
    result = match_points(embedding, embedding, points)
    voxel_mm = np.linalg.norm(embedding.local_affine[:3, :3], axis=0)
    assert np.all(np.abs(result.xyz_mm - points) <= voxel_mm)
    # Sub-voxel refinement usually finds the off-grid point to within a lattice step, not just the nearest voxel.
    step_mm = voxel_mm / REFINE_STEPS_PER_VOXEL
    assert np.median(np.abs(result.xyz_mm - points).max(axis=1)) <= step_mm.max()


def test_a_known_shift_is_recovered_in_world_mm(model, volume, embedding):
    # Roll by a multiple of the global stride (8, 8, 4) and move the affine with it: the same anatomy sits at
    # the same world mm, and the network sees the same input up to its borders.
    shift = (8, -8, 4)
    affine = volume.affine.copy()
    affine[:3, 3] -= np.array(shift) * SPACING_MM
    shifted = embed_case(model, Volume(np.roll(volume.array, shift, axis=(0, 1, 2)), affine))
    points = tissue_points(embedding, volume)
    result = match_points(embedding, shifted, points)
    error_mm = np.linalg.norm(result.xyz_mm - points, axis=1)
    assert np.median(error_mm) == 0.0
    assert np.mean(error_mm <= 2 * SPACING_MM) >= 0.95, np.sort(error_mm)[-10:]


def test_matches_are_searched_only_inside_the_key_body(embedding, volume):
    point = tissue_points(embedding, volume)[0]
    body = embedding.body.copy()
    centre = np.rint(xyz_to_ijk(embedding.image_affine, point)).astype(int)
    body[tuple(slice(c - 2, c + 3) for c in centre)] = False  # the point's own place is air in the key
    key = dataclasses.replace(embedding, body=body)
    result = match_points(embedding, key, point)
    assert result.valid[0] and np.linalg.norm(result.xyz_mm[0] - point) > 0
    assert key.in_body(result.xyz_mm)[0]


def test_vectorised_matching_equals_matching_one_point_at_a_time(embedding, volume, model):
    other = embed_case(model, synthetic_ct(shape=(32, 32, 24), seed=5))
    points = tissue_points(embedding, volume)[:40] + 1.3
    together = match_points(embedding, other, points, return_similarity=True)
    for i, point in enumerate(points):
        alone = match_points(embedding, other, point, return_similarity=True)
        np.testing.assert_array_equal(alone.xyz_mm[0], together.xyz_mm[i])
        np.testing.assert_allclose(alone.score[0], together.score[i], rtol=1e-5)
        np.testing.assert_allclose(alone.cycle_error_mm[0], together.cycle_error_mm[i])
        np.testing.assert_allclose(alone.similarity[0], together.similarity[i], rtol=1e-5, atol=1e-6)


def test_matching_without_the_cycle_gives_the_same_matches_and_no_cycle_error(embedding, volume, model):
    other = embed_case(model, synthetic_ct(shape=(32, 32, 24), seed=5))
    points = tissue_points(embedding, volume)[:10]
    full, quick = match_points(embedding, other, points), match_points(embedding, other, points, cycle=False)
    np.testing.assert_array_equal(quick.xyz_mm, full.xyz_mm)
    np.testing.assert_array_equal(quick.score, full.score)
    assert np.isfinite(full.cycle_error_mm).all() and np.isnan(quick.cycle_error_mm).all()


def test_points_outside_the_volume_or_the_body_get_no_match_with_a_reason(embedding, volume):
    corner_air = volume.ijk_to_xyz([1, 1, 1])
    outside = volume.ijk_to_xyz([-5, 10, 10])
    body = tissue_points(embedding, volume)[0]
    result = match_points(embedding, embedding, np.stack([corner_air, outside, body, lung_point_of(volume)]))
    assert result.reasons == (NoMatch.OUTSIDE_BODY, NoMatch.OUTSIDE_VOLUME, None, None)
    np.testing.assert_array_equal(result.valid, [False, False, True, True])
    assert np.isnan(result.xyz_mm[:2]).all() and np.isnan(result.score[:2]).all()
    assert np.isnan(result.cycle_error_mm[:2]).all()
    assert str(NoMatch.OUTSIDE_BODY) == "in air outside the body"


def lung_point_of(volume):
    """The synthetic lung (air enclosed by the body) counts as body, as real lungs must."""
    point = lung_point(synthetic_ct(shape=(32, 32, 24)))
    assert volume.array[tuple(np.rint(volume.xyz_to_ijk(point)).astype(int))] < -500
    return point


def test_similarity_maps_lie_on_the_key_grid_and_peak_at_the_match(embedding, volume):
    points = tissue_points(embedding, volume)[:3]
    result = match_points(embedding, embedding, points, return_similarity=True)
    assert result.similarity.shape == (3, *embedding.local_map.shape[1:])
    np.testing.assert_array_equal(result.similarity_affine, embedding.local_affine)
    for i in range(3):
        peak = np.unravel_index(np.argmax(result.similarity[i]), result.similarity.shape[1:])
        np.testing.assert_allclose(result.similarity_affine[:3, :3] @ peak + result.similarity_affine[:3, 3],
                                   result.xyz_mm[i])


def test_similarity_is_the_mean_of_local_and_upsampled_global_cosines(embedding, volume, model):
    other = embed_case(model, synthetic_ct(shape=(32, 32, 24), seed=5))
    point = tissue_points(embedding, volume)[4] + 1.7
    result = match_points(embedding, other, point, return_similarity=True)
    local = F.normalize(sample_at_mm(embedding.local_tensor, embedding.local_affine, point[None]), dim=1)[0]
    coarse = F.normalize(sample_at_mm(embedding.global_tensor, embedding.global_affine, point[None]), dim=1)[0]
    key_local = F.normalize(other.local_tensor.reshape(local.shape[0], -1), dim=0)
    # The definition: the key's global map upsampled trilinearly to its local grid, then re-normalised.
    key_global = F.normalize(sample_at_mm(other.global_tensor, other.global_affine, other.local_xyz_mm), dim=1).T
    expected = ((local @ key_local + coarse @ key_global) / 2).reshape(other.local_map.shape[1:])
    np.testing.assert_allclose(result.similarity[0], expected.numpy(), atol=1e-5)


def test_bad_point_arrays_are_refused(embedding):
    with pytest.raises(ValueError, match="shape"):
        match_points(embedding, embedding, np.zeros((2, 2)))
