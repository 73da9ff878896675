"""Pseudo-subjects: exact correspondence, and the committed ones are what the command makes."""

import numpy as np
import pytest
from scipy import ndimage

from alice.data.cohort import load_case, load_manifest, sample_cohort, write_manifest
from alice.data.io import Volume
from alice.data.pseudo import PseudoTransform, make_pseudo_subject, make_pseudo_subjects


@pytest.fixture(scope="module")
def cohort():
    return sample_cohort()


@pytest.fixture(scope="module")
def source(cohort):
    return load_case(cohort.get("lidc0001"))


def interior_points(label: np.ndarray, value: int, n: int, rng) -> np.ndarray:
    """Up to n voxels of a structure away from its border (nearest-neighbour resampling may flip border voxels)."""
    mask = label == value
    interior = ndimage.binary_erosion(mask)
    candidates = np.argwhere(interior if interior.any() else mask)
    return candidates[rng.choice(len(candidates), min(n, len(candidates)), replace=False)]


@pytest.mark.parametrize("case_id", ["pseudo01", "pseudo05"])
def test_points_mapped_through_the_correspondence_land_in_the_same_structure(cohort, source, case_id):
    record = cohort.get(case_id)
    pseudo = load_case(record)
    transform = PseudoTransform.load(record.correspondence)
    rng = np.random.default_rng(0)
    hits = total = 0
    for value in np.unique(source.label.array)[1:]:
        ijk = interior_points(source.label.array, value, 30, rng)
        y_mm = transform.from_source(source.image.ijk_to_xyz(ijk))
        target = np.rint(pseudo.image.xyz_to_ijk(y_mm)).astype(int)
        target = target[pseudo.image.contains_ijk(target)]  # the field of view is trimmed
        hits += int((pseudo.label.array[tuple(target.T)] == value).sum())
        total += len(target)
    assert total > 1000
    assert hits / total >= 0.95


def test_forward_and_backward_maps_are_inverse(cohort, source):
    transform = PseudoTransform.load(cohort.get("pseudo02").correspondence)
    x_mm = source.image.ijk_to_xyz(np.random.default_rng(1).uniform(0, 120, size=(200, 3)))
    np.testing.assert_allclose(transform.to_source(transform.from_source(x_mm)), x_mm, atol=1e-3)


def test_landmarks_are_the_mapped_source_centroids(cohort, source):
    record = cohort.get("pseudo03")
    pseudo = load_case(record)
    transform = PseudoTransform.load(record.correspondence)
    merged = pseudo.landmarks.merge(source.landmarks, on="name", suffixes=("", "_src"))
    assert len(merged) > 50
    expected = transform.from_source(merged[["x_src", "y_src", "z_src"]].to_numpy())
    np.testing.assert_allclose(merged[["x", "y", "z"]].to_numpy(), expected, atol=0.01)


def test_committed_pseudo_subject_is_reproduced_by_the_generator(cohort, source):
    image, label, _ = make_pseudo_subject(source.image, source.label, seed=0, index=0, source_case="lidc0001")
    committed = load_case(cohort.get("pseudo01"))
    np.testing.assert_array_equal(image.array, committed.image.array)
    np.testing.assert_array_equal(label.array, committed.label.array)
    np.testing.assert_allclose(image.affine, committed.image.affine, atol=1e-6)


def test_different_indices_give_different_subjects(source):
    small = Volume(source.image.array[::3, ::3, ::3].copy(), source.image.affine @ np.diag([3, 3, 3, 1]))
    labels = small.with_array(source.label.array[::3, ::3, ::3].copy())
    a = make_pseudo_subject(small, labels, seed=0, index=0, source_case="x")[2]
    b = make_pseudo_subject(small, labels, seed=0, index=1, source_case="x")[2]
    assert not np.allclose(a.matrix, b.matrix)


def test_make_pseudo_subjects_writes_cases_splits_and_manifest(tmp_path, cohort):
    """The command's writer on a small cohort: files exist, splits hold out the last ones, reruns replace."""
    source = load_case(cohort.get("lung1"))
    small_dir = tmp_path / "cohort"
    from alice.data.io import save_volume
    from alice.data.labels import structure_landmarks, write_landmarks
    from alice.data.cohort import CaseRecord, Cohort

    image = Volume(source.image.array[::2, ::2, ::2].copy(), source.image.affine @ np.diag([2, 2, 2, 1]))
    label = image.with_array(source.label.array[::2, ::2, ::2].copy())
    record = CaseRecord("tiny", save_volume(image, small_dir / "images/tiny.nii.gz"),
                        save_volume(label, small_dir / "labels/tiny.nii.gz"),
                        write_landmarks(structure_landmarks(label, {1: "lesion"}), small_dir / "landmarks/tiny.csv"),
                        None, "train", "real", (4.0, 4.0, 4.0), image.shape)
    manifest = write_manifest(Cohort("tiny", (record,)), small_dir / "manifest.csv")
    make_pseudo_subjects(manifest, n=3, n_test=1, source_case="tiny")
    make_pseudo_subjects(manifest, n=3, n_test=1, source_case="tiny")  # a rerun replaces, never duplicates
    result = load_manifest(manifest)
    assert result.case_ids == ["tiny", "pseudo01", "pseudo02", "pseudo03"]
    assert [c.split for c in result.cases] == ["train", "train", "train", "test"]
    for case in result.cases[1:]:
        assert case.image.exists() and case.label.exists() and case.correspondence.exists()
