"""The fine-tuning loop and its run folder: the loss falls, files and checkpoints, exact resume, refusals."""

import dataclasses
import logging

import pytest
import torch

from alice import runs
from alice.errors import InputError
from alice.segment.network import load_segmentation_checkpoint
from alice.segment.train import FinetuneConfig, finetune, load_finetune_config
from tests.segment.conftest import tiny_finetune_config


def test_a_short_fine_tune_lowers_the_loss_and_fills_the_run_folder(finished_run, labelled_cohort):
    metrics = runs.read_metrics(finished_run)
    assert [m["step"] for m in metrics] == list(range(1, 13))
    losses = [m["loss"] for m in metrics]
    assert sum(losses[-3:]) < sum(losses[:3])
    validated = [m for m in metrics if "val_dice" in m]
    assert [m["step"] for m in validated] == [6, 12]
    assert 0 <= validated[-1]["val_dice"] <= 1 and "val_dice/liver" in validated[-1]
    status = runs.read_status(finished_run)
    assert status["state"] == "finished" and status["step"] == status["total"] == 12
    assert {"config.yaml", "status.json", "metrics.jsonl", "train.log", "tensorboard"} <= \
        {p.name for p in finished_run.iterdir()}
    assert runs.checkpoint_path(finished_run, runs.BEST_CHECKPOINT).is_file()
    payload = load_segmentation_checkpoint(runs.checkpoint_path(finished_run))
    assert payload["step"] == 12 and payload["class_names"][:2] == ["background", "liver"]
    config = FinetuneConfig.from_dict(runs.read_config(finished_run))
    assert config.data.manifest == str(labelled_cohort.resolve()) and config.data.train_cases == 2


def test_the_new_head_learns_faster_than_the_backbone_and_every_parameter_is_optimised(finished_run):
    payload = load_segmentation_checkpoint(runs.checkpoint_path(finished_run))
    config = FinetuneConfig.from_dict(payload["config"])
    groups = payload["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, config.optim.head_lr_scale, config.optim.head_lr_scale]
    backbone, head = groups[0]["lr"], groups[2]["lr"]
    assert backbone > 0 and head == pytest.approx(config.optim.head_lr_scale * backbone)
    assert [g["weight_decay"] > 0 for g in groups] == [True, False, True, False]  # none on biases and norms
    optimised = sum(len(g["params"]) for g in groups)
    assert optimised == len(payload["model"]) - sum(1 for k in payload["model"] if "running" in k or "tracked" in k)


def test_unlabelled_cases_are_skipped_with_a_warning(finished_run):
    log = (finished_run / "train.log").read_text()
    assert "nolabel: no label map; skipped" in log and "training cases ['case0', 'case1']" in log


def test_stop_then_resume_continues_at_the_saved_step_as_a_straight_run(labelled_cohort, tmp_path):
    config = tiny_finetune_config(labelled_cohort, steps=4)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    finetune(config, straight)
    # A stop requested during step 2 (here: after step 1) ends the run after step 2, with a checkpoint.
    finetune(config, stopped, progress=lambda step, total, record: runs.request_stop(stopped) if step == 1 else None)
    status = runs.read_status(stopped)
    assert status["state"] == "stopped" and status["step"] == 2 and "--resume" in status["message"]
    assert load_segmentation_checkpoint(runs.checkpoint_path(stopped))["step"] == 2
    steps_seen = []
    finetune(config, stopped, resume=True, progress=lambda step, total, record: steps_seen.append(step))
    assert steps_seen == [3, 4] and runs.read_status(stopped)["state"] == "finished"
    assert [m["step"] for m in runs.read_metrics(stopped)] == [1, 2, 3, 4]
    first, second = (load_segmentation_checkpoint(runs.checkpoint_path(d))["model"] for d in (straight, stopped))
    for key, value in first.items():
        torch.testing.assert_close(second[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_different_config_or_a_used_folder_is_refused_with_the_keys_named(finished_run, labelled_cohort):
    config = tiny_finetune_config(labelled_cohort, steps=12)
    changed = dataclasses.replace(config, optim=dataclasses.replace(config.optim, lr=1e-3))
    with pytest.raises(InputError, match=r"differing keys: optim.lr: 0.01 -> 0.001"):
        finetune(changed, finished_run, resume=True)
    with pytest.raises(InputError, match="already holds a run"):
        finetune(config, finished_run)


def test_the_config_refuses_bad_values_naming_each():
    with pytest.raises(InputError, match=r"data.train_cases=0.*augment.flip_prob=2.*unknown label set 'nope'"):
        load_finetune_config(["data.train_cases=0", "augment.flip_prob=2", "data.label_set=nope"])
    with pytest.raises(InputError, match=r"unknown config key\(s\) \['optim.momentum'\]"):
        load_finetune_config(["optim.momentum=0.9"])
    assert load_finetune_config(["run.steps=7"]).run.steps == 7


def test_a_cohort_without_labelled_training_cases_is_refused(labelled_cohort, tmp_path, caplog):
    config = tiny_finetune_config(labelled_cohort)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, origins=("real",)))
    with caplog.at_level(logging.WARNING), pytest.raises(InputError, match=r"no labelled case of origin \['real'\]"):
        finetune(config, tmp_path / "run")
    assert runs.read_status(tmp_path / "run")["state"] == "failed"


def test_the_contrast_augmentation_scales_hu_above_air_per_crop():
    # One tissue value inside the window and air around it: the contrast factor moves the tissue from crop to
    # crop, and air (also the padding outside the scan) stays at the bottom of the window.
    import numpy as np

    from alice.segment.train import AugmentConfig, CropSampler, TrainingCase

    hu = np.full((24, 24, 24), -1024.0, dtype=np.float32)
    hu[:, :, 12:] = 40.0
    classes = (hu > 0).astype(np.uint8)
    case = TrainingCase("synthetic", np.pad(hu, 8, constant_values=-1024.0), np.pad(classes, 8),
                        {1: np.flatnonzero(classes)}, hu.shape)
    window = (-160.0, 240.0)

    def tissue_values(contrast: float) -> np.ndarray:
        augment = AugmentConfig(contrast=contrast, intensity_shift=0.0, intensity_scale=0.0,
                                foreground_fraction=1.0)
        images, labels = CropSampler([case], 16, 8, augment, window, seed=0).next_batch()
        assert (images[labels == 0] == 0).all()
        return np.array([float(images[i][labels[i] == 1].mean()) for i in range(len(images))])

    np.testing.assert_allclose(tissue_values(0.0), 0.5)
    shifted = tissue_values(0.1)
    assert shifted.std() > 0.05 and (np.abs(shifted - 0.5) <= 0.1 * 1064 / 400 + 1e-6).all()
