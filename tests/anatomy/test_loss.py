"""InfoNCE, hard-negative mining, positives in world mm, and the loss falling on a fixed pair."""

import math

import numpy as np
import pytest
import torch

from alice.anatomy.grid import grid_affine, grid_xyz_mm
from alice.anatomy.loss import info_nce, mine_negatives, nearest_voxels
from alice.anatomy.model import build_sam
from alice.anatomy.train import build_sam_loss, make_batch, prepare_scan
from tests.anatomy.conftest import synthetic_ct, tiny_config


def test_info_nce_golden_value():
    # Positive cosine 1, one negative at 0, t = 0.5: -log(e^2 / (e^2 + 1)) = log(1 + e^-2).
    loss = info_nce(torch.tensor([1.0]), torch.tensor([[0.0]]), 0.5)
    torch.testing.assert_close(loss, torch.tensor([math.log(1 + math.exp(-2))]))


def test_info_nce_ignores_absent_negatives():
    with_absent = info_nce(torch.tensor([0.3]), torch.tensor([[0.1, float("-inf")]]), 0.5)
    torch.testing.assert_close(with_absent, info_nce(torch.tensor([0.3]), torch.tensor([[0.1]]), 0.5))


def test_mining_draws_only_from_the_most_similar_allowed_candidates():
    selection = torch.arange(10.0).repeat(3, 1)  # candidate 9 most similar
    excluded = torch.zeros(3, 10, dtype=torch.bool)
    excluded[:, 9] = True
    index, valid = mine_negatives(selection, excluded, hard_candidates=4, negatives=2,
                                  generator=torch.Generator().manual_seed(0))
    assert index.shape == (3, 2) and valid.all()
    assert set(index.flatten().tolist()) <= {5, 6, 7, 8}


def test_mining_marks_draws_of_excluded_candidates_invalid():
    excluded = torch.tensor([[True, True, False]])
    index, valid = mine_negatives(torch.zeros(1, 3), excluded, 3, 3, torch.Generator().manual_seed(0))
    assert sorted(index[valid].tolist()) == [2]


def test_positive_is_the_nearest_voxel_in_world_mm():
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = [100, 0, 0]
    points = np.array([[116.0, 9.0, 15.0], [90.0, 0.0, 0.0]])
    index, distance = nearest_voxels(points, (4, 4, 4), affine)
    assert index[0] == np.ravel_multi_index((2, 1, 2), (4, 4, 4))
    assert distance[0] == pytest.approx(np.hypot(1.0, 1.0))
    assert distance[1] == np.inf  # nearest voxel would be i = -1


def one_hot_batch(shape=(6, 6, 4), voxel_mm=8.0):
    """Two scans (the second 1000 mm away), two views each (shifted by two voxels), whose embedding is one-hot in
    world position: a positive has cosine 1 and every other vector cosine 0."""
    affines = []
    for offset_mm in (0.0, 1000.0):
        for shift_mm in (0.0, 2 * voxel_mm):
            affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
            affine[:3, 3] = [offset_mm + shift_mm, shift_mm, shift_mm]
            affines.append(affine)
    positions = [tuple(p) for a in affines for p in np.rint(grid_xyz_mm(shape, a)).astype(int)]
    code = {p: i for i, p in enumerate(dict.fromkeys(positions))}
    local = torch.zeros(len(affines), len(code), *shape)
    flat = local.flatten(2)
    for v, affine in enumerate(affines):
        for m, p in enumerate(np.rint(grid_xyz_mm(shape, affine)).astype(int)):
            flat[v, code[tuple(p)], m] = 1.0
    # The global map: every other voxel of the local one, so also one-hot, on a grid of stride 2.
    return flat.reshape(local.shape), np.stack(affines)


def test_loss_golden_value_on_one_hot_embeddings():
    local, affines = one_hot_batch()
    coarse = local[:, :, ::2, ::2, ::2]
    config = tiny_config(local_queries=20, local_hard_candidates=200, local_negatives=50, global_queries=10,
                         global_positive_radius_mm=20.0, global_negatives=0, global_cross_negatives=1000)
    losses = build_sam_loss(config.train)(local, coarse, affines, np.stack([grid_affine(a, 2) for a in affines]),
                                          torch.Generator().manual_seed(0))
    assert losses["queries/local"] == 4 * 20 and losses["queries/global"] > 0
    # Local: the positive (cosine 1) against 50 negatives (cosine 0); the query's own position is never one.
    torch.testing.assert_close(losses["loss/local"], torch.tensor(math.log(1 + 50 * math.exp(-2))))
    # Global: only cross-volume negatives, all 2 x 3 x 3 x 2 voxels of the other scan's views, none of this one's.
    torch.testing.assert_close(losses["loss/global"], torch.tensor(math.log(1 + 36 * math.exp(-2))))


def test_loss_falls_on_a_fixed_pair():
    config = tiny_config(independent_crop_probability=0.0, noise_sd=(0.0, 0.0), blur_probability=0.0)
    torch.manual_seed(0)
    model = build_sam(config).train()
    loss_fn = build_sam_loss(config.train)
    scans = [prepare_scan(synthetic_ct(seed=s), config.model.spacing_mm) for s in (0, 1)]
    batch = make_batch(scans, config, np.random.default_rng(0))
    local_affines = np.stack([grid_affine(a, model.local_stride) for a in batch.affines])
    global_affines = np.stack([grid_affine(a, model.global_stride) for a in batch.affines])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(15):
        out = model(batch.images)
        # The same draws every step, so the objective is fixed.
        losses = loss_fn(out["local"], out["global"], local_affines, global_affines, torch.Generator().manual_seed(0))
        assert losses["queries/local"] > 0 and losses["queries/global"] > 0
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append(losses["loss"].item())
    assert history[-1] < 0.8 * history[0], history
