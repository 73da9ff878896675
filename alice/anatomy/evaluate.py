"""Landmark-retrieval evaluation: find each landmark of a source scan in held-out scans with known truth.

Protocol (SAM, Yan et al. TMI 2022): the query points are the structure centroids of the source case
(``lidc0001``); their true positions in each held-out pseudo-subject come from its exact correspondence (the
landmark files of pseudo-subjects hold the mapped centroids). Each method predicts the position in the key scan;
the radial error is the world-mm distance to the truth. Reported: mean radial error (MRE), median, max and the
fraction within 5 / 10 / 20 mm, overall and per structure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alice.data.cohort import Cohort, LoadedCase, load_case
from alice.errors import InputError

# A method maps (query case, key case, query points (N, 3) mm) to predicted key points (N, 3) mm.
Method = Callable[[LoadedCase, LoadedCase, np.ndarray], np.ndarray]
THRESHOLDS_MM = (5, 10, 20)


@dataclass(frozen=True)
class LandmarkTask:
    """The landmarks of one (query, key) pair: names, query positions and true key positions, in mm."""

    query: LoadedCase
    key: LoadedCase
    names: list[str]
    query_xyz_mm: np.ndarray
    true_xyz_mm: np.ndarray


def landmark_tasks(cohort: Cohort, source_case: str = "lidc0001", split: str = "test") -> list[LandmarkTask]:
    """Source landmarks against every pseudo-subject of ``split`` (landmarks shared by both)."""
    source = load_case(cohort.get(source_case))
    if source.landmarks is None:
        raise InputError(cohort.get(source_case).image, "the source case has no landmarks")
    tasks = []
    for record in cohort.split(split):
        if record.origin != "pseudo" or record.landmarks is None:
            continue
        key = load_case(record)
        shared = source.landmarks.merge(key.landmarks, on="name", suffixes=("_q", "_k"))
        tasks.append(LandmarkTask(source, key, shared["name"].tolist(),
                                  shared[["x_q", "y_q", "z_q"]].to_numpy(), shared[["x_k", "y_k", "z_k"]].to_numpy()))
    if not tasks:
        raise InputError(cohort.manifest, f"no pseudo-subject with landmarks in split {split!r}")
    return tasks


def radial_error_metrics(errors_mm: np.ndarray) -> dict:
    """MRE, median, max (mm) and the fraction within 5 / 10 / 20 mm."""
    errors_mm = np.asarray(errors_mm, dtype=np.float64)
    if errors_mm.size == 0:
        return {"mre_mm": None, "median_mm": None, "max_mm": None,
                **{f"within_{t}mm": None for t in THRESHOLDS_MM}, "n": 0}
    return {"mre_mm": round(float(errors_mm.mean()), 3), "median_mm": round(float(np.median(errors_mm)), 3),
            "max_mm": round(float(errors_mm.max()), 3),
            **{f"within_{t}mm": round(float((errors_mm <= t).mean()), 4) for t in THRESHOLDS_MM},
            "n": int(errors_mm.size)}


def evaluate_landmarks(methods: dict[str, Method], tasks: list[LandmarkTask]) -> dict:
    """Run every method on every task; return {"methods": {name: metrics + per_structure}, "errors": table}."""
    rows = []
    for name, method in methods.items():
        for task in tasks:
            predicted = method(task.query, task.key, task.query_xyz_mm)
            errors = np.linalg.norm(predicted - task.true_xyz_mm, axis=1)
            rows += [{"method": name, "key_case": task.key.record.case_id, "landmark": landmark, "error_mm": e}
                     for landmark, e in zip(task.names, errors)]
    table = pd.DataFrame(rows, columns=["method", "key_case", "landmark", "error_mm"])
    results = {}
    for name in methods:
        own = table[table["method"] == name]
        per_structure = {landmark: radial_error_metrics(group["error_mm"].to_numpy())
                         for landmark, group in own.groupby("landmark", sort=True)}
        results[name] = {**radial_error_metrics(own["error_mm"].to_numpy()), "per_structure": per_structure}
    return {"methods": results, "errors": table}


def sam_method(embed: Callable[[LoadedCase], object]) -> Method:
    """A landmark method from a function that embeds a case (cached SAM, or an untrained network)."""
    from alice.anatomy.match import match_points

    def predict(query: LoadedCase, key: LoadedCase, xyz_mm: np.ndarray) -> np.ndarray:
        result = match_points(embed(query), embed(key), xyz_mm)
        # A landmark with no match (outside the body) counts at the query position: an error, not a gap.
        return np.where(result.valid[:, None], result.xyz_mm, xyz_mm)

    return predict


def ncc_method(matcher=None) -> Method:
    """The intensity baseline as a landmark method."""
    from alice.anatomy.ncc import NCCMatcher

    matcher = matcher or NCCMatcher()
    return lambda query, key, xyz_mm: matcher.match(query.image, key.image, xyz_mm)[0]


def run_landmark_evaluation(manifest, checkpoint, source_case: str = "lidc0001", split: str = "test",
                            seed: int = 0) -> dict:
    """SAM (the checkpoint), the same network untrained, and NCC on the landmark tasks; JSON-ready."""
    import torch

    from alice.anatomy.cache import cached_embedding, embed_case
    from alice.anatomy.model import build_sam, load_sam
    from alice.data.cohort import load_manifest

    cohort = load_manifest(manifest)
    tasks = landmark_tasks(cohort, source_case, split)
    trained = load_sam(checkpoint)
    torch.manual_seed(seed)
    untrained = build_sam(trained.config)
    untrained_embeddings: dict[str, object] = {}

    def embed_untrained(case: LoadedCase):
        if case.record.case_id not in untrained_embeddings:
            untrained_embeddings[case.record.case_id] = embed_case(untrained, case.image)
        return untrained_embeddings[case.record.case_id]

    methods = {"sam": sam_method(lambda case: cached_embedding(checkpoint, case.record)),
               "untrained": sam_method(embed_untrained), "ncc": ncc_method()}
    result = evaluate_landmarks(methods, tasks)
    return {"source_case": source_case, "key_cases": [t.key.record.case_id for t in tasks],
            "checkpoint": str(checkpoint), "methods": result["methods"]}
