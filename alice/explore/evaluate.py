"""Landmark retrieval with every embedding source in one run (``alice eval retrieval``).

The protocol is the SAM landmark protocol (``alice.anatomy.evaluate``): the structure centroids of the source
scan are queried in each held-out pseudo-subject, whose exact correspondence gives the truth; radial errors in
mm. Each source goes through the same retrieval as the app (``alice.explore.retrieval``), so the page and this
command give the same numbers. The real patients of the cohort have no structure shared with the source scan
(only lesion masks), so their error is not measurable; their cycle-consistency error (source -> patient ->
source, which needs no truth) is reported instead. The re-tiling error finds the source scan's landmarks in the
same scan cropped by a few voxels: how much a source's vectors depend on where the windows fall rather than on
the anatomy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alice.anatomy.evaluate import evaluate_landmarks, landmark_tasks, radial_error_metrics
from alice.data.cohort import LoadedCase, load_case, load_manifest
from alice.data.io import Volume
from alice.errors import InputError
from alice.explore.dense import DenseEmbedding, EmbeddingSettings, cached_dense_embedding, embed_case, load_network
from alice.explore.retrieval import best_match, query_vector

# Out of step with every token grid (Alice cpu-tiny: cells of 8 and 16 voxels at the sample cohort's 2 mm), as the
# windows of another scan are: windows that step by whole cells (``window_step``) would see a scan cropped by whole
# cells exactly as before.
RETILE_SHIFT = (5, 3, 2)
DEFAULT_SOURCES = {"alice": EmbeddingSettings(source="alice"), "sam": EmbeddingSettings(source="sam"),
                   "untrained": EmbeddingSettings(source="untrained")}


def retrieval_method(settings: EmbeddingSettings):
    """A landmark method (query case, key case, points) -> predicted key points, from dense embeddings."""
    settings = settings.resolved()

    def predict(query: LoadedCase, key: LoadedCase, xyz_mm: np.ndarray) -> np.ndarray:
        return matched_points(cached_dense_embedding(query.record, settings),
                              cached_dense_embedding(key.record, settings), xyz_mm)

    return predict


def matched_points(query: DenseEmbedding, key: DenseEmbedding, xyz_mm: np.ndarray) -> np.ndarray:
    """World mm of the best match in ``key`` of each query point."""
    out = []
    for point in xyz_mm:
        try:
            ijk, _, _ = best_match(key, query_vector(query, point))
        except InputError:  # a landmark in air: it counts at the query position, an error, not a gap
            out.append(point)
            continue
        out.append(ijk @ key.affine[:3, :3].T + key.affine[:3, 3])
    return np.asarray(out)


def cropped_case(case: LoadedCase, start: tuple[int, int, int]) -> LoadedCase:
    """The same scan without its first ``start`` voxels along each axis, at the same world mm (labels too)."""
    def crop(volume: Volume) -> Volume:
        affine = volume.affine.copy()
        affine[:3, 3] = volume.ijk_to_xyz(np.asarray(start))
        return Volume(np.ascontiguousarray(volume.array[start[0]:, start[1]:, start[2]:]), affine, None)

    return dataclasses.replace(case, image=crop(case.image), label=None if case.label is None else crop(case.label))


def retiling_errors(settings: EmbeddingSettings, case: LoadedCase, shift: tuple[int, int, int] = RETILE_SHIFT
                    ) -> np.ndarray:
    """Radial error (mm) of finding each landmark of ``case`` in the same scan cropped by ``shift`` voxels
    (``cropped_case``), where the truth is the point itself. Nothing changes but where the windows (and strides)
    fall, so an embedding of the anatomy alone scores the lattice's error, one that depends on its window far more.
    Landmarks cut off by the crop are left out. The scan's own embedding comes from the cache the retrieval fills;
    the cropped scan, made in memory, is embedded directly."""
    settings = settings.resolved()
    network = load_network(settings)
    moved = cropped_case(case, shift)
    xyz_mm = case.landmarks[["x", "y", "z"]].to_numpy()
    kept = xyz_mm[np.all(moved.image.xyz_to_ijk(xyz_mm) >= 0, axis=1)]
    original = cached_dense_embedding(case.record, settings, network)
    predicted = matched_points(original, embed_case(moved, settings, network), kept)
    return np.linalg.norm(predicted - kept, axis=1)


def retiling_shift(result: dict) -> list[int]:
    """The crop (voxels) behind the re-tiling errors of a ``run_retrieval_evaluation`` result."""
    return next(iter(result["retiling"].values()))["shift_voxels"]


def cycle_errors(settings: EmbeddingSettings, query: LoadedCase, key: LoadedCase, xyz_mm: np.ndarray) -> np.ndarray:
    """Distance (mm) from each query point to where its match in ``key`` leads back in ``query``."""
    method = retrieval_method(settings)
    there = method(query, key, xyz_mm)
    back = method(key, query, there)
    return np.linalg.norm(back - xyz_mm, axis=1)


def run_retrieval_evaluation(manifest, sources: dict[str, EmbeddingSettings] | None = None,
                             source_case: str = "lidc0001", split: str = "test") -> dict:
    """Every source on the landmark tasks, plus cycle errors on the real patients; JSON-ready."""
    sources = sources or DEFAULT_SOURCES
    cohort = load_manifest(manifest)
    tasks = landmark_tasks(cohort, source_case, split)
    result = evaluate_landmarks({name: retrieval_method(s) for name, s in sources.items()}, tasks)
    source = tasks[0].query
    real = [r for r in cohort.cases if r.origin == "real" and r.case_id != source_case]
    real_patients = {}
    for record in real:
        patient = load_case(record)
        real_patients[record.case_id] = {
            "landmark_error": "not measurable: no structure of the source scan is labelled in this patient",
            "cycle_error": {name: radial_error_metrics(cycle_errors(s, source, patient, tasks[0].query_xyz_mm))
                            for name, s in sources.items()}}
    retiling = {name: {"shift_voxels": list(RETILE_SHIFT), **radial_error_metrics(retiling_errors(s, source))}
                for name, s in sources.items()}
    return {"source_case": source_case, "key_cases": [t.key.record.case_id for t in tasks],
            "sources": {name: {**s.resolved().relevant(), "checkpoint": s.resolved().checkpoint}
                        for name, s in sources.items()},
            "methods": result["methods"], "real_patients": real_patients, "retiling": retiling}
