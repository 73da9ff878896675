"""Online pairs: windowed zero-padded crops, B > 1 pairs with their own points and masks, ranks, resumable state,
the SAM partners of the views' tokens."""

import numpy as np
import pytest
import torch

from alice.anatomy.cache import embed_case
from alice.anatomy.model import build_sam
from alice.data.io import Volume
from alice.errors import InputError
from alice.mining.views import MiningCase
from alice.pretrain.losses import flat_cells, grid_cells, token_voxels
from alice.pretrain.views import (
    PairSampler,
    crop_window,
    load_mining_cases,
    sam_partners,
    window_hu,
)
from tests.anatomy.conftest import synthetic_ct, tiny_config
from tests.pretrain.conftest import write_cohort

HU_WINDOW = (-125.0, 225.0)


def sampler(cases, mode="random_cross", batch=3, rank=0, world=1, seed=0, shift=0, grids=None):
    return PairSampler(cases, mode, 32, HU_WINDOW, threshold=0.3, max_tries=4, margin_voxels=4, mask_cell_voxels=8,
                       mask_ratio=0.75, mask_shape="tube", batch_pairs=batch, seed=seed, rank=rank, world_size=world,
                       shift_voxels=shift, token_grids=grids)


@pytest.fixture(scope="module")
def cases():
    return [MiningCase(f"case{s}", synthetic_ct(seed=s)) for s in range(3)]


def test_window_maps_the_hu_range_to_0_1():
    np.testing.assert_allclose(window_hu(np.array([-1000, -125, 50, 225, 3000]), HU_WINDOW), [0, 0, 0.5, 1, 1])


def test_crops_are_centred_and_zero_padded_outside_the_volume():
    array = np.full((10, 10, 10), 225, dtype=np.int16)
    array[5, 5, 5] = 50
    volume = Volume(array, np.eye(4))
    crop = crop_window(volume, (5, 5, 5), 8, HU_WINDOW)
    assert crop.shape == (8, 8, 8) and crop[4, 4, 4] == 0.5  # voxel roi // 2 is the centre
    corner = crop_window(volume, (0, 0, 0), 8, HU_WINDOW)
    assert np.all(corner[:4] == 0) and np.all(corner[:, :4] == 0) and np.all(corner[4:, 4:, 4:] == 1)
    assert np.all(crop_window(volume, (40, 40, 40), 8, HU_WINDOW) == 0)


def test_a_batch_holds_b_pairs_each_with_its_own_points_crops_and_masks(cases):
    batch = sampler(cases, batch=4).next_batch()
    assert batch.query.shape == batch.key.shape == batch.query_mask.shape == (4, 1, 32, 32, 32)
    assert batch.query.dtype == torch.float32 and batch.query_mask.dtype == torch.bool
    assert 0 <= batch.query.min() and batch.query.max() <= 1
    assert len({p.query_ijk for p in batch.pairs}) == 4
    assert all(p.query_case != p.key_case for p in batch.pairs)
    masks = torch.cat([batch.query_mask, batch.key_mask])
    assert len({m.numpy().tobytes() for m in masks}) == 8
    for pair, crop in zip(batch.pairs, batch.query):
        image = next(c for c in cases if c.case_id == pair.query_case).image
        assert crop[0, 16, 16, 16].item() == pytest.approx(window_hu(image.array[pair.query_ijk], HU_WINDOW))


def test_shifted_crops_are_each_views_scan_cropped_at_its_centre_moved_by_steps_and_jitter(cases):
    assert sampler(cases, batch=2).next_batch().shifted is None
    batch = sampler(cases, batch=3, shift=16).next_batch()
    assert batch.shifted.shape == (6, 1, 32, 32, 32) and batch.shifts.shape == (6, 3)
    shifts = batch.shifts.numpy()
    assert np.abs(shifts).max() <= 16 + 8 and np.any(shifts % 16)  # a step of 16 voxels, up to 8 voxels of jitter
    views = [(p.query_case, p.query_ijk) for p in batch.pairs] + [(p.key_case, p.key_ijk) for p in batch.pairs]
    for (case, ijk), shift, crop in zip(views, shifts, batch.shifted):
        image = next(c for c in cases if c.case_id == case).image
        expected = crop_window(image, np.asarray(ijk) + shift, 32, HU_WINDOW)
        np.testing.assert_array_equal(crop[0].numpy(), expected)
    moved = batch.to("cpu")
    assert torch.equal(moved.shifted, batch.shifted) and torch.equal(moved.shifts, batch.shifts)


def test_query_cases_cycle_through_the_cohort_and_ranks_take_different_shares(cases):
    single = sampler(cases, batch=3)
    assert sorted(p.query_case for p in single.next_batch().pairs) == ["case0", "case1", "case2"]
    rank0, rank1 = sampler(cases, batch=2, rank=0, world=2), sampler(cases, batch=2, rank=1, world=2)
    first0, first1 = rank0.next_batch().pairs[0], rank1.next_batch().pairs[0]
    assert first0.query_case != first1.query_case
    assert first0.query_ijk != first1.query_ijk


def test_the_sampler_state_resumes_the_same_pairs_and_masks(cases):
    straight = sampler(cases, batch=2)
    straight.next_batch()
    state = straight.state_dict()
    expected = straight.next_batch()
    resumed = sampler(cases, batch=2)
    resumed.load_state_dict(state)
    got = resumed.next_batch()

    def places(batch):
        return [(p.query_case, p.key_case, p.query_ijk, p.key_ijk) for p in batch.pairs]

    assert places(got) == places(expected)
    torch.testing.assert_close(got.query_mask, expected.query_mask)
    torch.testing.assert_close(got.key, expected.key)


def test_cross_patient_modes_need_two_cases(cases):
    with pytest.raises(InputError, match="only 1 training case"):
        sampler(cases[:1], mode="sam")
    batch = sampler(cases[:1], mode="same_volume", batch=2).next_batch()
    assert all(p.query_case == p.key_case == "case0" for p in batch.pairs)


@pytest.fixture(scope="module")
def embedded():
    torch.manual_seed(0)
    model = build_sam(tiny_config()).eval()
    return [MiningCase(f"case{s}", v, embed_case(model, v)) for s, v in enumerate(synthetic_ct(seed=s)
                                                                                  for s in range(2))]


def test_sam_mode_pairs_come_from_the_embeddings(embedded):
    batch = sampler(embedded, mode="sam", batch=2).next_batch()
    assert all(p.mode == "sam" and np.isfinite(p.score) and p.query_case != p.key_case for p in batch.pairs)


def test_sam_partners_pair_the_tokens_that_cover_the_same_voxels(embedded):
    case = embedded[0]
    grid = (4, 4, 4)
    centre = torch.tensor(case.image.shape) // 2
    query_voxels, key_voxels = (token_voxels(c[None], 32, grid)[0].numpy() for c in (centre, centre + torch.tensor([8, 0, 0])))
    query_partner, key_partner = sam_partners(case, query_voxels, case, key_voxels, threshold=0.5)
    # The key view starts one cell (8 voxels) further along x: query cell c covers key cell c - (1, 0, 0).
    cells = grid_cells(grid)
    expected = flat_cells(cells - torch.tensor([1, 0, 0]), grid).numpy()
    found = query_partner >= 0
    assert found.sum() >= 8 and (query_partner[found] == expected[found]).all()
    assert (key_partner[query_partner[found]] == np.flatnonzero(found)).all()  # partners both ways
    assert (sam_partners(case, query_voxels, case, key_voxels, threshold=1.01)[0] == -1).all()


def test_sam_mode_batches_carry_the_partners_of_every_token_grid(embedded, cases):
    grids = {"enc_tokens": (2, 2, 2), "dec_tokens": (4, 4, 4)}
    batch = sampler(embedded, mode="sam", batch=2, grids=grids).next_batch()
    assert {key: tuple(p.shape) for key, p in batch.partners.items()} == {"enc_tokens": (4, 8), "dec_tokens": (4, 64)}
    assert all(((p >= -1) & (p < p.shape[1])).all() for p in batch.partners.values())
    assert sampler(cases, grids=grids).next_batch().partners is None  # no SAM in random_cross mode


def test_loading_a_cohort_with_one_training_case_is_refused_before_any_embedding(tmp_path):
    manifest = write_cohort(tmp_path, n_cases=1)
    with pytest.raises(InputError, match="views.mode=same_volume"):
        load_mining_cases(manifest, "train", "random_cross", None)
    assert [c.case_id for c in load_mining_cases(manifest, "train", "same_volume", None)] == ["case0"]
