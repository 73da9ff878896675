"""Patch maps on small synthetic dense embeddings: subsampling, PCA/UMAP, selections back to voxels, RGB pictures."""

import numpy as np
import pytest

from alice.data.io import Volume
from alice.explore.dense import DenseEmbedding, lattice
from alice.explore.maps import pca_rgb_volume, project, selection_mask, selection_table, voxel_rows

SHAPE = (16, 14, 12)
NAMES = {"a": {1: "liver", 2: "spleen"}, "b": {1: "lesion"}}


def synthetic_embedding(case_id: str, seed: int, dim: int = 8, centre=None) -> DenseEmbedding:
    """A box-shaped body in air on a 2 x 2 x 3 mm grid, embedded on the real lattice (6 mm) with random unit
    vectors around ``centre``; label 1 in the right half, 2 in one corner (case ``a``)."""
    rng = np.random.default_rng(seed)
    image = np.full(SHAPE, -1000.0, np.float32)
    image[2:14, 3:12, 2:10] = rng.normal(40, 20, (12, 9, 8))
    volume = Volume(image, np.diag([2.0, 2.0, 3.0, 1.0]))
    ijk, origin, step, index = lattice(volume, 6.0)
    label = np.zeros(SHAPE, np.int32)
    label[8:] = 1
    label[:5, :5] = 2 if case_id == "a" else 0
    centre = np.zeros(dim) if centre is None else np.asarray(centre, float)
    vectors = centre + rng.normal(size=(len(ijk), dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return DenseEmbedding(case_id, vectors.astype(np.float16), ijk.astype(np.int32),
                          volume.ijk_to_xyz(ijk).astype(np.float32), label[tuple(ijk.T)], image[tuple(ijk.T)],
                          origin.astype(np.int32), step.astype(np.int32), index, volume.affine)


@pytest.fixture(scope="module")
def pair():
    return [synthetic_embedding("a", 0), synthetic_embedding("b", 1)]


def test_the_lattice_fixture_is_what_the_maps_expect(pair):
    a = pair[0]
    assert list(a.lattice_step) == [3, 3, 2] and len(a) > 20
    np.testing.assert_array_equal(a.ijk, a.lattice_origin + a.lattice_step * np.argwhere(a.lattice_index >= 0))


def test_small_cohorts_are_projected_whole_with_finite_pca_points(pair):
    shown = project(pair)
    n = len(pair[0]) + len(pair[1])
    assert shown.points.shape == (n, 2) and shown.points.dtype == np.float32 and np.isfinite(shown.points).all()
    assert shown.method == "pca" and shown.n_total == n and not shown.subsampled
    np.testing.assert_array_equal(shown.rows, np.r_[np.arange(len(pair[0])), np.arange(len(pair[1]))])
    np.testing.assert_array_equal(shown.case_ids, ["a"] * len(pair[0]) + ["b"] * len(pair[1]))


def test_pca_separates_two_distinct_clouds():
    centre = np.eye(8)[0] * 3
    shown = project([synthetic_embedding("a", 0, centre=centre), synthetic_embedding("b", 1, centre=-centre)])
    first = shown.points[:, 0]
    in_a = shown.case_ids == "a"
    assert first[in_a].min() > first[~in_a].max() or first[in_a].max() < first[~in_a].min()


def test_large_cohorts_are_subsampled_uniformly_and_reproducibly(pair):
    n = len(pair[0]) + len(pair[1])
    shown = project(pair, max_points=30, seed=3)
    assert len(shown) == 30 and shown.n_total == n and shown.subsampled
    drawn = set(zip(shown.case_ids, shown.rows))
    assert len(drawn) == 30  # no patch twice
    assert all(0 <= row < len(pair[0] if case == "a" else pair[1]) for case, row in drawn)
    again = project(pair, max_points=30, seed=3)
    np.testing.assert_array_equal(again.rows, shown.rows)
    np.testing.assert_array_equal(again.points, shown.points)
    other = project(pair, max_points=30, seed=4)
    assert set(zip(other.case_ids, other.rows)) != drawn


def test_every_projected_point_carries_its_own_patch(pair):
    shown = project(pair, max_points=40, seed=0)
    for case_id, embedding in zip("ab", pair):
        in_case = shown.case_ids == case_id
        rows = shown.rows[in_case]
        np.testing.assert_array_equal(shown.ijk[in_case], embedding.ijk[rows])
        np.testing.assert_array_equal(shown.xyz_mm[in_case], embedding.xyz_mm[rows])
        np.testing.assert_array_equal(shown.label[in_case], embedding.label[rows])
        np.testing.assert_array_equal(shown.hu[in_case], embedding.hu[rows])


def test_bad_arguments_are_refused(pair):
    with pytest.raises(ValueError, match="method"):
        project(pair, method="tsne")
    with pytest.raises(ValueError, match="dimensions"):
        project([pair[0], synthetic_embedding("c", 2, dim=4)])
    with pytest.raises(ValueError, match="too few"):
        project([])


def test_selection_table_maps_ids_back_to_case_voxel_mm_and_structure(pair):
    shown = project(pair, max_points=50, seed=1)
    ids = np.flatnonzero(shown.label > 0)[:3].tolist() + np.flatnonzero(shown.label == 0)[:2].tolist()
    table = selection_table(shown, ids, NAMES)
    assert list(table.columns) == ["id", "case", "row", "i", "j", "k", "x_mm", "y_mm", "z_mm", "label", "structure"]
    assert list(table["id"]) == ids
    for row in table.itertuples():
        embedding = pair["ab".index(row.case)]
        assert row.case == shown.case_ids[row.id] and row.row == shown.rows[row.id]
        assert (row.i, row.j, row.k) == tuple(embedding.ijk[row.row])
        np.testing.assert_allclose((row.x_mm, row.y_mm, row.z_mm), embedding.xyz_mm[row.row])
        assert row.label == embedding.label[row.row]
        assert row.structure == ("background" if row.label == 0 else NAMES[row.case][row.label])
    assert set(table["structure"]) & {"liver", "lesion"}  # label 1 is named per case
    assert selection_table(shown, [], NAMES).empty
    with pytest.raises(IndexError):
        selection_table(shown, [len(shown)], NAMES)


def test_an_unnamed_label_is_named_by_its_value(pair):
    shown = project(pair)
    table = selection_table(shown, np.flatnonzero(shown.label == 2)[:1], {})
    assert list(table["structure"]) == ["label 2"]


def cell(ijk, step) -> tuple[slice, ...]:
    """The voxels whose nearest lattice point is ``ijk``, away from the border: ijk + [-step/2, step/2)."""
    return tuple(slice(int(v - s // 2), int(v - s // 2 + s)) for v, s in zip(ijk, step))


def test_selection_mask_marks_exactly_the_selected_cells_of_its_case(pair):
    a, b = pair
    shown = project(pair)
    interior = np.flatnonzero((shown.case_ids == "a") & np.all((shown.ijk >= 3) & (shown.ijk < np.array(SHAPE) - 3),
                                                              axis=1))
    chosen = interior[[0, len(interior) // 2, -1]]
    other_case = np.flatnonzero(shown.case_ids == "b")[:5]
    mask = selection_mask(shown, np.r_[chosen, other_case], a, SHAPE)
    expected = np.zeros(SHAPE, bool)
    for point in chosen:
        expected[cell(shown.ijk[point], a.lattice_step)] = True
    np.testing.assert_array_equal(mask, expected)
    assert mask.sum() == 3 * np.prod(a.lattice_step)
    assert not selection_mask(shown, other_case, a, SHAPE).any()
    in_b = selection_mask(shown, other_case, b, SHAPE)
    assert all(in_b[tuple(b.ijk[row])] for row in shown.rows[other_case])
    assert in_b.sum() >= 5 * np.prod(b.lattice_step)  # cells at the border reach it


def test_every_voxel_belongs_to_its_nearest_lattice_point(pair):
    a = pair[0]
    rows = voxel_rows(a, SHAPE)
    assert rows.shape == SHAPE
    for row in range(len(a)):
        assert rows[tuple(a.ijk[row])] == row
    assert rows[0, 0, 0] == -1  # air in the corner: no patch


def test_pca_rgb_volume_is_in_unit_range_inside_the_body_and_nan_outside(pair):
    a = pair[0]
    rgb = pca_rgb_volume(a, SHAPE)
    rows = voxel_rows(a, SHAPE)
    assert rgb.shape == (*SHAPE, 3) and rgb.dtype == np.float32
    inside = rows >= 0
    assert np.isfinite(rgb[inside]).all() and rgb[inside].min() >= 0 and rgb[inside].max() <= 1
    assert np.isnan(rgb[~inside]).all() and (~inside).any()
    # One colour per cell, and the colours spread (percentile scaling reaches both ends).
    np.testing.assert_array_equal(rgb[tuple(a.ijk[5])], rgb[cell(a.ijk[5], a.lattice_step)][0, 0, 0])
    assert rgb[inside].min() == 0 and rgb[inside].max() == 1


@pytest.mark.slow
def test_umap_places_every_point_and_keeps_the_clouds_apart():
    centre = np.eye(8)[0] * 3
    shown = project([synthetic_embedding("a", 0, centre=centre), synthetic_embedding("b", 1, centre=-centre)],
                    method="umap")
    assert shown.method == "umap" and shown.points.shape == (shown.n_total, 2) and np.isfinite(shown.points).all()
    in_a = shown.case_ids == "a"
    gap = np.linalg.norm(shown.points[in_a].mean(0) - shown.points[~in_a].mean(0))
    spread = max(shown.points[in_a].std(0).max(), shown.points[~in_a].std(0).max())
    assert gap > 2 * spread
