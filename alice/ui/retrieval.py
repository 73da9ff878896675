"""Landmark retrieval page helpers: run a click through each embedding source, the gallery, the viewer hand-off."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from alice import viz
from alice.data.cohort import CaseRecord
from alice.explore.retrieval import QueryResult, query_point
from alice.ui import dense
from alice.ui.anatomy import case_image
from alice.ui.cases import case_stamp
from alice.ui.crops import crops_png
from alice.ui.state import viewer_crosshair_key

VIEWER_PAGE = "../pages/viewer.py"
THUMB_VOXELS = 64
THUMB_PX = 150


def run_query(source: dense.Source, records: list[CaseRecord], query_case: str, xyz_mm) -> QueryResult:
    """One click through one source: the best match in every other case and the cohort-wide top-10.

    Raises:
        InputError: the point is outside the volume or in air, or an image or checkpoint cannot be read.
    """
    embeddings = dense.cohort_embeddings(records, source.settings)
    index = dense.index(records, embeddings, source.settings)
    by_case = {e.case_id: e for e in embeddings}
    point = tuple(round(float(v), 2) for v in xyz_mm)
    return _query(tuple(embeddings), by_case[query_case], index, {r.case_id: r for r in records}, source.name,
                  source.settings.key(), tuple(case_stamp(r) for r in records), query_case, point)


@st.cache_data(max_entries=128, show_spinner="Finding the point in every case...")
def _query(_embeddings: tuple, _query_embedding, _index, _records: dict, source_name: str, key: str, stamps: tuple,
           query_case: str, xyz_mm: tuple) -> QueryResult:
    return query_point(_query_embedding, np.asarray(xyz_mm), list(_embeddings), source_name, _records, _index)


def matches_frame(result: QueryResult) -> pd.DataFrame:
    """What the page shows per match, with units in the column names."""
    table = result.table()
    return pd.DataFrame({"case": table["case"], "score": table["score"],
                         "cycle error (mm)": table["cycle_error_mm"], "error to truth (mm)": table["error_mm"],
                         "x (mm)": table["x_mm"], "y (mm)": table["y_mm"], "z (mm)": table["z_mm"]})


def comparison_frame(results: dict[str, QueryResult]) -> pd.DataFrame:
    """Error to truth (or cycle error where no truth) per case and source, side by side."""
    columns = {}
    for name, result in results.items():
        for match in result.matches:
            columns.setdefault(f"{name} error (mm)", {})[match.case_id] = match.error_mm
            columns.setdefault(f"{name} cycle (mm)", {})[match.case_id] = round(match.cycle_error_mm, 1)
            columns.setdefault(f"{name} score", {})[match.case_id] = round(match.score, 3)
    return pd.DataFrame(columns).sort_index()


def export_csv(results: dict[str, QueryResult]) -> str:
    """Every source's matches in one CSV (``alice.explore.retrieval.EXPORT_COLUMNS``)."""
    return pd.concat([r.table() for r in results.values()], ignore_index=True).to_csv(index=False)


def show_gallery(result: QueryResult, records: dict[str, CaseRecord], query_ijk, cohort_name: str,
                 key: str, per_row: int = 4) -> None:
    """Tri-planar thumbnails of the query point and each match (crosshair ticks at the centre), with the score,
    the cycle error and the error to truth, and a button that opens the match in the Cohort viewer."""
    tiles = [(records[result.query_case], tuple(int(v) for v in query_ijk), f"query {result.query_case}", None)]
    for match in result.matches:
        truth = "" if match.error_mm is None else f", error {match.error_mm:.1f} mm"
        tiles.append((records[match.case_id], tuple(int(round(v)) for v in match.ijk),
                      f"{match.case_id}: score {match.score:.3f}, cycle {match.cycle_error_mm:.1f} mm{truth}", match))
    window = viz.WINDOW_PRESETS[viz.DEFAULT_WINDOW]
    for start in range(0, len(tiles), per_row):
        for column, (record, ijk, caption, match) in zip(st.columns(per_row), tiles[start:start + per_row]):
            image = case_image(record)
            ijk = tuple(int(np.clip(v, 0, n - 1)) for v, n in zip(ijk, image.shape))
            column.image(crops_png([(image, ijk, plane, "") for plane in ("axial", "coronal", "sagittal")],
                                   size_voxels=THUMB_VOXELS, window=window, panel_px=THUMB_PX), caption=caption)
            if column.button("Open in viewer", key=f"{key}.open.{record.case_id}"):
                open_in_viewer(cohort_name, record.case_id, ijk)


def open_in_viewer(cohort_name: str, case_id: str, ijk) -> None:
    """Show a case in the Cohort viewer with its crosshair on ``ijk``."""
    st.session_state["viewer_page.cohort"] = cohort_name
    st.session_state["viewer_page.case"] = case_id
    st.session_state[viewer_crosshair_key(cohort_name, case_id)] = tuple(int(v) for v in ijk)
    st.switch_page(VIEWER_PAGE)
