"""The re-tiling error: the same scan cropped by a few voxels, where every landmark's truth is itself."""

import numpy as np

from alice.data.cohort import load_case
from alice.explore.dense import EmbeddingSettings
from alice.explore.evaluate import cropped_case, retiling_errors


def test_a_cropped_case_shows_the_same_anatomy_at_the_same_world_mm(records):
    case = load_case(records["lidc0001"])
    moved = cropped_case(case, (5, 3, 7))
    assert moved.image.shape == tuple(n - s for n, s in zip(case.image.shape, (5, 3, 7)))
    ijk = np.random.default_rng(0).integers([5, 3, 7], case.image.shape, size=(200, 3))
    for volume, other in ((case.image, moved.image), (case.label, moved.label)):
        moved_ijk = np.rint(other.xyz_to_ijk(volume.ijk_to_xyz(ijk))).astype(int)
        np.testing.assert_array_equal(moved_ijk, ijk - [5, 3, 7])
        np.testing.assert_array_equal(other.array[tuple(moved_ijk.T)], volume.array[tuple(ijk.T)])
    assert case.image.array.shape == case.image.shape  # the source is not modified


def test_whole_volume_sam_finds_its_landmarks_after_re_tiling_and_windowed_untrained_tokens_do_not(
        records, isolated_workspace):
    # SAM embeds the whole scan with convolutions: a crop moves nothing it sees but the border. The untrained
    # Alice backbone sees the scan through 48-voxel windows, each token depending on its whole window (one tiling:
    # what a single run of windows gives).
    case = load_case(records["lidc0001"])
    unmoved = retiling_errors(EmbeddingSettings(source="sam"), case, shift=(0, 0, 0))
    sam = retiling_errors(EmbeddingSettings(source="sam"), case)
    untrained = retiling_errors(EmbeddingSettings(source="untrained", tilings=1), case)
    assert len(sam) == len(untrained) > 50
    assert np.median(unmoved) < 4.0  # the 6 mm lattice, refined to a parabola's peak
    assert np.median(sam) < 10.0
    assert np.median(untrained) > 3 * np.median(sam)
