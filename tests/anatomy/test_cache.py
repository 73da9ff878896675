"""Whole-case embeddings: grids in world mm, the body mask, and an on-disk cache that is never stale."""

import dataclasses

import numpy as np
import pytest
import torch

from alice.anatomy import cache
from alice.anatomy.cache import body_mask, cache_entry_path, cached_embedding, embed_case, read_entry, write_entry
from alice.anatomy.model import build_sam, save_sam
from alice.data.cohort import CaseRecord
from alice.data.io import save_volume
from tests.anatomy.conftest import lung_point, synthetic_ct, tiny_config


def test_embed_case_gives_unit_maps_and_their_world_grids(tiny_model):
    volume = synthetic_ct()
    embedding = embed_case(tiny_model, volume)
    assert embedding.local_map.shape == (8, 20, 18, 16) and embedding.local_map.dtype == np.float16
    assert embedding.global_map.shape == (8, 5, 5, 8)
    np.testing.assert_allclose(np.linalg.norm(embedding.local_map.astype(np.float32), axis=0), 1, atol=1e-2)
    # Local voxel (i, j, k) sits on image voxel (2i, 2j, 2k); global voxel on (8i, 8j, 4k).
    np.testing.assert_allclose(embedding.local_affine[:3, 3], volume.affine[:3, 3])
    np.testing.assert_allclose(np.diag(embedding.local_affine)[:3], [8, 8, 8])
    np.testing.assert_allclose(np.diag(embedding.global_affine)[:3], [32, 32, 16])
    assert tiny_model.training is False


def test_embed_case_resamples_to_the_model_spacing(tiny_model):
    volume = synthetic_ct(shape=(40, 36, 32), spacing_mm=2.0)
    embedding = embed_case(tiny_model, volume)
    np.testing.assert_allclose(np.diag(embedding.image_affine)[:3], [4, 4, 4])
    assert embedding.body.shape == (20, 18, 16)


def test_body_mask_keeps_enclosed_air_and_drops_outside_air():
    volume = synthetic_ct()
    body = body_mask(volume.array)
    lung = tuple(np.rint(volume.xyz_to_ijk(lung_point(volume))).astype(int))
    assert volume.array[lung] < -500 and body[lung]
    assert not body[0, 0, 0]
    assert not body_mask(np.full((4, 4, 4), -1000.0)).any()


@pytest.fixture
def case(tmp_path) -> CaseRecord:
    path = save_volume(synthetic_ct(), tmp_path / "case.nii.gz")
    return CaseRecord("case1", path)


@pytest.fixture
def checkpoint(tmp_path, tiny_model):
    return save_sam(tmp_path / "a.pt", tiny_model, tiny_config(), step=1)


def count_embeddings(monkeypatch) -> list:
    calls = []
    real = cache.embed_case

    def counting(model, image):
        calls.append(image.source)
        return real(model, image)

    monkeypatch.setattr(cache, "embed_case", counting)
    return calls


def test_a_case_is_embedded_once_then_read_from_the_workspace(case, checkpoint, monkeypatch, isolated_workspace):
    calls = count_embeddings(monkeypatch)
    first = cached_embedding(checkpoint, case)
    second = cached_embedding(checkpoint, case)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.local_map, second.local_map)
    np.testing.assert_array_equal(first.global_affine, second.global_affine)
    path, _ = cache_entry_path(checkpoint, case)
    assert path.is_relative_to(isolated_workspace / "embeddings" / "sam")


def test_the_key_changes_with_the_image_content(case, checkpoint, monkeypatch):
    calls = count_embeddings(monkeypatch)
    before = cache_entry_path(checkpoint, case)
    cached_embedding(checkpoint, case)
    changed = synthetic_ct()
    changed.array[20, 18, 16] += 100
    save_volume(changed, case.image)
    after = cache_entry_path(checkpoint, case)
    assert after[0] != before[0] and after[1] != before[1]
    cached_embedding(checkpoint, case)
    assert len(calls) == 2


def test_the_key_changes_with_the_checkpoint(case, checkpoint, tmp_path, monkeypatch):
    calls = count_embeddings(monkeypatch)
    torch.manual_seed(1)
    other = save_sam(tmp_path / "b.pt", build_sam(tiny_config()), tiny_config(), step=1)
    assert cache_entry_path(checkpoint, case) != cache_entry_path(other, case)
    a, b = cached_embedding(checkpoint, case), cached_embedding(other, case)
    assert len(calls) == 2
    assert not np.array_equal(a.local_map, b.local_map)


def test_an_entry_rewritten_in_place_with_another_key_is_stale(case, checkpoint, monkeypatch):
    calls = count_embeddings(monkeypatch)
    embedding = cached_embedding(checkpoint, case)
    path, key = cache_entry_path(checkpoint, case)
    write_entry(path, "some-other-key", embedding)
    assert read_entry(path, key) is None
    cached_embedding(checkpoint, case)
    assert len(calls) == 2
    assert read_entry(path, key) is not None


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_unit"])
def test_a_corrupt_entry_is_recomputed(case, checkpoint, monkeypatch, damage):
    calls = count_embeddings(monkeypatch)
    embedding = cached_embedding(checkpoint, case)
    path, key = cache_entry_path(checkpoint, case)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\0" * 1000)
    else:
        write_entry(path, key, dataclasses.replace(embedding, local_map=embedding.local_map * np.float16(2)))
    assert read_entry(path, key) is None
    again = cached_embedding(checkpoint, case)
    assert len(calls) == 2
    np.testing.assert_array_equal(again.local_map, embedding.local_map)
    assert read_entry(path, key) is not None
