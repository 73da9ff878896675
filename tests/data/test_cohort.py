"""Cohort manifests, the sample cohort, user data (folders, dataset.json) and adding a case."""

import json

import numpy as np
import pytest

from alice import paths
from alice.data.cohort import (add_user_case, cohort_from_decathlon, cohort_from_folder, load_case,
                               load_manifest, sample_cohort, user_cohort)
from alice.errors import InputError
from tests.conftest import write_nifti


def test_sample_cohort_lists_real_and_pseudo_cases(sample_cohort_available):
    cohort = sample_cohort()
    assert {"lidc0001", "lung1", "lung2"} <= set(cohort.case_ids)
    assert {c.origin for c in cohort.cases} == {"real", "pseudo"}
    assert cohort.split("test"), "held-out pseudo-subjects are needed for evaluation"
    for case in cohort.cases:
        assert case.image.exists() and case.label.exists() and case.landmarks.exists()
        assert case.spacing_mm == (2.0, 2.0, 2.0)


def test_sample_lidc_case_has_liver_and_spleen_on_the_right_sides(sample_cohort_available):
    """RAS+ sanity check: the liver lies on the patient's right (x > 0), the spleen on the left (x < 0)."""
    case = load_case(sample_cohort().get("lidc0001"))
    landmarks = case.landmarks.set_index("name")
    assert landmarks.loc["liver", "x"] == pytest.approx(41.7, abs=1.5)
    assert landmarks.loc["spleen", "x"] == pytest.approx(-96.5, abs=1.5)
    assert len(case.label_names) >= 89 and len(np.unique(case.label.array)) - 1 == len(case.landmarks)
    assert case.image.array.dtype == np.int16 and case.image.array.min() >= -1024


def test_manifest_errors_name_the_file_and_row(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case_id,image,label,landmarks,label_names,split,origin,spacing_mm,shape\n"
                        "a,images/a.nii.gz,,,,training,real,2 2 2,4 4 4\n")
    with pytest.raises(InputError, match="row 2: split 'training'") as info:
        load_manifest(manifest)
    assert str(manifest) in str(info.value)


def test_manifest_missing_column_is_refused(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("case_id,image\na,a.nii.gz\n")
    with pytest.raises(InputError, match="lacks column"):
        load_manifest(manifest)


def test_add_user_case_converts_into_the_workspace_and_leaves_the_source_alone(tmp_path):
    affine = np.diag([-1.0, 1.0, 2.0, 1.0])
    image = write_nifti(tmp_path / "my scan.nii.gz", np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), affine)
    label = write_nifti(tmp_path / "my scan_label.nii.gz", (np.arange(120).reshape(6, 5, 4) % 3).astype(np.uint8),
                        affine)
    before = image.read_bytes(), label.read_bytes()
    record = add_user_case(image, label)
    assert record.case_id == "my_scan"
    assert record.image.is_relative_to(paths.user_cohort_dir())
    assert (image.read_bytes(), label.read_bytes()) == before
    loaded = load_case(user_cohort().get("my_scan"))
    assert loaded.image.orientation == "RAS" and loaded.label is not None
    assert set(loaded.landmarks["label"]) == {1, 2}
    with pytest.raises(InputError, match="already has a case"):
        add_user_case(image)


def test_add_user_case_refuses_a_misaligned_label(tmp_path):
    image = write_nifti(tmp_path / "a.nii.gz", np.zeros((6, 5, 4), np.int16), np.eye(4))
    label = write_nifti(tmp_path / "b.nii.gz", np.zeros((6, 5, 3), np.uint8), np.eye(4))
    with pytest.raises(InputError, match="shape"):
        add_user_case(image, label)
    assert not user_cohort().cases, "nothing is added when the input is refused"


def test_folder_of_nifti_files_is_a_cohort(tmp_path):
    for name in ("case_a", "case_b"):
        write_nifti(tmp_path / f"{name}.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    write_nifti(tmp_path / "case_a_label.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    cohort = cohort_from_folder(tmp_path)
    assert cohort.case_ids == ["case_a", "case_b"]
    assert cohort.get("case_a").label.name == "case_a_label.nii.gz" and cohort.get("case_b").label is None


def test_empty_folder_is_not_a_cohort(tmp_path):
    with pytest.raises(InputError, match="no NIfTI"):
        cohort_from_folder(tmp_path)


def test_decathlon_dataset_json(tmp_path):
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / sub).mkdir()
    write_nifti(tmp_path / "imagesTr/liver_1.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    write_nifti(tmp_path / "labelsTr/liver_1.nii.gz", np.zeros((4, 4, 4), np.uint8), np.eye(4))
    write_nifti(tmp_path / "imagesTs/liver_9.nii.gz", np.zeros((4, 4, 4), np.int16), np.eye(4))
    (tmp_path / "dataset.json").write_text(json.dumps({
        "name": "Task03_Liver", "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "training": [{"image": "./imagesTr/liver_1.nii.gz", "label": "./labelsTr/liver_1.nii.gz"}],
        "test": ["./imagesTs/liver_9.nii.gz"]}))
    cohort = cohort_from_decathlon(tmp_path / "dataset.json")
    assert cohort.name == "Task03_Liver"
    assert [(c.case_id, c.split) for c in cohort.cases] == [("liver_1", "train"), ("liver_9", "test")]
    case = load_case(cohort.get("liver_1"))
    assert case.label_names[1] == "liver"


def test_decathlon_with_missing_files_is_refused(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"image": "imagesTr/x.nii.gz"}]}))
    with pytest.raises(InputError, match="do not exist"):
        cohort_from_decathlon(tmp_path / "dataset.json")
