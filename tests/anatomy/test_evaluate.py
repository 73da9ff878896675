"""Landmark evaluation: metrics, ground truth across related cases, and the baselines on real data."""

import numpy as np
import pytest

from alice.anatomy.evaluate import evaluate_landmarks, landmark_tasks, ncc_method, radial_error_metrics
from alice.anatomy.ncc import NCCMatcher
from alice.data.cohort import sample_cohort
from alice.data.pseudo import true_position


def test_radial_error_metrics_by_hand():
    metrics = radial_error_metrics(np.array([1.0, 4.0, 9.0, 30.0]))
    assert metrics == {"mre_mm": 11.0, "median_mm": 6.5, "max_mm": 30.0, "within_5mm": 0.5, "within_10mm": 0.75,
                       "within_20mm": 0.75, "n": 4}


@pytest.fixture(scope="module")
def tasks():
    return landmark_tasks(sample_cohort(), "lidc0001", "test")


def test_tasks_use_only_held_out_pseudo_subjects(tasks):
    assert [t.key.record.case_id for t in tasks] == ["pseudo05", "pseudo06"]
    assert all(len(t.names) > 50 for t in tasks)


def test_the_truth_scores_zero_and_a_constant_shift_scores_its_length(tasks):
    oracle = {task.key.record.case_id: task.true_xyz_mm for task in tasks}
    result = evaluate_landmarks({
        "oracle": lambda q, k, xyz: oracle[k.record.case_id],
        "shifted": lambda q, k, xyz: oracle[k.record.case_id] + [3.0, 0.0, 4.0]}, tasks)
    assert result["methods"]["oracle"]["mre_mm"] == 0.0
    assert result["methods"]["shifted"]["mre_mm"] == pytest.approx(5.0)
    assert result["methods"]["shifted"]["within_10mm"] == 1.0 and result["methods"]["shifted"]["max_mm"] < 5.01
    assert set(result["methods"]["oracle"]["per_structure"]) == set(tasks[0].names) | set(tasks[1].names)


def test_ncc_finds_the_landmarks_it_copied():
    """NCC matching a scan against itself returns each point's own grid position."""
    case = landmark_tasks(sample_cohort(), "lidc0001", "test")[0].query
    xyz = case.landmarks[["x", "y", "z"]].to_numpy()[:20]
    matched, scores = NCCMatcher().match(case.image, case.image, xyz)
    assert np.median(np.linalg.norm(matched - xyz, axis=1)) <= 3.5  # within the 4 mm grid's rounding
    assert np.median(scores) > 0.99


def test_ncc_beats_chance_on_held_out_subjects(tasks):
    metrics = evaluate_landmarks({"ncc": ncc_method()}, tasks[:1])["methods"]["ncc"]
    assert metrics["median_mm"] < 30


def test_true_position_between_related_cases():
    cohort = sample_cohort()
    lidc, p1, p5, lung1 = (cohort.get(c) for c in ("lidc0001", "pseudo01", "pseudo05", "lung1"))
    xyz = np.array([[40.0, 20.0, -240.0]])
    in_p1 = true_position(lidc, p1, xyz)
    np.testing.assert_allclose(true_position(p1, lidc, in_p1), xyz, atol=1e-3)
    np.testing.assert_allclose(true_position(p1, p5, in_p1), true_position(lidc, p5, xyz), atol=1e-3)
    assert true_position(lidc, lung1, xyz) is None
    np.testing.assert_array_equal(true_position(lung1, lung1, xyz), xyz)
