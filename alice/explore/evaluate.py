"""Landmark retrieval with every embedding source in one run (``alice eval retrieval``).

The protocol is the SAM landmark protocol (``alice.anatomy.evaluate``): the structure centroids of the source
scan are queried in each held-out pseudo-subject, whose exact correspondence gives the truth; radial errors in
mm. Each source goes through the same retrieval as the app (``alice.explore.retrieval``), so the page and this
command give the same numbers. The real patients of the cohort have no structure shared with the source scan
(only lesion masks), so their error is not measurable; their cycle-consistency error (source -> patient ->
source, which needs no truth) is reported instead.
"""

from __future__ import annotations

import numpy as np

from alice.anatomy.evaluate import landmark_tasks, radial_error_metrics, evaluate_landmarks
from alice.data.cohort import LoadedCase, load_case, load_manifest
from alice.errors import InputError
from alice.explore.dense import EmbeddingSettings, cached_dense_embedding
from alice.explore.retrieval import best_match, query_vector

DEFAULT_SOURCES = {"alice": EmbeddingSettings(source="alice"), "sam": EmbeddingSettings(source="sam"),
                   "untrained": EmbeddingSettings(source="untrained")}


def retrieval_method(settings: EmbeddingSettings):
    """A landmark method (query case, key case, points) -> predicted key points, from dense embeddings."""
    settings = settings.resolved()

    def predict(query: LoadedCase, key: LoadedCase, xyz_mm: np.ndarray) -> np.ndarray:
        query_embedding = cached_dense_embedding(query.record, settings)
        key_embedding = cached_dense_embedding(key.record, settings)
        out = []
        for point in xyz_mm:
            try:
                ijk, _, _ = best_match(key_embedding, query_vector(query_embedding, point))
            except InputError:  # a landmark in air: it counts at the query position, an error, not a gap
                out.append(point)
                continue
            out.append(ijk @ key_embedding.affine[:3, :3].T + key_embedding.affine[:3, 3])
        return np.asarray(out)

    return predict


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
    return {"source_case": source_case, "key_cases": [t.key.record.case_id for t in tasks],
            "sources": {name: {**s.resolved().relevant(), "checkpoint": s.resolved().checkpoint}
                        for name, s in sources.items()},
            "methods": result["methods"], "real_patients": real_patients}
