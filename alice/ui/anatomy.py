"""The Streamlit side of SAM: the checkpoint's state, case embeddings, point matches and cohort queries, cached.

A checkpoint is keyed by its path, size and modification time, a case by :func:`alice.ui.cases.case_stamp` (the
on-disk cache of :mod:`alice.anatomy.cache` checks content hashes on top), a point by its world position rounded to
a micrometre. Everything expensive is shared across reruns and sessions, so a point costs once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from alice import paths, viz
from alice.anatomy.cache import CaseEmbedding, cached_embedding
from alice.anatomy.match import match_points, similarity_on_image
from alice.anatomy.model import load_sam
from alice.anatomy.query import query_cohort
from alice.data.cohort import CaseRecord
from alice.data.io import Volume, load_volume
from alice.data.pseudo import true_position
from alice.errors import InputError
from alice.ui.cases import case_stamp
from alice.ui.crops import THUMB_PX, crops_png

log = logging.getLogger(__name__)

# The heat map runs from (best similarity - HEAT_SPAN) to the best: the few places SAM finds most alike.
HEAT_SPAN = 0.2
HEAT_OPACITY = 0.55
HEAT_NAME = "SAM similarity to the query point"
# Landmark thumbnails show more context than Alice's crops.
THUMB_CONTEXT_VOXELS = 64
# Columns of the landmark query shown in the app (the CSV download has them all).
QUERY_DISPLAY = {"case": "case", "score": "score", "cycle_error_mm": "cycle error (mm)",
                 "truth_error_mm": "distance to truth (mm)", "i": "i", "j": "j", "k": "k",
                 "no_match_reason": "no match"}


@dataclass(frozen=True)
class Sam:
    """A SAM checkpoint as the app sees it: usable (``token`` is set) or not (``problem`` says why and what to do).

    Attributes:
        path: the checkpoint file.
        token: (path, size, modification time), the cache key of everything computed with it.
        step: the training step it was saved at.
        problem: why it cannot be used, with the command that makes one.
    """

    path: Path
    token: tuple[str, int, int] | None = None
    step: int | None = None
    problem: str | None = None

    @property
    def ready(self) -> bool:
        return self.token is not None


def sam_state(path: str | Path) -> Sam:
    """Check a checkpoint (loading it once per version of the file); never raises."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return Sam(path, problem=_problem(path, "no such checkpoint file"))
    token = (str(path), stat.st_size, stat.st_mtime_ns)
    try:
        step = _checkpoint_step(*token)
    except InputError as exc:
        log.warning("SAM checkpoint unusable: %s", exc)
        return Sam(path, problem=_problem(path, exc.problem))
    return Sam(path, token, step)


def _problem(path: Path, problem: str) -> str:
    return (f"No usable SAM checkpoint: `{path}`: {problem}. Train one with `alice sam train` and copy its "
            f"`checkpoints/final.pt` to `{paths.DEFAULT_SAM_CHECKPOINT}`, or set `ALICE_SAM_CHECKPOINT` to its path.")


@st.cache_resource(max_entries=4, show_spinner="Checking the SAM checkpoint...")
def _checkpoint_step(path: str, size_bytes: int, mtime_ns: int) -> int:
    return load_sam(path).step


def case_image(record: CaseRecord) -> Volume:
    """A case's image (no label map), shared across reruns; for pages that touch every case of a cohort.

    Raises:
        InputError: the image is missing or unreadable.
    """
    return _image(record, case_stamp(record))


@st.cache_resource(max_entries=32, show_spinner="Loading the case...")
def _image(_record: CaseRecord, stamp: tuple) -> Volume:
    return load_volume(_record.image)


def case_embedding(sam: Sam, record: CaseRecord) -> CaseEmbedding:
    """A case's SAM embedding under a usable checkpoint (memory, then disk cache, then computed).

    Raises:
        InputError: the checkpoint is not usable, or it or the image cannot be read.
    """
    if not sam.ready:
        raise InputError(None, sam.problem)
    return _embedding(record, sam.token, case_stamp(record))


# About 50 MB each at the CPU preset (float16 maps, float32 copies for matching).
@st.cache_resource(max_entries=16, show_spinner="Embedding the case with SAM...")
def _embedding(_record: CaseRecord, token: tuple, stamp: tuple) -> CaseEmbedding:
    return cached_embedding(token[0], _record)


@dataclass(frozen=True, eq=False)
class PointMatch:
    """SAM's answer for one query point in one key case.

    Attributes:
        ijk: the matched voxel of the key image (None: no match).
        xyz_mm: the match in world mm (None: no match).
        score: SAM similarity at the match, in [-1, 1] (NaN: no match).
        cycle_error_mm: distance from the query point to the match of its match (NaN: no match).
        no_match: why there is no match, or None.
        overlay: the similarity map over the key image as a heat map (None: no match).
    """

    ijk: tuple[int, int, int] | None
    xyz_mm: tuple[float, float, float] | None
    score: float
    cycle_error_mm: float
    no_match: str | None
    overlay: viz.HeatOverlay | None

    def similarity_at(self, ijk) -> float:
        """SAM similarity of the query point to voxel ``ijk`` of the key image (NaN without a map)."""
        if self.overlay is None:
            return float("nan")
        return float(self.overlay.volume.array[tuple(int(v) for v in ijk)])


def match_point(sam: Sam, query: CaseRecord, key: CaseRecord, xyz_mm) -> PointMatch:
    """Match a world point of ``query`` in ``key`` (cached per checkpoint, cases and point).

    Raises:
        InputError: the checkpoint or an image cannot be read.
    """
    point = tuple(round(float(v), 3) for v in xyz_mm)
    return _match(query, key, sam, sam.token, case_stamp(query), case_stamp(key), point)


@st.cache_resource(max_entries=16, show_spinner="Matching the point with SAM...")
def _match(_query: CaseRecord, _key: CaseRecord, _sam: Sam, token: tuple, query_stamp: tuple, key_stamp: tuple,
           xyz_mm: tuple[float, float, float]) -> PointMatch:
    result = match_points(case_embedding(_sam, _query), case_embedding(_sam, _key), xyz_mm, return_similarity=True)
    reason = result.reasons[0]
    if reason is not None:
        return PointMatch(None, None, float("nan"), float("nan"), f"the query point is {reason}", None)
    image = case_image(_key)
    ijk = np.clip(np.rint(image.xyz_to_ijk(result.xyz_mm[0])), 0, np.array(image.shape) - 1).astype(int)
    similarity = similarity_on_image(result, 0, image)
    best = float(result.score[0])
    # float16 halves the memory of a cached map; the viewer converts slices to float32 for blending.
    overlay = viz.HeatOverlay(similarity.with_array(similarity.array.astype(np.float16)), HEAT_NAME,
                              HEAT_OPACITY, vmin=best - HEAT_SPAN, vmax=best, threshold=best - HEAT_SPAN)
    return PointMatch(tuple(int(v) for v in ijk), tuple(float(v) for v in result.xyz_mm[0]), best,
                      float(result.cycle_error_mm[0]), None, overlay)


def true_point(query: CaseRecord, key: CaseRecord, xyz_mm) -> tuple[float, float, float] | None:
    """Where a point of ``query`` truly is in ``key`` (world mm) when their correspondence is known, else None."""
    return _truth(query, key, case_stamp(query), case_stamp(key), tuple(round(float(v), 3) for v in xyz_mm))


@st.cache_data(max_entries=256, show_spinner=False)
def _truth(_query: CaseRecord, _key: CaseRecord, query_stamp: tuple, key_stamp: tuple,
           xyz_mm: tuple) -> tuple[float, float, float] | None:
    truth = true_position(_query, _key, xyz_mm)
    return None if truth is None else tuple(float(v) for v in truth[0])


def landmark_query(sam: Sam, query: CaseRecord, cases: list[CaseRecord], xyz_mm) -> pd.DataFrame:
    """The best match of one point of ``query`` in every other case (see :func:`alice.anatomy.query.query_cohort`).

    Raises:
        InputError: the checkpoint or an image cannot be read.
    """
    point = tuple(round(float(v), 3) for v in xyz_mm)
    return _query(query, tuple(cases), sam, sam.token, case_stamp(query), tuple(case_stamp(c) for c in cases), point)


@st.cache_data(max_entries=64, show_spinner="Finding the point in every case...")
def _query(_query: CaseRecord, _cases: tuple[CaseRecord, ...], _sam: Sam, token: tuple, query_stamp: tuple,
           stamps: tuple, xyz_mm: tuple) -> pd.DataFrame:
    keys = [(record, case_image(record)) for record in _cases]
    return query_cohort(_query, xyz_mm, keys, lambda record: case_embedding(_sam, record))


def query_display(table: pd.DataFrame) -> pd.DataFrame:
    """The landmark query's columns worth reading on screen, with units in their names."""
    return table[list(QUERY_DISPLAY)].rename(columns=QUERY_DISPLAY)


def query_thumbnails(table: pd.DataFrame, cases: list[CaseRecord], query: CaseRecord,
                     query_ijk) -> list[tuple[bytes, str]]:
    """Axial pictures around the query point and around each match of a landmark query (no-match rows left out).

    Raises:
        InputError: an image cannot be read.
    """
    records = {record.case_id: record for record in cases}
    views = [(query, tuple(query_ijk), "query point")]
    views += [(records[row.case], (row.i, row.j, row.k), f"score {row.score:.2f}")
              for row in table.itertuples() if not row.no_match_reason]
    window = viz.WINDOW_PRESETS[viz.DEFAULT_WINDOW]
    return [(crops_png([(case_image(record), ijk, "axial", record.case_id)], size_voxels=THUMB_CONTEXT_VOXELS,
                       window=window, panel_px=THUMB_PX), caption) for record, ijk, caption in views]
