"""Views carry world mm; the training loop writes its metrics and checkpoint, is seeded, and refuses test cases."""

import json

import numpy as np
import pytest
import torch

from alice.anatomy.model import PRESETS, build_sam, load_sam
from alice.anatomy.train import (
    AIR_HU,
    build_optimizer,
    lr_schedule,
    prepare_scan,
    render_view,
    sample_view_pair,
    train_sam,
    view_affine,
)
from alice.data.cohort import CaseRecord
from alice.data.io import Volume
from tests.anatomy.conftest import synthetic_ct, tiny_config


def test_a_view_shows_the_scan_at_the_world_positions_of_its_affine():
    # A scan whose value is its world x coordinate: a view's voxel must show its own world x.
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-40, 10, 20]
    i = np.arange(20, dtype=np.float32)[:, None, None] * np.ones((20, 20, 20), dtype=np.float32)
    scan = prepare_scan(Volume(-40 + 4 * i, affine), 4.0)
    view = view_affine(np.array([-2.0, 40.0, 50.0]), 3.3, (6, 5, 4))
    values = render_view(scan, view, (6, 5, 4))[0].numpy()
    expected_x = view[0, 0] * np.arange(6) + view[0, 3]
    np.testing.assert_allclose(values[:, 2, 1], expected_x, atol=1e-3)
    outside = render_view(scan, view_affine(np.array([500.0, 0, 0]), 4.0, (4, 4, 4)), (4, 4, 4))
    assert (outside == AIR_HU).all()


def test_paired_views_share_a_seed_and_are_rescaled_within_range():
    config = tiny_config(independent_crop_probability=0.0).train
    scan = prepare_scan(synthetic_ct(), 4.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pair = sample_view_pair(scan, 4.0, config, rng)
        boxes = []
        for affine in pair:
            assert 4.0 / 1.2 - 1e-9 <= affine[0, 0] <= 4.0 / 0.8 + 1e-9
            corner = affine[:3, :3] @ (np.array(config.crop_shape) - 1) + affine[:3, 3]
            boxes.append((affine[:3, 3], corner))
        low = np.maximum(boxes[0][0], boxes[1][0])
        high = np.minimum(boxes[0][1], boxes[1][1])
        assert np.all(low < high), "views sharing a seed must overlap"


def test_lr_schedule_warms_up_then_decays_to_zero():
    lr = lr_schedule(0.02, 100, 10)
    assert lr[0] == pytest.approx(0.002) and lr[9] == pytest.approx(0.02)
    assert np.all(np.diff(lr[10:]) <= 0) and lr[-1] < 1e-5


def _run(tmp_path, name, steps=3):
    scans = [synthetic_ct(seed=0), synthetic_ct(seed=1)]
    return train_sam(scans, tiny_config(), steps=steps, out_dir=tmp_path / name, seed=3)


def test_training_writes_metrics_and_a_loadable_checkpoint(tmp_path):
    seen = []
    checkpoint = train_sam([synthetic_ct(seed=0), synthetic_ct(seed=1)], tiny_config(), steps=3,
                           out_dir=tmp_path / "run", seed=3, progress=lambda step, total, _: seen.append((step, total)))
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert set(lines[0]) == {"step", "loss", "loss/local", "loss/global", "lr", "seconds"}
    assert all(np.isfinite(line["loss"]) for line in lines)
    np.testing.assert_allclose([line["lr"] for line in lines], lr_schedule(tiny_config().train.lr, 3, 0))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert checkpoint == tmp_path / "run" / "checkpoints" / "last.pt"
    loaded = load_sam(checkpoint)
    assert loaded.step == 3 and loaded.config == tiny_config()


def test_training_is_seeded(tmp_path):
    def losses(name):
        _run(tmp_path, name)
        return [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    assert losses("a") == losses("b")


def test_training_refuses_held_out_test_cases(tmp_path):
    record = CaseRecord("pseudo05", tmp_path / "pseudo05.nii.gz", split="test")
    with pytest.raises(ValueError, match="pseudo05"):
        train_sam([record], tiny_config(), steps=1, out_dir=tmp_path / "run")


def test_the_optimiser_is_chosen_by_the_config(tmp_path):
    model = build_sam(tiny_config())
    assert isinstance(build_optimizer(model, PRESETS["cpu"].train), torch.optim.AdamW)
    assert isinstance(build_optimizer(model, PRESETS["published"].train), torch.optim.SGD)
    with pytest.raises(ValueError, match="lion"):
        train_sam([synthetic_ct()], tiny_config(optimizer="lion"), steps=1, out_dir=tmp_path / "run")
