"""The Embeddings page's pieces: the patch map (PCA at once, UMAP on request), selections on it, their overlays.

A map is keyed by the source's settings key (checkpoint content and settings), the cases' stamps and the method;
its selections and overlays by that token too, so nothing is recomputed on a rerun and nothing stale is reused.

Session-state keys:

- ``embeddings.umap_done``: tokens of the cohorts whose UMAP was asked for (then shown without asking again).
- widgets of the page: ``embeddings.source``, ``embeddings.cohort``, ``embeddings.cases.<cohort>``,
  ``embeddings.colour``, ``embeddings.method``, ``embeddings.view_case``, ``embeddings.rgb``; of this module:
  ``embeddings.map`` (the chart and its selection), ``embeddings.umap``, ``embeddings.csv``.
- the viewer: prefix ``embeddings.viewer`` (see :mod:`alice.ui.state`).
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from alice import paths, viz
from alice.data.cohort import CaseRecord, LoadedCase
from alice.data.io import Volume
from alice.data.labels import read_label_names
from alice.explore import maps
from alice.explore.dense import DenseEmbedding, EmbeddingSettings
from alice.ui.cases import case_stamp

CHART = "embeddings.map"
UMAP_DONE = "embeddings.umap_done"
METHOD_LABELS = {"pca": "PCA (fast)", "umap": "UMAP (on request)"}
COLOURINGS = ("structure", "case", "intensity (HU)")
CASE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                "#17becf")
BACKGROUND_COLOUR = "#9e9e9e"
SELECTION_RGB = (1.0, 0.31, 0.85)  # the viewer's marker magenta
SELECTION_OPACITY = 0.7
RGB_OPACITY = 0.6
PLOTLY_CONFIG = {"displaylogo": False}


def default_source() -> str:
    """Alice when its checkpoint is there, else SAM (which ships)."""
    return "alice" if paths.alice_checkpoint().is_file() else "sam"


def map_token(records: list[CaseRecord], settings: EmbeddingSettings, method: str) -> tuple:
    """Identifies a map: the source's settings key, the cases' stamps and the method."""
    return settings.key(), tuple(case_stamp(r) for r in records), method


def projection(records: list[CaseRecord], found: list[DenseEmbedding], settings: EmbeddingSettings,
               method: str) -> maps.Projection:
    """The cases' patches projected with ``method`` (see :func:`alice.explore.maps.project`), kept across reruns."""
    return _projection(tuple(found), map_token(records, settings, method), maps.MAX_POINTS)


@st.cache_data(max_entries=8, show_spinner="Projecting the patches...")
def _projection(_found: tuple[DenseEmbedding, ...], token: tuple, max_points: int) -> maps.Projection:
    return maps.project(list(_found), method=token[2], max_points=max_points)


def choose_projection(state: MutableMapping, records: list[CaseRecord], found: list[DenseEmbedding],
                      settings: EmbeddingSettings, method: str) -> maps.Projection:
    """The map to show: PCA, or UMAP once asked for with its button (it takes a minute or more); PCA until then."""
    if method == "umap":
        token = map_token(records, settings, "umap")
        done = state.setdefault(UMAP_DONE, set())
        if token in done:
            return projection(records, found, settings, "umap")
        st.button("Compute the UMAP", key="embeddings.umap", type="primary", on_click=done.add, args=(token,))
        st.info("UMAP takes a minute or more (the first after the app starts also compiles for 15-20 s): press "
                "the button. The PCA map is shown meanwhile.")
    return projection(records, found, settings, "pca")


def caption(shown: maps.Projection, source_label: str) -> str:
    """What the map shows: method, source, points, and the sample when there is one."""
    text = f"**{shown.method.upper()}** of {source_label} patch embeddings"
    if shown.subsampled:
        return (f"{text}: showing {len(shown):,} of {shown.n_total:,} patches (a seeded uniform sample; larger maps "
                "are slow to draw and select in the browser).")
    return f"{text}: all {shown.n_total:,} patches."


def label_names(records: list[CaseRecord]) -> dict[str, dict[int, str]]:
    """Case id -> label value -> structure name (empty for a case without names).

    Raises:
        InputError: a label-names file cannot be read.
    """
    return {r.case_id: _names(r.label_names, case_stamp(r)) if r.label_names else {} for r in records}


@st.cache_data(max_entries=64, show_spinner=False)
def _names(path, stamp: tuple) -> dict[int, str]:
    return read_label_names(path)


def map_figure(shown: maps.Projection, names: dict[str, dict[int, str]], colour_by: str) -> go.Figure:
    """The patch map: one WebGL trace per structure or case (a legend entry each), or one trace coloured by HU.

    Every point carries its id (index into the projection) as ``customdata``: a selection's ``point_index``
    counts within its trace.
    """
    structures = maps.structure_names(shown, names)
    hover = np.char.add(np.char.add(shown.case_ids.astype(str), " · "), structures.astype(str))
    ids = np.arange(len(shown))
    x, y = shown.points[:, 0], shown.points[:, 1]
    fig = go.Figure()
    common = {"mode": "markers", "hovertemplate": "%{text}<extra></extra>"}
    if colour_by == "intensity (HU)":
        low, high = np.percentile(shown.hu, [1, 99])
        fig.add_trace(go.Scattergl(x=x, y=y, customdata=ids, text=np.char.add(hover, np.char.mod(" · %.0f HU",
                                                                                                 shown.hu)),
                                   marker={"size": 3, "color": shown.hu, "colorscale": "Viridis", "cmin": low,
                                           "cmax": high, "colorbar": {"title": {"text": "HU"}}},
                                   showlegend=False, **common))
    else:
        groups = structures if colour_by == "structure" else shown.case_ids
        cases = list(np.unique(shown.case_ids))
        values, counts = np.unique(groups, return_counts=True)
        for value in values[np.argsort(-counts, kind="stable")]:  # the largest groups first in the legend
            members = groups == value
            if colour_by == "case":
                colour = CASE_COLOURS[cases.index(value) % len(CASE_COLOURS)]
            elif value == "background":
                colour = BACKGROUND_COLOUR
            else:  # the viewer's colour of the structure's label value
                colour = viz.label_color_hex(int(shown.label[members][0]))
            fig.add_trace(go.Scattergl(x=x[members], y=y[members], customdata=ids[members], text=hover[members],
                                       name=f"{value} ({int(members.sum()):,})", marker={"size": 3, "color": colour},
                                       **common))
    axis = {"showticklabels": False, "showgrid": False, "zeroline": False}
    # Dragging selects a box at once; the top margin keeps the modebar off the legend.
    fig.update_layout(height=560, margin={"l": 0, "r": 0, "t": 36, "b": 0}, dragmode="select",
                      legend={"itemsizing": "constant", "font": {"size": 11}},
                      xaxis={**axis, "title": f"{shown.method.upper()} 1"},
                      yaxis={**axis, "title": f"{shown.method.upper()} 2"})
    return fig


def map_chart(shown: maps.Projection, names: dict[str, dict[int, str]], colour_by: str) -> np.ndarray:
    """Draw the map with box and lasso selection; return the selected point ids (sorted, unique)."""
    event = st.plotly_chart(map_figure(shown, names, colour_by), key=CHART, on_select="rerun",
                            selection_mode=("box", "lasso"), config=PLOTLY_CONFIG, width="stretch")
    return selected_ids(event, len(shown))


def selected_ids(event, n_points: int) -> np.ndarray:
    """The point ids in a chart's selection state, from each point's ``customdata`` (which Streamlit returns as
    the value, a list or a dict ``{'0': value}``); ids outside ``0..n_points-1`` (a stale selection) are dropped."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        return np.zeros(0, dtype=np.int64)
    ids = []
    for point in points:
        value = point.get("customdata")
        if isinstance(value, dict):
            value = value.get("0")
        elif isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            ids.append(int(value))
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    return ids[(ids >= 0) & (ids < n_points)]


def selection(projection: maps.Projection, ids, label_names: dict) -> pd.DataFrame:
    """The selected patches: id, case, voxel, mm, label and structure (``alice.explore.maps.selection_table``)."""
    return maps.selection_table(projection, ids, label_names)


def show_selection(table: pd.DataFrame, file_name: str) -> None:
    """Count, table and CSV of the selected patches.

    The same three elements are drawn with or without a selection: a changed layout above the viewer would make
    the browser rebuild the viewer's charts, and each rebuilt chart takes WebGL contexts, of which Chromium keeps
    16, dropping the oldest (the map's) first.
    """
    cases = table["case"].nunique()
    st.markdown(f"**{len(table):,} patches selected** in {cases} case{'s' if cases != 1 else ''}." if len(table) else
                "**No patch selected**: draw a box or a lasso on the map (the tools are in its top-right bar).")
    st.dataframe(table, hide_index=True, height=240)
    st.download_button("Download the selection (CSV)", table.to_csv(index=False), file_name, "text/csv",
                       key="embeddings.csv", disabled=table.empty)


def viewed_cases(table: pd.DataFrame, case_ids: list[str]) -> list[str]:
    """The cases the viewer offers: those with selected patches, or every case while nothing is selected."""
    return list(dict.fromkeys(table["case"])) or case_ids


def first_selected_ijk(table: pd.DataFrame, case_id: str) -> tuple[int, int, int] | None:
    """The voxel of the case's first selected patch (None: nothing selected there)."""
    rows = table[table["case"] == case_id]
    return None if rows.empty else tuple(int(v) for v in rows[["i", "j", "k"]].iloc[0])


def overlays(records: list[CaseRecord], settings: EmbeddingSettings, shown: maps.Projection, ids: np.ndarray,
             embedding: DenseEmbedding, case: LoadedCase, rgb: bool) -> tuple[viz.RGBOverlay, ...]:
    """The viewer's overlays for one case: the PCA colours when asked for, then the selected patches (if any) on top.

    Args:
        records, settings: the map's cases and source.
        shown: the map.
        ids: selected point ids.
        embedding: the viewed case's dense embedding.
        case: the viewed case.
        rgb: whether to draw the PCA-to-RGB overlay.
    """
    found = []
    stamp = case_stamp(case.record)
    if rgb:
        found.append(_rgb_overlay(embedding, case.image, settings.key(), stamp))
    if ids.size:
        digest = hashlib.blake2b(np.ascontiguousarray(ids).tobytes(), digest_size=16).hexdigest()
        found.append(_selection_overlay(shown, ids, embedding, case.image,
                                        map_token(records, settings, shown.method), stamp, digest))
    return tuple(found)


# float16 halves the memory of an (X, Y, Z, 3) picture (~25 MB for a sample case); slices are blended in float32.
@st.cache_resource(max_entries=4, show_spinner="Colouring the case by its principal components...")
def _rgb_overlay(_embedding: DenseEmbedding, _image: Volume, settings_key: str, case_token: tuple) -> viz.RGBOverlay:
    colours = maps.pca_rgb_volume(_embedding, _image.shape).astype(np.float16)
    return viz.RGBOverlay(Volume(colours, _image.affine), "PCA to RGB: the case's first three principal "
                                                          "components as red, green, blue", RGB_OPACITY)


@st.cache_resource(max_entries=8, show_spinner=False)
def _selection_overlay(_shown: maps.Projection, _ids: np.ndarray, _embedding: DenseEmbedding, _image: Volume,
                       token: tuple, case_token: tuple, digest: str) -> viz.RGBOverlay:
    mask = maps.selection_mask(_shown, _ids, _embedding, _image.shape)
    colours = np.full((*mask.shape, 3), np.nan, dtype=np.float16)
    colours[mask] = SELECTION_RGB
    return viz.RGBOverlay(Volume(colours, _image.affine), "Selected patches (magenta)", SELECTION_OPACITY)
