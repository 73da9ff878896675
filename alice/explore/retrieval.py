"""Landmark retrieval over dense embeddings: a point in one case -> the same anatomy in every other case.

The query vector is interpolated trilinearly between the query case's lattice vectors around the point. In each
other case the best lattice vector (exact cosine over that case's vectors) is refined to a sub-lattice position
by a parabola through its neighbours' scores along each axis. Confidence comes from the score and from cycle
consistency: the match's vector is searched back in the query case and the distance to the query point (mm)
is reported. Where the two cases' correspondence is known (pseudo-subjects and their source), the distance to
the true position is reported as well. The cohort-wide top-k comes from the FAISS index when one is given.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from alice.data.cohort import CaseRecord
from alice.data.pseudo import true_position
from alice.errors import InputError
from alice.explore.dense import DenseEmbedding

EXPORT_COLUMNS = ["query_case", "query_x_mm", "query_y_mm", "query_z_mm", "source", "case", "i", "j", "k",
                  "x_mm", "y_mm", "z_mm", "score", "cycle_error_mm", "error_mm"]


@dataclass(frozen=True)
class CaseMatch:
    """The best match of the query point in one case.

    Attributes:
        case_id: the matched case.
        ijk: (3,) continuous voxel position in the case's image.
        xyz_mm: (3,) world mm.
        score: cosine similarity of the query vector and the match's vector.
        cycle_error_mm: distance from the query point to where the match leads back in the query case.
        true_xyz_mm: (3,) the true position when the correspondence is known, else None.
        error_mm: distance from the match to the true position, else None.
    """

    case_id: str
    ijk: np.ndarray
    xyz_mm: np.ndarray
    score: float
    cycle_error_mm: float
    true_xyz_mm: np.ndarray | None
    error_mm: float | None


@dataclass(frozen=True)
class QueryResult:
    """A query and its best match in every other case (highest score first), and the cohort-wide top-k."""

    query_case: str
    query_xyz_mm: np.ndarray
    source: str
    matches: list[CaseMatch]
    top_k: pd.DataFrame

    def table(self) -> pd.DataFrame:
        """One row per matched case with the columns of ``EXPORT_COLUMNS`` (the CSV export)."""
        rows = [{"query_case": self.query_case, **dict(zip(("query_x_mm", "query_y_mm", "query_z_mm"),
                                                           np.round(self.query_xyz_mm, 2))),
                 "source": self.source, "case": m.case_id, **dict(zip("ijk", np.round(m.ijk, 2))),
                 **dict(zip(("x_mm", "y_mm", "z_mm"), np.round(m.xyz_mm, 2))), "score": round(m.score, 4),
                 "cycle_error_mm": round(m.cycle_error_mm, 2),
                 "error_mm": None if m.error_mm is None else round(m.error_mm, 2)} for m in self.matches]
        return pd.DataFrame(rows, columns=EXPORT_COLUMNS)


def query_vector(embedding: DenseEmbedding, xyz_mm) -> np.ndarray:
    """The unit vector at a world point: trilinear between the lattice vectors around it.

    Raises:
        InputError: the point is outside the case's volume, or in air outside the body (no lattice vector near).
    """
    xyz_mm = np.asarray(xyz_mm, dtype=np.float64)
    ijk = _mm_to_ijk(embedding, xyz_mm)
    shape = np.asarray(embedding.lattice_index.shape) * embedding.lattice_step  # roughly the image extent
    if np.any(ijk < -0.5) or np.any(ijk > shape + embedding.lattice_origin):
        raise InputError(None, f"the point {np.round(xyz_mm, 1).tolist()} mm is outside case "
                               f"{embedding.case_id}'s volume: nothing to match")
    position = (ijk - embedding.lattice_origin) / embedding.lattice_step
    low = np.floor(position).astype(np.int64)
    fraction = position - low
    total = np.zeros(embedding.dim, dtype=np.float64)
    for corner in np.ndindex(2, 2, 2):
        p = low + corner
        if np.any(p < 0) or np.any(p >= embedding.lattice_index.shape):
            continue
        row = embedding.lattice_index[tuple(p)]
        if row >= 0:
            weight = np.prod(np.where(corner, fraction, 1 - fraction))
            total += weight * embedding.vectors[row]
    norm = np.linalg.norm(total)
    if norm < 1e-6:
        raise InputError(None, f"the point {np.round(xyz_mm, 1).tolist()} mm lies in air outside the body of case "
                               f"{embedding.case_id}: there is no anatomy to match")
    return (total / norm).astype(np.float32)


def best_match(embedding: DenseEmbedding, vector: np.ndarray) -> tuple[np.ndarray, float, int]:
    """The best position of ``vector`` in a case: (continuous voxel ijk (3,), score, lattice row)."""
    scores = embedding.vectors @ vector
    row = int(scores.argmax())
    point = np.unravel_index(_lattice_position(embedding, row), embedding.lattice_index.shape)
    offset = np.zeros(3)
    for axis in range(3):
        neighbours = []
        for delta in (-1, 1):
            p = np.array(point)
            p[axis] += delta
            inside = 0 <= p[axis] < embedding.lattice_index.shape[axis]
            neighbour = embedding.lattice_index[tuple(p)] if inside else -1
            neighbours.append(scores[neighbour] if neighbour >= 0 else None)
        below, above = neighbours
        if below is not None and above is not None:
            curvature = below - 2 * scores[row] + above
            if curvature < 0:  # a peak: the parabola's vertex, at most half a step away
                offset[axis] = np.clip(0.5 * (below - above) / curvature, -0.5, 0.5)
    ijk = embedding.lattice_origin + embedding.lattice_step * (np.asarray(point) + offset)
    return ijk, float(scores[row]), row


def query_point(query: DenseEmbedding, xyz_mm, others: list[DenseEmbedding], source: str = "",
                records: dict[str, CaseRecord] | None = None, index=None, k: int = 10) -> QueryResult:
    """Find the anatomy at ``xyz_mm`` of ``query`` in every case of ``others``.

    Args:
        query: the query case's embedding.
        xyz_mm: the query point, world mm.
        others: the other cases' embeddings (the query case is skipped if present).
        source: a name for the embedding source (kept in the result and the CSV).
        records: case id -> record, for the true positions of cases with known correspondence.
        index: a ``CohortIndex`` over the cohort, for the cohort-wide top-k (else the top-k is empty).
        k: size of the top-k.

    Raises:
        InputError: the point is outside the volume or in air (see ``query_vector``).
    """
    xyz_mm = np.asarray(xyz_mm, dtype=np.float64)
    vector = query_vector(query, xyz_mm)
    matches = []
    for key in others:
        if key.case_id == query.case_id:
            continue
        ijk, score, row = best_match(key, vector)
        match_mm = _ijk_to_mm(key, ijk)
        back_ijk, _, _ = best_match(query, key.vectors[row])
        cycle = float(np.linalg.norm(_ijk_to_mm(query, back_ijk) - xyz_mm))
        truth = None
        if records is not None and query.case_id in records and key.case_id in records:
            truth = _true_position(records[query.case_id], records[key.case_id], tuple(xyz_mm))
        error = None if truth is None else float(np.linalg.norm(match_mm - truth))
        matches.append(CaseMatch(key.case_id, ijk, match_mm, score, cycle, truth, error))
    matches.sort(key=lambda m: -m.score)
    return QueryResult(query.case_id, xyz_mm, source, matches, _top_k(index, vector, query.case_id, k))


def _top_k(index, vector: np.ndarray, exclude_case: str, k: int) -> pd.DataFrame:
    """The k best vectors of the cohort outside the query case: each case's top k from the index, merged."""
    columns = ["rank", "case", "row", "score"]
    if index is None:
        return pd.DataFrame(columns=columns)
    found = [(float(score), int(vector_id)) for scores, ids in index.search_per_case(vector[None], exclude_case, k).values()
             for score, vector_id in zip(scores[0], ids[0]) if vector_id >= 0]
    found = sorted(found, reverse=True)[:k]
    case_ids, rows = index.locate(np.array([vector_id for _, vector_id in found], dtype=np.int64))
    return pd.DataFrame({"rank": np.arange(1, len(found) + 1), "case": case_ids, "row": rows,
                         "score": np.round([score for score, _ in found], 4)}, columns=columns)


@functools.lru_cache(maxsize=256)
def _true_position(query: CaseRecord, key: CaseRecord, xyz_mm: tuple[float, float, float]) -> np.ndarray | None:
    """Remembered: the same click is compared across embedding sources."""
    found = true_position(query, key, np.asarray([xyz_mm]))
    return None if found is None else np.asarray(found)[0]


def _lattice_position(embedding: DenseEmbedding, row: int) -> int:
    """The flat lattice position of a row (rows are the body lattice points in C order)."""
    return int(np.flatnonzero(embedding.lattice_index.ravel() >= 0)[row])


def _mm_to_ijk(embedding: DenseEmbedding, xyz_mm: np.ndarray) -> np.ndarray:
    inverse = np.linalg.inv(embedding.affine)
    return xyz_mm @ inverse[:3, :3].T + inverse[:3, 3]


def _ijk_to_mm(embedding: DenseEmbedding, ijk: np.ndarray) -> np.ndarray:
    return np.asarray(ijk, dtype=np.float64) @ embedding.affine[:3, :3].T + embedding.affine[:3, 3]
