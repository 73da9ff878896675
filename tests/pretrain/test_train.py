"""The training loop and its run folder: files, checkpoints, exact resume after a stop or a kill, refusals."""

import json

import pytest
import torch

from alice import runs
from alice.errors import InputError
from alice.pretrain.config import PretrainConfig, ViewConfig, save_config
from alice.pretrain.train import FORMAT_VERSION, load_checkpoint, pretrain
from tests.pretrain.conftest import tiny_pretrain_config

METRIC_KEYS = {"step", "loss", "loss/cls", "loss/patch", "loss/rec", "loss/uniformity", "loss/correspondence",
               "cls_agreement", "cls_logit_range", "lr", "wd", "momentum", "teacher_temp", "centre_norm/cls",
               "centre_norm/patch", "seconds_per_step"}
POSITION_KEYS = {"position_share/teacher", "position_share/student", "crop_variance/teacher", "crop_variance/student"}


def test_a_run_writes_every_file_of_the_run_folder(finished_run, tiny_cohort):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "status.json", "metrics.jsonl", "train.log", "tensorboard", "checkpoints"} <= names
    status = runs.read_status(finished_run)
    assert status["state"] == "finished" and status["step"] == status["total"] == 4
    metrics = runs.read_metrics(finished_run)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(set(m) - METRIC_KEYS <= POSITION_KEYS and METRIC_KEYS <= set(m) for m in metrics)
    # What the tokens encode, measured at every checkpoint (every 2 steps in the tiny run).
    assert [m["step"] for m in metrics if POSITION_KEYS <= set(m)] == [2, 4]
    assert all(0.0 <= metrics[-1][key] <= 1.0 for key in POSITION_KEYS)
    assert metrics[0]["teacher_temp"] == pytest.approx(0.008) and metrics[-1]["momentum"] == pytest.approx(1.0)
    assert any(p.name.startswith("events.out.tfevents") for p in (finished_run / "tensorboard").iterdir())
    assert "checkpoint at step 4" in (finished_run / "train.log").read_text()
    config = PretrainConfig.from_dict(runs.read_config(finished_run))
    assert config == PretrainConfig.from_dict(tiny_pretrain_config(tiny_cohort).to_dict())


def test_checkpoints_hold_plain_config_state_and_rng(finished_run):
    payload = load_checkpoint(runs.checkpoint_path(finished_run))
    assert (payload["kind"], payload["format_version"], payload["step"]) == ("alice", FORMAT_VERSION, 4)
    assert payload["alice_version"] and payload["config"]["run"]["steps"] == 4
    assert {"cls_loss.centre", "patch_loss.centre"} <= set(payload["model"])
    assert any(k.startswith("teacher.") for k in payload["model"]) and payload["optimizer"]["state"]
    assert set(payload["rng"][0]) >= {"python", "numpy", "torch", "sampler"}
    assert payload["schedules"]["lr"] == pytest.approx(1e-5)
    assert runs.checkpoint_path(finished_run, runs.BEST_CHECKPOINT).is_file()


def assert_same_weights(a, b):
    first, second = load_checkpoint(runs.checkpoint_path(a)), load_checkpoint(runs.checkpoint_path(b))
    assert first["step"] == second["step"]
    for key, value in first["model"].items():
        torch.testing.assert_close(second["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_stop_then_resume_equals_a_straight_run(finished_run, tiny_cohort, tmp_path, deterministic):
    out = tmp_path / "stopped"
    config = tiny_pretrain_config(tiny_cohort)
    # A stop requested during step 2 (here: after step 1) ends the run after step 2, with a checkpoint.
    pretrain(config, out, progress=lambda step, total, record: runs.request_stop(out) if step == 1 else None)
    status = runs.read_status(out)
    assert status["state"] == "stopped" and status["step"] == 2 and "--resume" in status["message"]
    pretrain(config, out, resume=True)
    assert runs.read_status(out)["state"] == "finished"
    assert [m["step"] for m in runs.read_metrics(out)] == [1, 2, 3, 4]
    assert_same_weights(finished_run, out)


def test_a_killed_run_resumes_from_its_last_checkpoint(finished_run, tiny_cohort, tmp_path, deterministic):
    out = tmp_path / "killed"
    config = tiny_pretrain_config(tiny_cohort)

    def die_after_step_3(step, total, record):
        if step == 3:
            raise KeyboardInterrupt  # the checkpoint is at step 2; step 3 is lost

    with pytest.raises(KeyboardInterrupt):
        pretrain(config, out, progress=die_after_step_3)
    assert runs.read_status(out)["state"] == "failed"
    assert len(runs.read_metrics(out)) == 3
    pretrain(config, out, resume=True)
    assert [m["step"] for m in runs.read_metrics(out)] == [1, 2, 3, 4]
    assert_same_weights(finished_run, out)


def test_resuming_with_another_config_is_refused_naming_the_keys(finished_run, tiny_cohort):
    changed = tiny_pretrain_config(tiny_cohort, views=ViewConfig(mode="same_volume", max_tries=4))
    with pytest.raises(InputError) as info:
        pretrain(changed, finished_run, resume=True)
    assert "views.mode: 'random_cross' -> 'same_volume'" in str(info.value)


def test_a_folder_holding_a_run_is_not_overwritten_and_resume_needs_a_checkpoint(finished_run, tiny_cohort,
                                                                                 tmp_path):
    with pytest.raises(InputError, match="already holds a run"):
        pretrain(tiny_pretrain_config(tiny_cohort), finished_run)
    with pytest.raises(InputError, match="no checkpoints/last.pt"):
        pretrain(tiny_pretrain_config(tiny_cohort), tmp_path / "empty", resume=True)


def test_a_failed_checkpoint_write_keeps_the_previous_one(tiny_cohort, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save, calls = torch.save, []

    def save_once_then_fail(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) > 1:
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_once_then_fail)
    with pytest.raises(OSError, match="disk full"):
        pretrain(tiny_pretrain_config(tiny_cohort, steps=3), out)
    monkeypatch.undo()
    assert load_checkpoint(runs.checkpoint_path(out))["step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    status = runs.read_status(out)
    assert status["state"] == "failed" and "disk full" in status["message"]


def test_sam_mode_mines_matched_pairs(tiny_cohort, tiny_sam, tmp_path):
    config = tiny_pretrain_config(tiny_cohort, steps=1,
                                  views=ViewConfig(mode="sam", threshold=0.3, max_tries=8, sam_checkpoint=str(tiny_sam)))
    pretrain(config, tmp_path / "sam")
    assert runs.read_status(tmp_path / "sam")["state"] == "finished"
    assert json.loads((tmp_path / "sam" / "status.json").read_text())["step"] == 1


def test_the_cli_runs_resumes_refuses_and_exports(tiny_cohort, tmp_path, capsys):
    from alice.cli import main

    config_file = save_config(tiny_pretrain_config(tiny_cohort, steps=2), tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(config_file), "--steps", "1", "--out", str(out)]) == 0
    assert "finished 1 steps" in capsys.readouterr().out
    assert main(["pretrain", "--resume", "--out", str(out)]) == 0  # the checkpoint's config, nothing to do
    assert main(["pretrain", "--config", str(config_file), "--resume", "--out", str(out)]) == 2
    assert "run.steps: 1 -> 2" in capsys.readouterr().err
    assert main(["pretrain", "--set", "optim.min_lr=1", "--out", str(tmp_path / "bad")]) == 2
    assert "optim.min_lr=1 must be at least 0 and below the peak optim.lr=0.0005" in capsys.readouterr().err
    assert main(["export-backbone", str(out), "--out", str(tmp_path / "bundle")]) == 0
    assert (tmp_path / "bundle" / "configs" / "metadata.json").is_file()
