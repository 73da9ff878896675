"""Tube and cube masks: the masked fraction, the shape of a tube, a different mask per sample."""

import numpy as np
import pytest

from alice.pretrain.masking import make_masks, masked_cell_count


def test_masked_cells_round_up_as_the_official_code():
    assert masked_cell_count(16, 0.75) == 12
    assert masked_cell_count(9, 0.75) == 7  # roi 48 with 16-voxel cells: 7 of 9, about 78 %
    assert masked_cell_count(4, 0.0) == 0


def test_tubes_cover_the_ratio_of_cells_and_run_through_the_depth():
    masks = make_masks(3, 64, 16, 0.75, "tube", np.random.default_rng(0))
    assert masks.shape == (3, 1, 64, 64, 64) and masks.dtype == bool
    assert np.all(masks.mean(axis=(1, 2, 3, 4)) == 12 / 16)
    # Constant along the depth axis and over each 16 x 16 cell.
    assert np.all(masks == masks[..., :1])
    cells = masks[:, 0, ::16, ::16, 0]
    np.testing.assert_array_equal(masks[:, 0, :, :, 0], cells.repeat(16, axis=1).repeat(16, axis=2))


def test_every_sample_gets_its_own_mask():
    masks = make_masks(8, 32, 8, 0.5, "tube", np.random.default_rng(1))
    assert len({m.tobytes() for m in masks}) == 8


def test_cube_masks_are_cells_on_all_three_axes():
    masks = make_masks(2, 32, 8, 0.75, "cube", np.random.default_rng(2))
    assert np.all(masks.mean(axis=(1, 2, 3, 4)) == 48 / 64)
    cells = masks[:, 0, ::8, ::8, ::8]
    np.testing.assert_array_equal(masks[:, 0], cells.repeat(8, 1).repeat(8, 2).repeat(8, 3))


def test_the_same_generator_state_gives_the_same_masks():
    a = make_masks(2, 32, 16, 0.75, "tube", np.random.default_rng(5))
    b = make_masks(2, 32, 16, 0.75, "tube", np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("args, message", [((2, 40, 16, 0.75, "tube"), "not a multiple"),
                                           ((2, 32, 16, 1.0, "tube"), "not in"),
                                           ((2, 32, 16, 0.5, "blocks"), "not one of")])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        make_masks(*args, np.random.default_rng(0))
