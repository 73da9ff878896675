"""The cohort FAISS index: exact and approximate search, per-case search, persistence, staleness, bad input."""

import json
import logging

import faiss
import numpy as np
import pytest

from alice.errors import InputError
from alice.explore.index import (INDEX_FILE, METADATA_FILE, IndexPart, build_index, load_index, load_or_build,
                                 recall_at_k, stale_reason)

DIM = 32
SIZES = {"a": 3500, "tiny": 40, "b": 2500, "c": 1960}  # 8000 vectors; "tiny" tests a very selective search


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """Unit vectors scattered around a few centres: structured like real embeddings, unlike uniform noise."""
    x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """FAISS's OpenMP threads spin while waiting: beside another busy process two threads run 3x slower than one."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((48, DIM))
    parts = [IndexPart(case_id, f"key-{case_id}", clustered(n, rng, centres)) for case_id, n in SIZES.items()]
    return parts, clustered(200, rng, centres)  # held-out queries


@pytest.fixture(scope="module")
def indexes(data):
    parts, _ = data
    return {kind: build_index(parts, "src", kind=kind, recall_queries=300) for kind in ("flat", "ivf", "hnsw", "ivfpq")}


def all_vectors(parts):
    return np.concatenate([p.vectors for p in parts])


def test_exact_search_finds_each_vector_itself(data):
    parts, _ = data
    index = build_index(parts, "src")  # small: exact by default
    assert index.kind == "flat" and index.metadata["recall_at_10"] == 1.0
    ids = np.array([0, 3499, 3500, 3539, 7999])
    scores, found = index.search(all_vectors(parts)[ids], k=10)
    assert scores.shape == found.shape == (5, 10) and scores.dtype == np.float32 and found.dtype == np.int64
    np.testing.assert_array_equal(found[:, 0], ids)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_against_exact(data, indexes, kind):
    parts, queries = data
    index = indexes[kind]
    assert index.metadata["recall_at_10"] >= 0.95
    exact = np.argsort(-queries @ all_vectors(parts).T, axis=1)[:, :10]
    _, found = index.search(queries, k=10)
    assert recall_at_k(found, exact) >= 0.9
    meta = index.metadata
    assert meta["n_vectors"] == 8000 and meta["dim"] == DIM and meta["bytes_per_vector"] >= 4 * DIM
    assert {"nprobe", "nlist"} <= meta["params"].keys() if kind == "ivf" else "efSearch" in meta["params"]
    assert meta["faiss_version"] and meta["alice_version"] and meta["build_seconds"] >= 0


def test_default_kinds_follow_size_and_memory_budget(data):
    parts, _ = data
    assert build_index(parts, "src", exact_max_vectors=1000, recall_queries=100).kind == "ivf"
    compressed = build_index(parts, "src", memory_budget_bytes=1000, recall_queries=100)
    assert compressed.kind == "ivfpq"
    meta = compressed.metadata
    assert {"nlist", "nprobe", "pq_m", "pq_nbits"} <= meta["params"].keys()
    assert meta["params"]["refine"] is None  # not even one byte per dimension fits this budget
    assert meta["bytes_per_vector"] < 4 * DIM and 0 < meta["recall_at_10"] <= 1


def test_compressed_index_re_ranks_with_8_bit_codes_where_they_fit(data, indexes):
    parts, queries = data
    exact = np.argsort(-queries @ all_vectors(parts).T, axis=1)[:, :10]
    refined = indexes["ivfpq"]  # the machine's memory holds one byte per dimension
    assert refined.metadata["params"]["refine"] == "SQ8"
    assert DIM < refined.metadata["bytes_per_vector"] < 4 * DIM
    pq_only = build_index(parts, "src", kind="ivfpq", memory_budget_bytes=1000, recall_queries=300)
    assert pq_only.metadata["bytes_per_vector"] < DIM
    refined_recall = recall_at_k(refined.search(queries, k=10)[1], exact)
    assert refined_recall >= 0.9
    assert refined_recall > recall_at_k(pq_only.search(queries, k=10)[1], exact) + 0.1


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_search_within_one_case_returns_only_that_case(data, indexes, kind):
    _, queries = data
    index = indexes[kind]
    for case_id in SIZES:
        start, stop = index.case_range(case_id)
        scores, ids = index.search(queries[:20], k=10, case_id=case_id)
        assert np.all(((ids >= start) & (ids < stop)) | (ids == -1)), case_id
        assert np.all(ids[:, 0] >= 0), f"{kind}: nothing found in {case_id}"
        assert np.all(np.isneginf(scores[ids == -1]))
    per_case = index.search_per_case(queries[:5], exclude_case="b")
    assert list(per_case) == ["a", "tiny", "c"]
    cases, _ = index.locate(per_case["tiny"][1])
    assert set(cases.ravel()) == {"tiny"}


def test_search_within_one_case_matches_brute_force(data, indexes):
    parts, queries = data
    _, ids = indexes["flat"].search(queries, k=5, case_id="b")
    np.testing.assert_array_equal(ids, 3540 + np.argsort(-queries @ parts[2].vectors.T, axis=1)[:, :5])
    # a case this small makes IVF probe every list: exact, and a check that the sorted-range shortcut holds
    _, ids = indexes["ivf"].search(queries, k=5, case_id="tiny")
    np.testing.assert_array_equal(ids, 3500 + np.argsort(-queries @ parts[1].vectors.T, axis=1)[:, :5])


def test_locate_maps_ids_back_to_cases_and_rows(indexes):
    index = indexes["flat"]
    cases, rows = index.locate(np.array([[0, 3499, 3500], [3540, 7999, -1]]))
    assert cases.tolist() == [["a", "a", "tiny"], ["b", "c", ""]]
    assert rows.tolist() == [[0, 3499, 0], [0, 1959, -1]]
    with pytest.raises(ValueError):
        index.locate(np.array([8000]))


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw", "ivfpq"])
def test_save_and_load_give_identical_results(data, indexes, kind, tmp_path):
    _, queries = data
    index = indexes[kind]
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx", "src")
    assert loaded.metadata == index.metadata and loaded.folder == tmp_path / "idx"
    for case_id in (None, "tiny"):
        for a, b in zip(index.search(queries[:50], 10, case_id), loaded.search(queries[:50], 10, case_id)):
            np.testing.assert_array_equal(a, b)


def test_unfinished_or_damaged_folders_are_refused(indexes, tmp_path):
    folder = indexes["ivf"].save(tmp_path / "idx")
    text = (folder / METADATA_FILE).read_text()
    (folder / METADATA_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(InputError, match="metadata.json cannot be read") as exc:
        load_index(folder)
    assert exc.value.path == folder
    (folder / METADATA_FILE).unlink()
    with pytest.raises(InputError, match="no metadata.json.*did not finish"):
        load_index(folder)
    # metadata of another index beside this index.faiss
    (folder / METADATA_FILE).write_text(json.dumps({**indexes["ivf"].metadata, "n_vectors": 10,
                                                    "cases": [{"case_id": "a", "content_key": "k", "start": 0,
                                                               "stop": 10}]}))
    with pytest.raises(InputError, match="holds 8000 32-d vectors but metadata.json describes 10"):
        load_index(folder)
    (folder / METADATA_FILE).write_text(text)
    data = (folder / INDEX_FILE).read_bytes()
    (folder / INDEX_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="index.faiss cannot be read"):
        load_index(folder)


def test_staleness(indexes):
    meta = indexes["flat"].metadata
    keys = {case_id: f"key-{case_id}" for case_id in SIZES}
    assert stale_reason(meta, "src", keys) is None
    assert "cases changed: b" in stale_reason(meta, "src", {**keys, "b": "new"})
    assert "cases added: d" in stale_reason(meta, "src", {**keys, "d": "key-d"})
    assert "cases removed: tiny" in stale_reason(meta, "src", {k: v for k, v in keys.items() if k != "tiny"})
    assert "built from 'src', asked for 'other'" in stale_reason(meta, "other", keys)


def test_load_or_build_rebuilds_only_when_stale(data, tmp_path, caplog):
    parts, _ = data
    small = parts[:2]
    folder = tmp_path / "idx"
    with caplog.at_level(logging.INFO, logger="alice.explore.index"):
        first = load_or_build(folder, small, "src")
        assert "no index yet" in caplog.text
        caplog.clear()
        again = load_or_build(folder, small, "src")
        assert "building" not in caplog.text and again.metadata == first.metadata
        changed = [small[0], IndexPart("tiny", "changed", small[1].vectors)]
        rebuilt = load_or_build(folder, changed, "src")
        assert "cases changed: tiny" in caplog.text
        assert rebuilt.metadata["cases"][1]["content_key"] == "changed"
        caplog.clear()
        load_or_build(folder, changed, "other")
        assert "built from 'src', asked for 'other'" in caplog.text
    assert load_index(folder).source_key == "other"


def test_bad_input_is_refused(data, indexes, tmp_path):
    parts, queries = data
    mixed = [parts[0], IndexPart("x", "k", np.ones((5, 16), np.float32))]
    with pytest.raises(InputError, match="different dimensions.*32-d: a.*16-d: x"):
        build_index(mixed, "src")
    with pytest.raises(InputError, match="given twice"):
        build_index([parts[0], parts[0]], "src")
    with pytest.raises(InputError, match="NaN"):
        build_index([IndexPart("n", "k", np.full((3, 4), np.nan, np.float32))], "src")
    with pytest.raises(InputError, match=r"queries of shape \(3, 16\).*32-d vectors"):
        indexes["flat"].search(np.ones((3, 16), np.float32))
    with pytest.raises(InputError, match="no case 'zz'"):
        indexes["flat"].search(queries[:1], case_id="zz")
    folder = indexes["flat"].save(tmp_path / "idx")
    with pytest.raises(InputError, match="built from checkpoint/settings 'src', asked for 'other'; rebuild"):
        load_index(folder, "other")


def test_float16_parts_are_renormalised(data):
    parts, _ = data
    half = [IndexPart(p.case_id, p.content_key, p.vectors.astype(np.float16)) for p in parts]
    index = build_index(half, "src")
    scores, ids = index.search(half[0].vectors[:3], k=1)
    np.testing.assert_array_equal(ids[:, 0], [0, 1, 2])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
