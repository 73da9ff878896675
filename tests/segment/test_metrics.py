"""Dice and HD95 per class, with MONAI's conventions."""

import math

import numpy as np

from alice.segment.metrics import average_scores, mean_of, segmentation_scores

CLASSES = ["background", "a", "b", "c"]


def two_cubes(shift: int = 0) -> np.ndarray:
    volume = np.zeros((24, 24, 24), dtype=np.uint8)
    volume[4 + shift:12 + shift, 4:12, 4:12] = 1
    volume[14:20, 14:20, 14:20] = 2
    return volume


def test_a_perfect_prediction_scores_one_and_an_empty_class_zero():
    truth = two_cubes()
    perfect = segmentation_scores(truth, truth, CLASSES, (1.0, 1.0, 1.0))
    assert perfect["a"] == {"dice": 1.0, "hd95": 0.0} and perfect["b"] == {"dice": 1.0, "hd95": 0.0}
    assert math.isnan(perfect["c"]["dice"])  # absent from both: undefined, left out of means
    missing_b = truth.copy()
    missing_b[missing_b == 2] = 0
    scores = segmentation_scores(missing_b, truth, CLASSES, (1.0, 1.0, 1.0))
    assert scores["a"]["dice"] == 1.0 and scores["b"]["dice"] == 0.0 and math.isnan(scores["b"]["hd95"])
    assert mean_of(scores, "dice") == 0.5 and mean_of(scores, "hd95") == 0.0
    empty = segmentation_scores(np.zeros_like(truth), truth, CLASSES, (1.0, 1.0, 1.0))
    assert empty["a"]["dice"] == empty["b"]["dice"] == 0.0


def test_hd95_is_in_millimetres():
    truth, shifted = two_cubes(), two_cubes(shift=2)
    at_1mm = segmentation_scores(shifted, truth, CLASSES, (1.0, 1.0, 1.0))["a"]
    at_3mm = segmentation_scores(shifted, truth, CLASSES, (3.0, 3.0, 3.0))["a"]
    assert 0 < at_1mm["dice"] < 1 and at_1mm["hd95"] > 0
    assert at_3mm["hd95"] == 3 * at_1mm["hd95"]


def test_averages_skip_undefined_values():
    per_case = [{"a": {"dice": 1.0}, "b": {"dice": float("nan")}}, {"a": {"dice": 0.5}, "b": {"dice": 0.2}}]
    assert average_scores(per_case) == {"a": {"dice": 0.75}, "b": {"dice": 0.2}}
