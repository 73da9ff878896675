"""View mining: each mode yields its kind of pair, SAM pairs respect the threshold, seeds reproduce."""

import numpy as np
import pytest
import torch

from alice.anatomy.cache import embed_case
from alice.anatomy.match import match_points
from alice.anatomy.model import build_sam
from alice.errors import InputError
from alice.mining.views import (MiningCase, foreground_points, mine_view_pair, mine_view_pairs, pairs_table,
                                write_pairs)
from tests.anatomy.conftest import synthetic_ct, tiny_config


@pytest.fixture(scope="module")
def cases():
    torch.manual_seed(0)
    model = build_sam(tiny_config()).eval()
    volumes = [synthetic_ct(seed=s) for s in range(3)]
    return [MiningCase(f"case{s}", v, embed_case(model, v)) for s, v in enumerate(volumes)]


def test_foreground_points_are_above_the_threshold_and_away_from_the_border(cases):
    image = cases[0].image
    ijk = foreground_points(image, 200, np.random.default_rng(0), margin_voxels=5)
    assert np.all(image.array[tuple(ijk.T)] > -125)
    assert np.all(ijk >= 5) and np.all(ijk < np.array(image.shape) - 5)


def test_same_volume_pairs_stay_in_one_case(cases):
    pair = mine_view_pair(cases[0], cases, "same_volume", np.random.default_rng(0))
    assert pair.query_case == pair.key_case == "case0"
    assert np.isnan(pair.score) and pair.tries == 1


def test_random_cross_pairs_use_another_case(cases):
    for seed in range(5):
        pair = mine_view_pair(cases[1], cases, "random_cross", np.random.default_rng(seed))
        assert pair.key_case != "case1"
        assert np.isnan(pair.score)
        key = next(c for c in cases if c.case_id == pair.key_case).image
        assert key.array[pair.key_ijk] > -125


def test_sam_pairs_are_the_match_of_the_query_point_and_reach_the_threshold(cases):
    pair = mine_view_pair(cases[0], cases, "sam", np.random.default_rng(3), threshold=0.5)
    assert pair.key_case != "case0" and pair.accepted and pair.score >= 0.5 and 1 <= pair.tries <= 100
    key = next(c for c in cases if c.case_id == pair.key_case)
    result = match_points(cases[0].embedding, key.embedding, np.array([pair.query_xyz_mm]))
    assert result.score[0] == pytest.approx(pair.score, abs=1e-5)
    np.testing.assert_allclose(key.image.ijk_to_xyz(pair.key_ijk), result.xyz_mm[0], atol=key.image.spacing_mm.max())


def test_an_unreachable_threshold_uses_every_try_and_keeps_the_best(cases):
    pair = mine_view_pair(cases[0], cases, "sam", np.random.default_rng(0), threshold=1.01, max_tries=20)
    assert not pair.accepted and pair.tries == 20 and pair.score < 1.01


def test_the_same_seed_gives_the_same_pairs(cases):
    first = pairs_table(mine_view_pairs(cases, 4, "sam", seed=7, threshold=0.5))
    again = pairs_table(mine_view_pairs(cases, 4, "sam", seed=7, threshold=0.5))
    other = pairs_table(mine_view_pairs(cases, 4, "sam", seed=8, threshold=0.5))
    assert first.equals(again)
    assert not first.equals(other)


def test_cross_patient_mining_on_one_case_explains_itself(cases):
    with pytest.raises(InputError, match="needs at least two cases"):
        mine_view_pair(cases[0], cases[:1], "sam", np.random.default_rng(0))
    mine_view_pair(cases[0], cases[:1], "same_volume", np.random.default_rng(0))  # fine with one case


def test_sam_mode_without_embeddings_names_the_command(cases):
    bare = [MiningCase(c.case_id, c.image) for c in cases]
    with pytest.raises(InputError, match="alice sam embed"):
        mine_view_pair(bare[0], bare, "sam", np.random.default_rng(0))


def test_pairs_table_columns_and_csv(cases, tmp_path):
    pairs = mine_view_pairs(cases, 3, "random_cross", seed=0)
    path = write_pairs(pairs, tmp_path / "pairs.csv")
    table = pairs_table(pairs)
    assert list(table.columns[:3]) == ["mode", "query_case", "key_case"]
    assert {"query_x_mm", "key_z_mm", "query_i", "key_k", "score", "tries", "accepted"} <= set(table.columns)
    assert path.read_text().splitlines()[0].startswith("mode,query_case,key_case")
