"""Dense embeddings: the lattice, what each vector records, the cache, the backbone path and rank sharding."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from alice.anatomy.cache import body_mask
from alice.data.cohort import CaseRecord, LoadedCase, load_case
from alice.data.io import Volume
from alice.errors import InputError
from alice.explore.dense import (EmbeddingSettings, cache_entry_path, cached_dense_embedding, embed_case, lattice,
                                 load_network, read_entry, shard, tiling_offsets, window_step)
from alice.explore.evaluate import cropped_case
from tests.anatomy.conftest import synthetic_ct


def test_each_vector_records_its_voxel_mm_hu_and_label(records, sam_embeddings):
    embedding = sam_embeddings["lidc0001"]
    case = load_case(records["lidc0001"])
    assert embedding.vectors.shape == (len(embedding), 256)  # SAM local + global, 128 each
    np.testing.assert_allclose(np.linalg.norm(embedding.vectors.astype(np.float32), axis=1), 1, atol=5e-3)
    np.testing.assert_allclose(embedding.xyz_mm, case.image.ijk_to_xyz(embedding.ijk), atol=1e-3)
    np.testing.assert_array_equal(embedding.label, case.label.array[tuple(embedding.ijk.T)])
    np.testing.assert_array_equal(embedding.hu, case.image.array[tuple(embedding.ijk.T)])
    assert (embedding.label > 0).mean() > 0.2  # the lattice covers labelled organs, not only air


def test_lattice_steps_by_grid_mm_and_indexes_its_rows(records):
    image = load_case(records["pseudo05"]).image  # 2 mm voxels
    ijk, origin, step, index = lattice(image, grid_mm=6.0)
    np.testing.assert_array_equal(step, [3, 3, 3])
    rows = index[tuple(((ijk - origin) // step).T)]
    np.testing.assert_array_equal(rows, np.arange(len(ijk)))
    assert body_mask(image.array)[tuple(ijk.T)].all()  # inside the body (lungs included)
    assert index[0, 0, 0] == -1  # no vector in the air around the body


def test_cache_is_reused_and_a_damaged_or_stale_entry_recomputed(records, sam_settings, sam_embeddings):
    record = records["pseudo05"]
    path, key = cache_entry_path(record, sam_settings)
    first = sam_embeddings["pseudo05"]
    assert read_entry(path, key) is not None
    assert read_entry(path, key + "-other") is None  # another checkpoint or image: stale
    original = path.read_bytes()
    try:
        path.write_bytes(original[: len(original) // 2])  # a half-written file is never read back as valid
        assert read_entry(path, key) is None
        again = cached_dense_embedding(record, sam_settings)
        np.testing.assert_array_equal(again.vectors, first.vectors)
        assert read_entry(path, key) is not None
    finally:
        path.write_bytes(original)


def test_settings_that_change_the_vectors_change_the_key(sam_settings):
    assert dataclasses.replace(sam_settings, grid_mm=4.0).key() != sam_settings.key()
    assert dataclasses.replace(sam_settings, sam_part="local").key() != sam_settings.key()
    assert dataclasses.replace(sam_settings, tokens="encoder").key() == sam_settings.key()  # not a SAM setting


def test_a_new_network_version_changes_the_untrained_key_but_not_sams(sam_settings, monkeypatch):
    # The untrained network has no checkpoint whose content would change with the backbone's code.
    import alice.models.build

    untrained = dataclasses.replace(sam_settings, source="untrained").resolved()
    before = untrained.key(), sam_settings.key()
    monkeypatch.setattr(alice.models.build, "NETWORK_VERSION", alice.models.build.NETWORK_VERSION + 1)
    assert untrained.key() != before[0]
    assert sam_settings.key() == before[1]


def test_bad_settings_are_refused_by_name(tmp_path):
    with pytest.raises(InputError, match="source 'clip'"):
        EmbeddingSettings(source="clip").resolved()
    with pytest.raises(InputError, match="tilings 4 is not one of"):
        EmbeddingSettings(source="untrained", tilings=4).resolved()
    with pytest.raises(InputError, match="no such alice checkpoint"):
        EmbeddingSettings(source="alice", checkpoint=str(tmp_path / "missing.pt")).resolved()


def test_untrained_backbone_embeds_a_volume_window_by_window():
    image = synthetic_ct(shape=(40, 36, 30), spacing_mm=2.0)
    case = LoadedCase(CaseRecord("synthetic", Path("synthetic.nii.gz")), image, None, {}, None)
    settings = EmbeddingSettings(source="untrained", grid_mm=8.0, tokens="decoder", spacings_mm=(2.0,)).resolved()
    embedding = embed_case(case, settings)
    assert embedding.dim == 96  # cpu-tiny first decoder stage: 4 x feature size 24
    np.testing.assert_allclose(np.linalg.norm(embedding.vectors.astype(np.float32), axis=1), 1, atol=5e-3)
    assert np.all(embedding.label == 0)
    # Different places get different vectors: the map is stitched from windows, not one repeated vector.
    similarity = embedding.vectors.astype(np.float32) @ embedding.vectors[0].astype(np.float32)
    assert similarity.min() < 0.99


@pytest.mark.parametrize("tilings", [8, 12])
def test_tilings_spread_the_windows_evenly_over_one_window_step(tilings):
    assert tiling_offsets(48, 1) == [(0, 0, 0)]
    offsets = np.array(tiling_offsets(48, tilings))
    for axis in offsets.T:  # each axis: every one of the evenly spread places once
        assert sorted(axis) == [48 * k // tilings for k in range(tilings)]
    assert len({tuple(a) for a in offsets[:, [0, 1]]}) == tilings  # the axes move in different orders
    assert not (offsets[:, 0] == offsets[:, 2]).all() and not (offsets[:, 1] == offsets[:, 2]).all()


def test_tilings_average_the_scan_moved_by_each_offset():
    image = synthetic_ct(shape=(70, 60, 50), spacing_mm=2.0)
    case = LoadedCase(CaseRecord("synthetic", Path("synthetic.nii.gz")), image, None, {}, None)
    # Eight tilings of the 48-voxel step move the scan by multiples of 6 voxels: a 6-voxel (12 mm) lattice keeps its
    # points on the moved scans' lattices.
    one, eight = (EmbeddingSettings(source="untrained", tokens="decoder", grid_mm=12.0, tilings=t,
                                    spacings_mm=(2.0,)).resolved() for t in (1, 8))
    network = load_network(one)
    single = embed_case(case, one, network)
    total = 0
    for offset in tiling_offsets(window_step(48, 16, one.overlap), 8):
        # The same scan with air before it, in the same world place: its windows fall ``offset`` voxels earlier on
        # the anatomy.
        affine = image.affine.copy()
        affine[:3, 3] = image.ijk_to_xyz(-np.asarray(offset))
        moved = embed_case(LoadedCase(case.record, Volume(np.pad(image.array, [(o, 0) for o in offset],
                                                                 constant_values=-1024.0), affine), None, {}, None),
                           one, network)
        # The padded scan's lattice is its own; take its vectors at the scan's lattice points.
        at = {tuple(p): row for row, p in enumerate(np.rint(moved.xyz_mm).astype(int))}
        total = total + moved.vectors[[at[tuple(p)] for p in np.rint(single.xyz_mm).astype(int)]].astype(np.float32)
    mean = total / np.linalg.norm(total, axis=1, keepdims=True)
    averaged = embed_case(case, eight, network).vectors
    np.testing.assert_allclose(averaged, mean, atol=5e-3)
    assert np.abs(averaged - single.vectors).max() > 0.05  # the tilings change the vectors


@pytest.mark.parametrize("overlap, margin", [(0.25, 32), (0.0, 16)])
def test_windows_step_by_whole_token_cells_so_a_scan_cropped_by_one_step_keeps_its_vectors(overlap, margin):
    assert [window_step(48, 16, o) for o in (0.0, 0.25, 0.5, 0.9)] == [48, 32, 16, 16]
    image = synthetic_ct(shape=(100, 90, 80), spacing_mm=2.0)
    case = LoadedCase(CaseRecord("synthetic", Path("synthetic.nii.gz")), image, None, {}, None)
    # One tiling: the others start their windows before the crop, where the crop has air. One voxel size: at
    # another, the crop is not a whole number of window steps.
    settings = EmbeddingSettings(source="untrained", grid_mm=8.0, overlap=overlap, tilings=1,
                                 spacings_mm=(2.0,)).resolved()
    network = load_network(settings)
    step = window_step(48, 16, overlap)
    whole, moved = (embed_case(c, settings, network) for c in (case, cropped_case(case, (step,) * 3)))
    # The cropped scan's windows are the whole scan's windows after the first, so each place they cover as the whole
    # scan's do (past the first window's overlap and the token cell interpolated across the crop's edge) gets the
    # same vector. With the 36-voxel step of 25% overlap, the windows of the two would fall 4 voxels apart.
    rows = {tuple(np.rint(xyz).astype(int)): row for row, xyz in enumerate(whole.xyz_mm)}
    shared = [(rows[key], row) for row, key in enumerate(map(tuple, np.rint(moved.xyz_mm).astype(int)))
              if key in rows and (moved.ijk[row] >= margin).all()]
    assert len(shared) > 10
    same, other = np.array(shared).T
    np.testing.assert_allclose(moved.vectors[other].astype(np.float32), whole.vectors[same].astype(np.float32),
                               atol=2e-3)


def test_both_token_sets_join_into_vectors_whose_cosine_is_the_mean_of_the_parts():
    image = synthetic_ct(shape=(40, 36, 30), spacing_mm=2.0)
    case = LoadedCase(CaseRecord("synthetic", Path("synthetic.nii.gz")), image, None, {}, None)
    # One tiling: the mean of several weighs each set by how well its tilings agree at each place.
    parts = {tokens: embed_case(case, EmbeddingSettings(source="untrained", grid_mm=8.0, tokens=tokens,
                                                        tilings=1, spacings_mm=(2.0,)).resolved())
             for tokens in ("decoder", "encoder", "both")}
    both = parts["both"].vectors.astype(np.float32)
    assert both.shape[1] == 96 + 192  # cpu-tiny: first decoder stage 4 x 24, bottleneck 8 x 24
    cosine = {t: parts[t].vectors.astype(np.float32) @ parts[t].vectors[0].astype(np.float32) for t in parts}
    np.testing.assert_allclose(cosine["both"], (cosine["decoder"] + cosine["encoder"]) / 2, atol=1e-2)


def test_voxel_sizes_join_their_passes_into_vectors_whose_cosine_is_the_mean_of_the_parts():
    image = synthetic_ct(shape=(60, 54, 45), spacing_mm=2.0)
    case = LoadedCase(CaseRecord("synthetic", Path("synthetic.nii.gz")), image, None, {}, None)
    parts = {spacings: embed_case(case, EmbeddingSettings(source="untrained", grid_mm=8.0, tokens="decoder",
                                                          tilings=1, spacings_mm=spacings).resolved())
             for spacings in ((2.0,), (6.0,), (2.0, 6.0))}
    fine, coarse, joined = (parts[s].vectors.astype(np.float32) for s in ((2.0,), (6.0,), (2.0, 6.0)))
    assert joined.shape[1] == 2 * 96
    # The fine part is the 2 mm pass's vector and the coarse part the 6 mm pass's, each scaled by 1/sqrt(2).
    np.testing.assert_allclose(joined * 2 ** 0.5, np.concatenate([fine, coarse], axis=1), atol=5e-3)
    assert np.abs(fine - coarse).max() > 0.1  # the coarse pass sees the scan otherwise
    cosine = {s: parts[s].vectors.astype(np.float32) @ parts[s].vectors[0].astype(np.float32) for s in parts}
    np.testing.assert_allclose(cosine[(2.0, 6.0)], (cosine[(2.0,)] + cosine[(6.0,)]) / 2, atol=1e-2)
    # The voxel sizes are part of the key: another set gives other vectors.
    assert len({EmbeddingSettings(source="untrained", spacings_mm=s).resolved().key() for s in parts}) == 3


@pytest.mark.parametrize("spacings", [(), (2.0, 0.0), (-6.0,)])
def test_voxel_sizes_that_are_not_positive_are_refused(spacings):
    with pytest.raises(InputError, match="spacings_mm"):
        EmbeddingSettings(source="untrained", spacings_mm=spacings).resolved()


def test_shards_cover_every_case_once(records):
    cases = list(records.values()) * 3
    shards = [shard(cases, rank, 4) for rank in range(4)]
    assert sorted(r.case_id for s in shards for r in s) == sorted(r.case_id for r in cases)


def test_the_cli_offers_the_tilings_the_library_knows():
    # The parser writes them out so that ``alice --help`` does not import torch; they must not drift apart.
    from alice.cli import build_parser
    from alice.explore.dense import TILING_GENERATORS

    embed = next(a for a in build_parser()._subparsers._group_actions[0].choices["embed"]._actions
                 if a.dest == "tilings")
    assert embed.choices == list(TILING_GENERATORS)
    assert f"default: {EmbeddingSettings.tilings})" in embed.help


def test_the_cli_states_the_librarys_default_voxel_sizes_and_passes_its_own():
    from alice.cli import _embedding_settings, build_parser

    parser = build_parser()
    spacings = next(a for a in parser._subparsers._group_actions[0].choices["embed"]._actions
                    if a.dest == "spacings_mm")
    assert f"default: {' '.join(f'{s:g}' for s in EmbeddingSettings.spacings_mm)})" in spacings.help
    assert _embedding_settings(parser.parse_args(["embed", "--source", "untrained"])).spacings_mm == (2.0, 6.0, 12.0)
    given = parser.parse_args(["embed", "--source", "untrained", "--spacings-mm", "3", "5"])
    assert _embedding_settings(given).spacings_mm == (3.0, 5.0)
