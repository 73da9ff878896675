"""Schedules as arrays indexed by step: LR warm-up and cosine, WD and momentum cosines, teacher temperature."""

import numpy as np
import pytest

from alice.pretrain.schedules import build_schedules, cosine_schedule, lr_schedule, warmup_schedule


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_minimum():
    lr = lr_schedule(1e-3, 1e-5, 100, 10)
    assert lr.shape == (100,)
    np.testing.assert_allclose(lr[:10], 1e-3 * np.arange(1, 11) / 10)
    assert lr[10] == pytest.approx(1e-3) and lr[-1] == pytest.approx(1e-5)
    assert np.all(np.diff(lr[10:]) <= 0)
    # Half way through the decay the cosine is at the midpoint.
    mid = lr_schedule(1.0, 0.0, 11, 0)[5]
    assert mid == pytest.approx(0.5)


def test_a_run_shorter_than_the_warm_up_ends_during_it():
    np.testing.assert_allclose(lr_schedule(1.0, 0.0, 3, 10), [0.1, 0.2, 0.3])


def test_min_lr_not_below_the_peak_is_refused():
    with pytest.raises(ValueError, match="min_lr=0.0001 must be below the peak lr=1.6e-06"):
        lr_schedule(1.6e-6, 1e-4, 100, 10)


def test_weight_decay_and_momentum_cosines():
    schedules = build_schedules(50, 1e-3, 1e-5, 5, (0.04, 0.4), (0.996, 1.0), (0.008, 0.01), 10)
    assert schedules.weight_decay[0] == pytest.approx(0.04) and schedules.weight_decay[-1] == pytest.approx(0.4)
    assert schedules.momentum[0] == pytest.approx(0.996) and schedules.momentum[-1] == pytest.approx(1.0)
    assert np.all(np.diff(schedules.momentum) >= 0)
    assert schedules.at(0) == {"lr": pytest.approx(2e-4), "wd": pytest.approx(0.04), "momentum": pytest.approx(0.996),
                               "teacher_temp": pytest.approx(0.008)}


def test_teacher_temperature_warms_up_then_stays():
    temps = warmup_schedule(0.008, 0.01, 20, 5)
    np.testing.assert_allclose(temps[:5], np.linspace(0.008, 0.01, 5))
    assert np.all(temps[5:] == 0.01)
    assert cosine_schedule(3.0, 3.0, 1)[0] == 3.0
