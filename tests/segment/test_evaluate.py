"""Held-out evaluation, the scratch-vs-Alice comparison (runs reused or resumed) and the CLI commands."""

import dataclasses
import json

import pytest

from alice import paths, runs
from alice.cli import main
from alice.errors import InputError
from alice.segment.evaluate import compare_methods, ensure_run, evaluate_run
from alice.segment.predict import EVALUATION_FILE
from alice.segment.train import finetune
from tests.segment.conftest import tiny_finetune_config, write_alice_checkpoint


def test_a_run_is_scored_on_the_held_out_cases_and_the_scores_are_cached(finished_run):
    result = evaluate_run(finished_run)
    assert result["cases"] == ["case2"] and result["step"] == 12 and result["split"] == "test"
    assert set(result["classes"]) == {"liver", "spleen", "kidneys", "stomach", "pancreas", "aorta", "heart", "lungs",
                                      "vertebrae"}
    liver = result["classes"]["liver"]
    assert 0 <= liver["dice"] <= 1 and (liver["hd95"] is None or liver["hd95"] >= 0)
    assert result["classes"]["kidneys"]["dice"] is None  # not in the synthetic case: undefined, not 0
    cache = finished_run / EVALUATION_FILE
    written = cache.stat().st_mtime_ns
    assert evaluate_run(finished_run) == json.loads(cache.read_text()) and cache.stat().st_mtime_ns == written


def test_validation_cases_are_scored_and_cached_apart_from_the_test_cases(finished_run):
    test = evaluate_run(finished_run)
    test_cache = (finished_run / EVALUATION_FILE).read_text()
    validation = evaluate_run(finished_run, "train", ["pseudo"])
    assert validation["cases"] == ["case0", "case1"] and validation["origins"] == ["pseudo"]
    assert validation["dice_mean"] != test["dice_mean"]
    assert (finished_run / EVALUATION_FILE).read_text() == test_cache  # what an exported model card reports
    cache = finished_run / "evaluation-train-pseudo.json"
    written = cache.stat().st_mtime_ns
    assert evaluate_run(finished_run, "train", ["pseudo"]) == validation and cache.stat().st_mtime_ns == written
    with pytest.raises(InputError, match="has no labelled case of origin real in split 'train'"):
        evaluate_run(finished_run, "train", ["real"])


def stop_after_step_2(run_dir):
    """A progress callback that asks for a stop during step 2 (the run ends after it, with a checkpoint)."""
    return lambda step, total, record: runs.request_stop(run_dir) if step == 1 else None


def test_a_comparison_resumes_an_interrupted_run_and_reuses_finished_ones(labelled_cohort, alice_checkpoint):
    base = tiny_finetune_config(labelled_cohort, steps=3)
    scratch_dir = paths.runs_dir("segment") / "scratch-seed0"
    finetune(base, scratch_dir, progress=stop_after_step_2(scratch_dir))  # an interrupted comparison
    seen = []
    result = compare_methods(alice_checkpoint, seeds=[0], base=base, on_run=lambda *args: seen.append(args[:2]))
    assert seen == [("scratch", 0), ("alice", 0)]
    assert set(result["methods"]) == {"scratch", "alice"}
    alice = result["methods"]["alice"]
    assert set(alice) == {"dice_mean", "dice_std", "hd95_mean", "seeds", "per_seed", "per_structure"}
    assert alice["seeds"] == [0] and alice["dice_std"] == 0.0 and "liver" in alice["per_structure"]
    assert [m["step"] for m in runs.read_metrics(scratch_dir)] == [1, 2, 3]
    assert "3 steps from step 2" in (scratch_dir / "train.log").read_text()
    last = runs.checkpoint_path(paths.runs_dir("segment") / "alice-seed0")
    written = last.stat().st_mtime_ns
    assert compare_methods(alice_checkpoint, seeds=[0], base=base) == result
    assert last.stat().st_mtime_ns == written


def test_ablations_can_run_fewer_seeds_and_every_run_is_scored_on_validation_cases(labelled_cohort,
                                                                                   alice_checkpoint):
    base = tiny_finetune_config(labelled_cohort, steps=1)
    result = compare_methods(alice_checkpoint, {"no_cafa": str(alice_checkpoint)}, seeds=[0, 1], methods=["scratch"],
                             base=base, ablation_seeds=[1], validation=("train", ["pseudo"]))
    assert result["methods"]["scratch"]["seeds"] == [0, 1] and result["methods"]["no_cafa"]["seeds"] == [1]
    assert result["validation"] == {"split": "train", "origins": ["pseudo"], "cases": ["case0", "case1"]}
    scratch = [evaluate_run(paths.runs_dir("segment") / f"scratch-seed{seed}", "train", ["pseudo"])["dice_mean"]
               for seed in (0, 1)]
    assert result["methods"]["scratch"]["validation_dice_mean"] == pytest.approx(sum(scratch) / 2)
    assert result["methods"]["no_cafa"]["validation_dice_std"] == 0.0
    assert (paths.runs_dir("segment") / "no_cafa-seed1").is_dir()
    assert not (paths.runs_dir("segment") / "no_cafa-seed0").exists()


def test_ensure_run_resumes_a_stopped_run_and_refuses_another_config(labelled_cohort, tmp_path):
    config = tiny_finetune_config(labelled_cohort, steps=3)
    finetune(config, tmp_path / "run", progress=stop_after_step_2(tmp_path / "run"))
    assert runs.read_status(tmp_path / "run")["state"] == "stopped"
    ensure_run(config, tmp_path / "run")
    assert runs.read_status(tmp_path / "run")["state"] == "finished"
    assert [m["step"] for m in runs.read_metrics(tmp_path / "run")] == [1, 2, 3]
    with pytest.raises(InputError, match=r"another config \(run.seed: 0 -> 1\)"):
        ensure_run(dataclasses.replace(config, run=dataclasses.replace(config.run, seed=1)), tmp_path / "run")


def test_ensure_run_refuses_a_run_whose_pretrained_weights_were_retrained_since(labelled_cohort, tmp_path):
    checkpoint = write_alice_checkpoint(tmp_path / "alice.pt", seed=1)
    config = dataclasses.replace(tiny_finetune_config(labelled_cohort, steps=1), init=str(checkpoint))
    ensure_run(config, tmp_path / "run")
    ensure_run(config, tmp_path / "run")  # the same weights: reused
    write_alice_checkpoint(checkpoint, seed=2)  # retrained at the same path
    with pytest.raises(InputError, match="fine-tuned from other weights than .*alice.pt holds now"):
        ensure_run(config, tmp_path / "run")


def test_the_cli_fine_tunes_from_alice_scores_predicts_and_exports(labelled_cohort, alice_checkpoint, tmp_path,
                                                                   capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--init", str(alice_checkpoint), "--steps", "2", "--train-cases", "1", "--seed", "1",
                 "--set", f"data.manifest={labelled_cohort}", "--set", "run.tensorboard=false",
                 "--out", str(out)]) == 0
    config = runs.read_config(out)
    assert config["init"] == str(alice_checkpoint) and config["model"]["feature_size"] == 12
    assert config["run"]["seed"] == 1 and config["data"]["train_cases"] == 1
    capsys.readouterr()
    assert main(["eval", "segmentation", "--run", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"] == ["case2"]
    assert main(["eval", "segmentation", "--checkpoint", str(alice_checkpoint), "--methods", "scratch", "--seeds", "0",
                 "--steps", "1", "--set", f"data.manifest={labelled_cohort}", "--set", "run.tensorboard=false",
                 "--validation-split", "train", "--validation-origins", "pseudo"]) == 0
    printed = capsys.readouterr().out
    assert "validation Dice on case0, case1" in printed and "scratch" in printed and "validation Dice 0." in printed
    image = labelled_cohort.parent / "images" / "case2.nii.gz"
    assert main(["predict", str(out), str(image), "--out", str(tmp_path / "pred.nii.gz")]) == 0
    assert main(["export-segmentation", str(out), "--out", str(tmp_path / "bundle")]) == 0
    assert "Held-out cases case2" in (tmp_path / "bundle" / "docs" / "README.md").read_text()
    assert main(["finetune", "--resume", "--out", str(out), "--steps", "3"]) == 2
    assert "run.steps: 2 -> 3" in capsys.readouterr().err
