"""Volume I/O: world mm round trips, canonical orientation from every stored orientation, and bad input."""

import gzip

import nibabel as nib
import nrrd
import numpy as np
import pytest

from alice.data.io import Volume, load_label, load_volume, resample_volume, save_volume, to_source_orientation
from alice.errors import InputError
from tests.conftest import asymmetric_array, write_dicom_series, write_nifti

LAS = np.diag([-0.7, 0.7, 2.5, 1.0])
LAS[:3, 3] = [50.0, -80.0, -100.0]


def test_voxel_to_mm_to_voxel_round_trip(tmp_path):
    volume = load_volume(write_nifti(tmp_path / "a.nii.gz", asymmetric_array(), LAS))
    ijk = np.array([[0, 0, 0], [3, 7, 5], [11, 9, 7]])
    np.testing.assert_allclose(volume.xyz_to_ijk(volume.ijk_to_xyz(ijk)), ijk, atol=1e-9)


@pytest.mark.parametrize("codes", ["LAS", "RAS", "LPS", "PIL", "SRA"])
def test_every_stored_orientation_loads_as_ras_with_world_positions_kept(tmp_path, codes):
    """A voxel keeps its world position whatever the axis order on disk; the array comes out RAS."""
    array = asymmetric_array()
    target = nib.orientations.axcodes2ornt(tuple(codes))
    ras_to_target = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), target)
    stored = nib.orientations.apply_orientation(array, ras_to_target)
    ras_affine = np.diag([0.7, 0.8, 2.5, 1.0])
    ras_affine[:3, 3] = [-20.0, 10.0, -60.0]
    stored_affine = ras_affine @ nib.orientations.inv_ornt_aff(ras_to_target, array.shape)
    volume = load_volume(write_nifti(tmp_path / "v.nii.gz", stored, stored_affine))

    assert volume.orientation == "RAS"
    assert "".join(volume.source_axcodes) == codes
    np.testing.assert_array_equal(volume.array, array)
    np.testing.assert_allclose(volume.affine, ras_affine, atol=1e-9)
    # the voxel that encodes (3, 7, 5) sits at the same world mm as in the RAS original
    ijk = np.argwhere(volume.array == 3 * 10000 + 7 * 100 + 5)[0]
    np.testing.assert_allclose(volume.ijk_to_xyz(ijk), ras_affine[:3, :3] @ [3, 7, 5] + ras_affine[:3, 3])
    np.testing.assert_array_equal(to_source_orientation(volume, volume.array), stored)


def test_las_file_puts_patient_right_at_high_i(tmp_path):
    """In a LAS file, voxel i=0 is the patient's right-most column; after loading it must be the last i."""
    array = np.zeros((6, 5, 4), np.int16)
    array[0, 2, 2] = 1000  # stored first along L, i.e. the most right-ward voxel
    volume = load_volume(write_nifti(tmp_path / "las.nii.gz", array, LAS))
    i, _, _ = np.argwhere(volume.array == 1000)[0]
    assert i == 5
    assert volume.ijk_to_xyz([i, 2, 2])[0] == pytest.approx(50.0)  # x = +50 mm: patient's right


def test_nrrd_lps_loads_in_ras(tmp_path):
    array = asymmetric_array().astype(np.int16)
    header = {"space": "left-posterior-superior", "space directions": np.diag([0.5, 0.6, 3.0]),
              "space origin": np.array([10.0, 20.0, -30.0])}
    nrrd.write(str(tmp_path / "v.nrrd"), array, header)
    volume = load_volume(tmp_path / "v.nrrd")
    assert volume.orientation == "RAS" and "".join(volume.source_axcodes) == "LPS"
    # LPS voxel (0,0,0) at LPS (10, 20, -30) is RAS (-10, -20, -30)
    ijk = np.argwhere(volume.array == 0)[0]
    np.testing.assert_allclose(volume.ijk_to_xyz(ijk), [-10.0, -20.0, -30.0], atol=1e-4)
    np.testing.assert_allclose(volume.spacing_mm, [0.5, 0.6, 3.0], atol=1e-6)


def test_dicom_series_folder_loads_in_ras(tmp_path):
    i, j, k = np.meshgrid(np.arange(8), np.arange(6), np.arange(5), indexing="ij")
    array = (i * 100 + j * 10 + k + 1).astype(np.int16)  # unique per voxel, fits int16
    folder = write_dicom_series(tmp_path / "series", array, spacing=(0.8, 0.9, 2.0), origin=(-10.0, -20.0, 30.0))
    volume = load_volume(folder)
    assert volume.shape == (8, 6, 5) and volume.orientation == "RAS"
    np.testing.assert_allclose(volume.spacing_mm, [0.8, 0.9, 2.0], atol=1e-4)
    for lps_ijk in [(0, 0, 0), (7, 0, 0), (0, 5, 0), (2, 3, 4)]:
        lps_mm = np.array([-10.0, -20.0, 30.0]) + np.array(lps_ijk) * [0.8, 0.9, 2.0]
        ras_mm = lps_mm * [-1, -1, 1]
        found = np.argwhere(volume.array == array[lps_ijk])
        assert len(found) == 1
        np.testing.assert_allclose(volume.ijk_to_xyz(found[0]), ras_mm, atol=1e-3)


def test_save_and_reload_keeps_values_and_affine(tmp_path):
    volume = load_volume(write_nifti(tmp_path / "a.nii.gz", asymmetric_array(), LAS))
    again = load_volume(save_volume(volume, tmp_path / "b.nii.gz"))
    np.testing.assert_array_equal(again.array, volume.array)
    np.testing.assert_allclose(again.affine, volume.affine)
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file may be left behind"


def test_resampling_keeps_world_position_and_label_values(tmp_path):
    image = Volume(np.random.default_rng(0).normal(size=(20, 20, 10)).astype(np.float32), np.diag([1, 1, 2.5, 1.0]))
    label = image.with_array(np.zeros((20, 20, 10), np.uint8))
    label.array[5:15, 5:15, 3:7] = 7
    out = resample_volume(label, 2.0, is_label=True)
    assert set(np.unique(out.array)) == {0, 7}
    np.testing.assert_allclose(out.spacing_mm, [2, 2, 2], atol=1e-6)
    centre = lambda v: v.ijk_to_xyz(np.argwhere(v.array == 7).mean(axis=0))  # noqa: E731
    np.testing.assert_allclose(centre(out), centre(label), atol=1.0)


# ---- bad input: one clear message naming the file, and the file untouched ----

def _assert_refused(path, *words):
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(InputError) as info:
        load_volume(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message.lower()
    if before is not None:
        assert path.read_bytes() == before, "the source file must not be modified"


def test_truncated_gzip_nifti_is_refused(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", asymmetric_array(), LAS)
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    _assert_refused(bad, "truncated")


def test_corrupt_nifti_is_refused(tmp_path):
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not a nifti header" * 20))
    _assert_refused(bad, "nifti")


def test_2d_image_is_refused(tmp_path):
    _assert_refused(write_nifti(tmp_path / "flat.nii.gz", np.zeros((32, 32), np.int16), np.eye(4)), "2d")


def test_single_slice_is_refused_as_2d(tmp_path):
    _assert_refused(write_nifti(tmp_path / "slice.nii.gz", np.zeros((32, 32, 1), np.int16), np.eye(4)), "2d")


def test_4d_series_is_refused(tmp_path):
    _assert_refused(write_nifti(tmp_path / "series.nii.gz", np.zeros((8, 8, 8, 3), np.int16), np.eye(4)), "4d")


def test_trailing_singleton_axis_is_accepted(tmp_path):
    volume = load_volume(write_nifti(tmp_path / "v.nii.gz", np.zeros((8, 8, 8, 1), np.int16), np.eye(4)))
    assert volume.shape == (8, 8, 8)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_voxels_are_refused(tmp_path, value):
    array = np.zeros((8, 8, 8), np.float32)
    array[1, 2, 3] = value
    _assert_refused(write_nifti(tmp_path / "nan.nii.gz", array, np.eye(4)), "nan or infinite")


def test_unsupported_extension_is_refused(tmp_path):
    path = tmp_path / "scan.mha"
    path.write_bytes(b"x")
    _assert_refused(path, "unsupported")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "nope.nii.gz")


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    _assert_refused(tmp_path / "empty", "empty")


def test_folder_without_dicom_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    _assert_refused(tmp_path / "notes", "no dicom")


def test_dicom_folder_with_mixed_series_is_refused(tmp_path):
    folder = tmp_path / "mixed"
    array = np.zeros((6, 6, 3), np.int16)
    write_dicom_series(folder / "a", array)
    write_dicom_series(folder / "b", array)
    _assert_refused(folder, "2 dicom series")


def test_label_with_other_shape_is_refused(tmp_path):
    image = load_volume(write_nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16), LAS))
    label_path = write_nifti(tmp_path / "lab.nii.gz", np.zeros((8, 8, 7), np.uint8), LAS)
    with pytest.raises(InputError, match="shape") as info:
        load_label(label_path, image)
    assert str(label_path) in str(info.value)


def test_label_with_other_affine_is_refused(tmp_path):
    image = load_volume(write_nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16), LAS))
    shifted = LAS.copy()
    shifted[0, 3] += 5.0
    label_path = write_nifti(tmp_path / "lab.nii.gz", np.zeros((8, 8, 8), np.uint8), shifted)
    with pytest.raises(InputError, match="affine"):
        load_label(label_path, image)


def test_label_with_fractional_values_is_refused(tmp_path):
    image = load_volume(write_nifti(tmp_path / "img.nii.gz", np.zeros((8, 8, 8), np.int16), LAS))
    values = np.zeros((8, 8, 8), np.float32)
    values[2, 2, 2] = 0.5
    with pytest.raises(InputError, match="non-integer"):
        load_label(write_nifti(tmp_path / "lab.nii.gz", values, LAS), image)


def test_label_stored_in_another_orientation_lines_up(tmp_path):
    """A label map stored LPS beside a LAS image is the same grid once both are canonical."""
    image_array = asymmetric_array((6, 5, 4)).astype(np.int16)
    image = load_volume(write_nifti(tmp_path / "img.nii.gz", image_array, LAS))
    flip = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("LAS"), nib.orientations.axcodes2ornt("LPS"))
    label_array = (image_array % 7).astype(np.uint8)
    stored = nib.orientations.apply_orientation(label_array, flip)
    affine = LAS @ nib.orientations.inv_ornt_aff(flip, label_array.shape)
    label = load_label(write_nifti(tmp_path / "lab.nii.gz", stored, affine), image)
    np.testing.assert_array_equal(label.array, image.array % 7)
