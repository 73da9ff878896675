"""Landmark retrieval: self-match, known correspondence, air and out-of-volume queries, top-k and CSV export."""

import numpy as np
import pytest

from alice.data.cohort import load_case
from alice.errors import InputError
from alice.explore.dense import cohort_index
from alice.explore.retrieval import EXPORT_COLUMNS, best_match, query_point, query_vector


def liver_landmark(records) -> np.ndarray:
    landmarks = load_case(records["lidc0001"]).landmarks
    return landmarks.loc[landmarks["name"] == "liver", ["x", "y", "z"]].to_numpy()[0]


def test_a_point_matched_within_its_own_case_returns_itself(sam_embeddings):
    embedding = sam_embeddings["pseudo05"]
    for row in (100, len(embedding) // 2, len(embedding) - 100):
        point = embedding.xyz_mm[row].astype(np.float64)
        ijk, score, _ = best_match(embedding, query_vector(embedding, point))
        assert score > 0.999
        assert np.linalg.norm(ijk - embedding.ijk[row]) <= 1.0  # within one voxel


def test_liver_is_found_in_a_pseudo_subject_near_its_true_position(records, sam_embeddings):
    query = sam_embeddings["lidc0001"]
    result = query_point(query, liver_landmark(records), list(sam_embeddings.values()), "sam", records)
    by_case = {m.case_id: m for m in result.matches}
    assert set(by_case) == {"pseudo05", "lung1"}
    assert by_case["pseudo05"].error_mm < 15
    assert by_case["pseudo05"].cycle_error_mm < 15
    assert by_case["lung1"].error_mm is None and by_case["lung1"].true_xyz_mm is None  # no known truth
    assert [m.score for m in result.matches] == sorted((m.score for m in result.matches), reverse=True)


def test_query_outside_the_volume_or_in_air_explains_itself(sam_embeddings):
    embedding = sam_embeddings["lidc0001"]
    with pytest.raises(InputError, match="outside case lidc0001's volume"):
        query_vector(embedding, embedding.xyz_mm.max(axis=0) + 500)
    corner = embedding.affine[:3, 3] + 1.0  # voxel (0, 0, 0): air around the body
    with pytest.raises(InputError, match="in air outside the body"):
        query_vector(embedding, corner)


def test_top_k_comes_from_other_cases_and_the_csv_has_the_documented_columns(records, sam_embeddings, sam_settings):
    ids = list(sam_embeddings)
    index = cohort_index([records[i] for i in ids], [sam_embeddings[i] for i in ids], sam_settings)
    result = query_point(sam_embeddings["lidc0001"], liver_landmark(records), list(sam_embeddings.values()), "sam",
                         records, index, k=5)
    assert len(result.top_k) == 5
    assert "lidc0001" not in set(result.top_k["case"])
    assert list(result.top_k["score"]) == sorted(result.top_k["score"], reverse=True)
    assert result.top_k["score"].iloc[0] == pytest.approx(max(m.score for m in result.matches), abs=0.02)
    table = result.table()
    assert list(table.columns) == EXPORT_COLUMNS
    assert len(table) == 2 and set(table["case"]) == {"pseudo05", "lung1"}
