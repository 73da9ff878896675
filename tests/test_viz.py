"""Display helpers: HU windows, the radiological display convention, mm extents, label colours and overlays."""

import numpy as np
import pytest

from alice import viz
from alice.data.io import Volume, load_volume
from tests.conftest import asymmetric_array, write_nifti

SHAPE = (12, 10, 8)


def test_window_maps_its_edges_to_black_and_white_and_clips_outside():
    gray = viz.window_to_uint8(np.array([-1000, -160, 40, 240, 3000]), width=400, level=40)
    assert gray.dtype == np.uint8
    assert gray.tolist() == [0, 0, 128, 255, 255]


def test_window_width_must_be_positive():
    with pytest.raises(ValueError, match="width"):
        viz.window_to_uint8(np.zeros(3), width=0, level=40)


def test_presets_are_the_ohif_numbers_and_custom_is_recognised():
    assert viz.WINDOW_PRESETS["Lung"] == (1500, -600)
    assert viz.WINDOW_PRESETS["Soft tissue / abdomen"] == (400, 40)
    assert viz.WINDOW_PRESETS["Bone"] == (2500, 480)
    assert viz.preset_name(150, 90) == "Liver"
    assert viz.preset_name(351, 40) == viz.CUSTOM_WINDOW


def test_bright_voxel_at_patient_right_shows_on_image_left_from_a_las_file(tmp_path):
    """LAS on disk: i=0 is the patient's right; after loading, axial and coronal show it in column 0."""
    las = np.diag([-2.0, 3.0, 4.0, 1.0])
    stored = np.zeros(SHAPE, np.int16)
    stored[0, 4, 3] = 1000
    volume = load_volume(write_nifti(tmp_path / "las.nii.gz", stored, las))
    i, j, k = np.argwhere(volume.array == 1000)[0]
    assert volume.ijk_to_xyz((i, j, k))[0] == pytest.approx(0.0)  # the right-most voxel: largest x in RAS+
    assert i == SHAPE[0] - 1

    axial = viz.extract_slice(volume.array, "axial", k)
    coronal = viz.extract_slice(volume.array, "coronal", j)
    assert np.argwhere(axial == 1000)[0][1] == 0
    assert np.argwhere(coronal == 1000)[0][1] == 0


def test_anterior_at_top_of_axial_superior_at_top_and_anterior_left_in_sagittal():
    array = np.zeros(SHAPE, np.int16)
    array[5, SHAPE[1] - 1, 4] = 1  # most anterior
    array[5, 2, SHAPE[2] - 1] = 2  # most superior
    axial = viz.extract_slice(array, "axial", 4)
    assert np.argwhere(axial == 1)[0][0] == 0  # top row
    assert np.argwhere(viz.extract_slice(array, "coronal", 2) == 2)[0][0] == 0  # top row
    sagittal = viz.extract_slice(array, "sagittal", 5)
    assert sagittal.shape == (SHAPE[2], SHAPE[1])
    assert np.argwhere(sagittal == 2)[0][0] == 0  # top row
    assert np.argwhere(sagittal == 1)[0][1] == 0  # left column


def test_edge_letters_follow_the_convention():
    assert viz.PLANE_SPECS["axial"].edges == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert viz.PLANE_SPECS["coronal"].edges == {"top": "S", "bottom": "I", "left": "R", "right": "L"}
    assert viz.PLANE_SPECS["sagittal"].edges == {"top": "S", "bottom": "I", "left": "A", "right": "P"}


@pytest.mark.parametrize("plane", viz.PLANES)
def test_pixel_and_voxel_indices_round_trip_and_match_the_slice(plane):
    array = asymmetric_array(SHAPE)
    ijk = (7, 3, 5)
    index = ijk[viz.PLANE_SPECS[plane].fixed_axis]
    row, col = viz.ijk_to_pixel(ijk, SHAPE, plane)
    assert viz.pixel_to_ijk(row, col, index, SHAPE, plane) == ijk
    assert viz.extract_slice(array, plane, index)[row, col] == array[ijk]
    assert viz.extract_slice(array, plane, index).shape == viz.slice_shape(SHAPE, plane)


def test_extents_are_in_mm_so_anisotropic_voxels_are_not_squashed():
    shape, spacing = (512, 512, 133), (0.7, 0.7, 2.5)
    assert viz.extent_mm(shape, spacing, "axial") == pytest.approx((512 * 0.7, 512 * 0.7))
    assert viz.extent_mm(shape, spacing, "coronal") == pytest.approx((512 * 0.7, 133 * 2.5))
    assert viz.extent_mm(shape, spacing, "sagittal") == pytest.approx((512 * 0.7, 133 * 2.5))
    assert viz.pixel_spacing_mm(spacing, "sagittal") == (2.5, 0.7)


def test_label_colours_are_distinct_deterministic_and_background_is_never_drawn():
    colors = viz.LABEL_COLORS
    assert colors.shape == (256, 3) and colors.dtype == np.uint8
    assert len({tuple(c) for c in colors[1:]}) == 255
    np.testing.assert_array_equal(colors, viz._label_color_table())
    assert viz.label_color_hex(1) == "#{:02x}{:02x}{:02x}".format(*colors[1])
    assert viz.label_color_index(np.array([0, 1, 255, 256])).tolist() == [0, 1, 255, 1]

    gray = viz.gray_to_rgb(np.full((2, 2), 100, np.uint8))
    labels = np.array([[0, 3], [0, 0]])
    opaque = viz.blend_labels(gray, labels, opacity=1.0)
    np.testing.assert_array_equal(opaque[0, 1], colors[3])
    np.testing.assert_array_equal(opaque[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(viz.blend_labels(gray, labels, opacity=0.0), gray)


def test_visible_labels_come_from_the_three_slices_through_the_crosshair():
    label = np.zeros(SHAPE, np.uint8)
    label[2, 2, 2] = 5  # on the axial slice k=2 only
    label[0, 0, 0] = 9  # on none of the slices through (6, 5, 2)
    assert viz.visible_labels(label, (6, 5, 2)) == [5]
    assert viz.slice_label_values(label, "axial", 0) == (9,)


def test_heat_overlay_draws_only_values_above_threshold():
    rgb = viz.gray_to_rgb(np.zeros((1, 3), np.uint8))
    out = viz.blend_heat(rgb, np.array([[0.2, 1.0, np.nan]]), vmin=0, vmax=1, opacity=1.0, threshold=0.5)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [0, 0, 0])


def test_rgb_overlay_changes_the_pixels_where_it_is_defined_and_nowhere_else():
    image = asymmetric_array(SHAPE).astype(np.float32) / 1000
    colours = np.full((*SHAPE, 3), np.nan, np.float32)
    colours[7, 3, :] = (1.0, 0.0, 0.0)  # a red line along k: one pixel of each axial slice
    colours[2, 8, 5] = (0.0, 0.0, 1.0)
    overlay = viz.RGBOverlay(Volume(colours, np.eye(4)), "test", opacity=1.0)
    for plane, index in (("axial", 5), ("coronal", 3), ("sagittal", 7)):
        plain = viz.compose_slice(image, plane, index, viz.Window(1000, 0))
        drawn = viz.compose_slice(image, plane, index, viz.Window(1000, 0), overlays=((colours, overlay),))
        defined = np.isfinite(viz.extract_slice(colours, plane, index)).all(axis=-1)
        np.testing.assert_array_equal(drawn[~defined], plain[~defined])
        np.testing.assert_array_equal(drawn[defined], np.round(viz.extract_slice(colours, plane, index)[defined] * 255))
    row, col = viz.ijk_to_pixel((2, 8, 5), SHAPE, "axial")
    assert tuple(viz.compose_slice(image, "axial", 5, viz.Window(1000, 0), overlays=((colours, overlay),))[row, col]) \
        == (0, 0, 255)


def test_compose_slice_and_readout_and_markers():
    image = Volume(asymmetric_array(SHAPE).astype(np.float32) / 1000, np.diag([2.0, 2.0, 3.0, 1.0]))
    label = image.with_array(np.zeros(SHAPE, np.uint8))
    label.array[7, 3, 5] = 4
    rgb = viz.compose_slice(image.array, "axial", 5, viz.Window(1000, 0), label.array, 0.5)
    assert rgb.shape == (*viz.slice_shape(SHAPE, "axial"), 3)

    readout = viz.read_voxel(image, (7, 3, 5), label, {4: "liver"})
    assert readout.xyz_mm == (14.0, 6.0, 15.0)
    assert readout.structure == "liver" and readout.label == 4
    assert viz.read_voxel(image, (0, 0, 0), label, {}).structure == ""

    marker = viz.Marker((14.0, 6.0, 15.0), "here")
    assert viz.markers_in_plane([marker], image, "axial", 5) == [(*viz.ijk_to_pixel((7, 3, 5), SHAPE, "axial"),
                                                                   "here", True)]
    assert viz.markers_in_plane([marker], image, "axial", 4)[0][3] is False
    assert viz.markers_in_plane([viz.Marker((-500.0, 0.0, 0.0))], image, "axial", 4) == []


def test_crop_cube_centres_the_point_and_pads_with_air_outside():
    array = asymmetric_array((12, 10, 8)).astype(np.float32)
    cube = viz.crop_cube(array, (5, 4, 6), size_voxels=6)
    assert cube.shape == (6, 6, 6) and cube.dtype == np.float32
    assert cube[3, 3, 3] == array[5, 4, 6]
    np.testing.assert_array_equal(cube[:, :, 0:5], array[2:8, 1:7, 3:8])
    assert np.all(cube[:, :, 5] == viz.AIR_HU)  # beyond the last slice (k = 8)
    corner = viz.crop_cube(array, (0, 0, 0), size_voxels=4, fill=-1)
    assert np.all(corner[:2] == -1) and corner[2, 2, 2] == array[0, 0, 0]
    assert np.all(viz.crop_cube(array, (100, 0, 0), size_voxels=4) == viz.AIR_HU)
    with pytest.raises(ValueError, match="positive"):
        viz.crop_cube(array, (0, 0, 0), size_voxels=0)


def test_crop_planes_are_the_centre_slices_in_the_display_convention():
    array = asymmetric_array((12, 10, 8)).astype(np.float32)
    planes = viz.crop_planes(array, (5, 4, 3), size_voxels=4)
    assert set(planes) == set(viz.PLANES) and all(p.shape == (4, 4) for p in planes.values())
    for plane, picture in planes.items():
        row, col = viz.ijk_to_pixel((2, 2, 2), (4, 4, 4), plane)
        assert picture[row, col] == array[5, 4, 3]
    # Axial: patient's right (high i) on the image's left, anterior (high j) at the top.
    assert planes["axial"][0, 0] == array[5 + 1, 4 + 1, 3]


def test_contours_keep_only_the_in_plane_boundary_of_each_region():
    labels = np.zeros((7, 9), np.uint8)
    labels[1:6, 1:6] = 1  # a 5 x 5 square
    labels[2:5, 6:9] = 2  # touching it on the right and the slice's edge
    contour = viz.contour_mask(labels)
    assert contour[1:6, 1:6].sum() == 16 and not contour[2:5, 2:5].any()  # the ring, not the 3 x 3 inside
    assert contour[2:5, 8].all()  # the slice's edge closes a region
    assert contour[3, 5] and contour[3, 6]  # both sides of the shared border
    assert contour.sum() < (labels > 0).sum() and not contour[labels == 0].any()


def test_contour_mode_colours_fewer_pixels_than_filled_mode():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[1:5, 1:5, 1:5] = 1
    image = np.full(labels.shape, 40.0)
    volume = Volume(labels, np.eye(4))
    coloured = {}
    for contour in (False, True):
        overlay = viz.LabelOverlay(volume, "prediction", {1: "liver"}, opacity=1.0, contour=contour)
        rgb = viz.compose_slice(image, "axial", 2, viz.Window(400, 40), overlays=((labels, overlay),))
        coloured[contour] = int((rgb != rgb[0, 0]).any(axis=-1).sum())
    assert coloured == {False: 16, True: 12}


def test_a_label_overlay_draws_only_the_structures_shown_in_its_own_colours():
    labels = np.array([[1, 2], [3, 0]], np.uint8)[..., None]
    grey = np.zeros((2, 2, 3), np.uint8)
    overlay = viz.LabelOverlay(Volume(labels, np.eye(4)), "errors", viz.ERROR_NAMES, opacity=1.0, shown=(1, 3),
                               colours=viz.ERROR_COLORS)
    drawn = overlay.draw(grey, labels[..., 0])
    assert drawn[0, 0].tolist() == viz.ERROR_COLORS[viz.FALSE_POSITIVE].tolist()
    assert drawn[0, 1].tolist() == [0, 0, 0]  # 2 is not shown
    assert drawn[1, 0].tolist() == viz.ERROR_COLORS[viz.WRONG_STRUCTURE].tolist()
    assert overlay.color_hex(viz.FALSE_NEGATIVE) == "#1e90ff"


def test_the_error_map_marks_false_positives_false_negatives_and_confusions_of_the_classes_shown():
    truth = np.array([1, 1, 0, 0, 2, 2, 3])
    pred = np.array([1, 0, 1, 0, 1, 2, 0])
    errors = viz.error_map(pred, truth, (1, 2))
    # missed 1 -> FN; invented 1 -> FP; 2 predicted as 1 -> both; class 3 is not looked at.
    assert errors.tolist() == [0, viz.FALSE_NEGATIVE, viz.FALSE_POSITIVE, 0, viz.WRONG_STRUCTURE, 0, 0]
    assert errors.dtype == np.uint8
    assert viz.error_map(pred, truth, (3,)).tolist() == [0, 0, 0, 0, 0, 0, viz.FALSE_NEGATIVE]
    assert not viz.error_map(truth, truth, (1, 2, 3)).any()
