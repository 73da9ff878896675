"""The inspection functions behind the Attention page: one pair through a tiny SSL model, maps on the crop."""

import dataclasses

import numpy as np
import pytest

from alice import runs
from alice.data.cohort import load_manifest
from alice.data.io import load_volume
from alice.errors import InputError
from alice.mining.views import MiningCase, mine_view_pair
from alice.pretrain import inspect
from alice.pretrain.ssl_model import build_ssl_model
from tests.pretrain.conftest import tiny_pretrain_config


@pytest.fixture(scope="module")
def inspected(tiny_cohort):
    config = tiny_pretrain_config(tiny_cohort)
    model = build_ssl_model(config).eval()
    records = load_manifest(tiny_cohort).split("train")
    cases = [MiningCase(r.case_id, load_volume(r.image)) for r in records[:2]]
    pair = mine_view_pair(cases[0], cases[1:], "random_cross", np.random.default_rng(0))
    batch = inspect.pair_batch(pair, cases[0], cases[1], config, seed=1, shift_voxels=model.correspondence_shift(),
                               token_grids=model.correspondence_grids())
    return inspect.inspect_pair(model, batch, teacher_temp=0.04), config


def test_attention_rows_are_distributions_and_the_heat_map_covers_the_crop(inspected):
    found, config = inspected
    roi = config.model.roi
    assert found.crops.shape == found.masks.shape == found.recon.shape == (2, roi, roi, roi)
    assert found.masks.dtype == bool and 0 < found.masks.mean() < 1
    heads = config.model.cafa_heads
    assert found.attention.shape == (2, heads, np.prod(found.enc_grid), np.prod(found.dec_grid))
    np.testing.assert_allclose(found.attention.sum(axis=-1), 1.0, rtol=1e-5)
    for head in (None, 0, heads - 1):
        heat = inspect.attention_heatmap(found, 1, 3, head)
        assert heat.shape == (roi, roi, roi)
        assert heat.sum() == pytest.approx(1.0, rel=1e-5)
        assert (heat >= 0).all()


def test_the_heat_map_puts_each_tokens_weight_on_its_own_cell(inspected):
    found, _ = inspected
    roi, grid = found.roi_voxels, found.dec_grid
    heat = inspect.attention_heatmap(found, 0, 0, head=0)
    row = found.attention[0, 0, 0]
    cell = (1, 0, 1)
    edge = roi // grid[0]
    block = heat[edge:2 * edge, :edge, edge:2 * edge]
    np.testing.assert_allclose(block, row[inspect.token_index(cell, grid)] / edge ** 3, rtol=1e-6)


def test_different_query_tokens_attend_differently(inspected):
    found, _ = inspected
    assert not np.allclose(inspect.attention_heatmap(found, 0, 0), inspect.attention_heatmap(found, 0, 5))


def test_similarity_map_shape_and_range(inspected):
    found, _ = inspected
    sim = inspect.similarity_map(found, 0)
    assert sim.shape == (found.roi_voxels,) * 3
    assert (np.abs(sim) <= 1 + 1e-5).all()
    assert set(found.losses) == {"loss", "loss/cls", "loss/patch", "loss/rec", "loss/correspondence", "cls_agreement"}
    assert found.losses["loss/correspondence"] > 0


def test_token_cells_round_trip_and_bad_arguments_are_refused(inspected):
    found, _ = inspected
    grid, roi = found.enc_grid, found.roi_voxels
    cell = (grid[0] - 1, 0, grid[2] // 2)
    centre = inspect.cell_centre_ijk(cell, grid, roi)
    assert inspect.token_cell(centre, grid, roi) == cell
    with pytest.raises(ValueError, match="outside"):
        inspect.token_index((grid[0], 0, 0), grid)
    with pytest.raises(ValueError, match="query token"):
        inspect.attention_heatmap(found, 0, 10_000)
    with pytest.raises(ValueError, match="do not fill"):
        inspect.tokens_to_voxels(np.zeros(5), grid, roi)
    without_cafa = dataclasses.replace(found, attention=None)
    with pytest.raises(ValueError, match="without CAFA"):
        inspect.attention_heatmap(without_cafa, 0, 0)


def test_models_load_from_a_run_checkpoint_or_untrained_from_a_preset(finished_run):
    model, config, step = inspect.load_model(runs.checkpoint_path(finished_run))
    assert step == 4 and config.model.roi == 32 and not model.student.training
    with pytest.raises(InputError, match="unknown preset"):
        inspect.load_model(None, preset="huge")
