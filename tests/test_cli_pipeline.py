"""The SAM-stage commands end to end on a tiny checkpoint: train, embed, mine and evaluate with --json."""

import json

import numpy as np
import pytest
import torch

from alice.cli import main
from alice.data.cohort import CaseRecord, Cohort, load_case, sample_cohort, write_manifest
from alice.data.io import Volume, save_volume
from tests.anatomy.conftest import tiny_config


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    """Two real cases and a held-out pseudo-subject at a quarter of the resolution, to keep the commands quick."""
    root = tmp_path_factory.mktemp("cohort")
    source = sample_cohort()
    records = []
    for case_id in ("lidc0001", "lung1", "pseudo05"):
        original = source.get(case_id)
        case = load_case(original)

        def small(volume: Volume, name: str) -> CaseRecord:
            halved = Volume(volume.array[::2, ::2, ::2].copy(), volume.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
            return save_volume(halved, root / name / f"{case_id}.nii.gz")

        records.append(CaseRecord(case_id, small(case.image, "images"), small(case.label, "labels"),
                                  original.landmarks, original.label_names, original.split, original.origin,
                                  (4.0, 4.0, 4.0), case.image.array[::2, ::2, ::2].shape, original.correspondence))
    return write_manifest(Cohort("small", tuple(records)), root / "manifest.csv")


def test_mine_json_is_one_object_with_the_pairs(small_cohort, tiny_sam_checkpoint, capsys):
    assert main(["mine", "--manifest", str(small_cohort), "--checkpoint", str(tiny_sam_checkpoint), "--n", "3",
                 "--threshold", "0.3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "sam" and len(out["pairs"]) == 3
    assert all(p["query_case"] != p["key_case"] for p in out["pairs"])


def test_mine_same_volume_writes_csv(small_cohort, tiny_sam_checkpoint, tmp_path, capsys):
    out = tmp_path / "pairs.csv"
    assert main(["mine", "--manifest", str(small_cohort), "--mode", "same_volume", "--n", "2", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_eval_landmarks_json_reports_every_method(small_cohort, tiny_sam_checkpoint, capsys):
    assert main(["eval", "landmarks", "--manifest", str(small_cohort), "--checkpoint", str(tiny_sam_checkpoint),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["key_cases"] == ["pseudo05"]
    assert set(result["methods"]) == {"sam", "untrained", "ncc"}
    for metrics in result["methods"].values():
        assert {"mre_mm", "median_mm", "max_mm", "within_5mm", "within_10mm", "within_20mm", "n"} <= set(metrics)
        assert metrics["n"] > 50


def test_sam_embed_json(small_cohort, tiny_sam_checkpoint, capsys):
    assert main(["sam", "embed", "--manifest", str(small_cohort), "--checkpoint", str(tiny_sam_checkpoint), "--cases",
                 "lung1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cases"][0]["case"] == "lung1"


def test_a_checkpoint_of_another_kind_is_refused_with_its_name(small_cohort, tmp_path, capsys):
    wrong = tmp_path / "wrong.pt"
    torch.save({"kind": "alice", "format_version": 1}, wrong)
    assert main(["eval", "landmarks", "--manifest", str(small_cohort), "--checkpoint", str(wrong)]) == 2
    assert "kind 'alice'" in capsys.readouterr().err


def test_sam_train_writes_a_checkpoint_and_metrics(small_cohort, tmp_path, monkeypatch):
    from alice.anatomy import model

    monkeypatch.setitem(model.PRESETS, "cpu", tiny_config())
    assert main(["sam", "train", "--manifest", str(small_cohort), "--steps", "2", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
