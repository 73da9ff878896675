"""The Attention (CAFA) page's parts: model source, mined pair, one cached forward pass, and its pictures.

The computation lives in :mod:`alice.pretrain.inspect`; here are the choices, the caches and the figures. Crops are
drawn in voxel units (each crop is ``roi``^3 voxels at native spacing) in the display convention of
:mod:`alice.viz` (letters at the edges); heat maps are the token-level values spread over each token's cell.

Session-state keys: widgets ``attention.model``, ``attention.seed``, ``attention.another_button``,
``attention.view``, ``attention.head``, ``attention.token.x`` / ``.y`` / ``.z`` (the query token's cell in the
encoder grid), ``attention.heat`` (the clickable attention figure), ``attention.positions`` (the toggle that
measures what the tokens encode); ``attention.another`` (the button's request) and ``attention.clicked`` (the last
click applied to the sliders).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from alice import paths, runs, viz
from alice.data.cohort import CaseRecord, Cohort
from alice.mining.views import DEFAULT_THRESHOLD, MiningCase, ViewPair, mine_view_pairs
from alice.pretrain import inspect, positions
from alice.pretrain.inspect import Grid
from alice.ui import anatomy
from alice.ui.cases import case_stamp
from alice.ui.figures import CROSSHAIR_COLOR, LETTER_COLOR, png_data_uri

UNTRAINED = "untrained cpu-tiny (for illustration)"
SEED = "attention.seed"
CHART = "attention.heat"
CLICKED = "attention.clicked"
MASK_RGB = np.array([40, 120, 255], dtype=np.float32)
PLANE_PX = 260
TOKEN_CROPS = 16


def model_sources() -> dict[str, Path | None]:
    """Label -> checkpoint: every pretraining run's last checkpoint, the default checkpoint, the untrained model."""
    sources: dict[str, Path | None] = {}
    for run in runs.list_runs("alice"):
        checkpoint = runs.checkpoint_path(run["path"])
        if checkpoint.is_file():
            state = (run["status"] or {}).get("state", "unknown")
            sources[f"run {run['name']} ({state}, step {(run['status'] or {}).get('step', '?')})"] = checkpoint
    if paths.alice_checkpoint().is_file():
        sources[f"default checkpoint {paths.alice_checkpoint().name}"] = paths.alice_checkpoint()
    sources[UNTRAINED] = None
    return sources


def load_model(checkpoint: Path | None) -> tuple:
    """(model, config, step) for a checkpoint (None: untrained cpu-tiny), shared across reruns.

    Raises:
        InputError: an unreadable checkpoint or one of another kind.
    """
    return _model(checkpoint, _checkpoint_token(checkpoint))


def _checkpoint_token(checkpoint: Path | None) -> tuple | None:
    """What the caches key a checkpoint by: its path and modification time (None: the untrained model)."""
    return None if checkpoint is None else (str(checkpoint), checkpoint.stat().st_mtime_ns)


@st.cache_resource(max_entries=2, show_spinner="Loading the model...")
def _model(_checkpoint: Path | None, token: tuple | None) -> tuple:
    return inspect.load_model(_checkpoint)


def mine_pair(sam: anatomy.Sam, cohort: Cohort, seed: int) -> ViewPair:
    """One pair mined among the cohort's cases as the View mining gallery does: ``sam`` mode when a SAM checkpoint
    is usable, else ``random_cross``.

    Raises:
        InputError: a cohort too small for cross-patient pairs, an unreadable image or checkpoint.
    """
    mode = "sam" if sam.ready else "random_cross"
    return _pair(tuple(cohort.cases), sam, sam.token, tuple(case_stamp(c) for c in cohort.cases), mode, seed)


@st.cache_data(max_entries=16, show_spinner="Mining a view pair...")
def _pair(_cases: tuple[CaseRecord, ...], _sam: anatomy.Sam, token: tuple | None, stamps: tuple, mode: str,
          seed: int) -> ViewPair:
    mining_cases = [MiningCase(r.case_id, anatomy.case_image(r), anatomy.case_embedding(_sam, r) if mode == "sam"
                               else None) for r in _cases]
    return mine_view_pairs(mining_cases, 1, mode, seed, DEFAULT_THRESHOLD)[0]


def run_inspection(model_bundle: tuple, checkpoint: Path | None, sam: anatomy.Sam, cohort: Cohort, pair: ViewPair,
                   seed: int) -> inspect.Inspection:
    """The forward pass of ``pair`` (masks drawn with ``seed``), once per model, pair and seed; with SAM, the
    correspondence term pairs the views' tokens as in training."""
    records = {r.case_id: r for r in cohort.cases}
    return _inspection(model_bundle, records[pair.query_case], records[pair.key_case], sam,
                       _checkpoint_token(checkpoint), sam.token, pair, seed)


@st.cache_data(max_entries=8, show_spinner="Running the pair through the model...")
def _inspection(_bundle: tuple, _query: CaseRecord, _key: CaseRecord, _sam: anatomy.Sam, token: tuple | None,
                sam_token: tuple | None, pair: ViewPair, seed: int) -> inspect.Inspection:
    model, config, _ = _bundle
    query, key = (MiningCase(r.case_id, anatomy.case_image(r), anatomy.case_embedding(_sam, r) if _sam.ready
                             else None) for r in (_query, _key))
    batch = inspect.pair_batch(pair, query, key, config, seed, model.correspondence_shift(),
                               model.correspondence_grids())
    return inspect.inspect_pair(model, batch, config.loss.teacher_temp)


def show_pair_choice(state: MutableMapping) -> int:
    """Seed and "Mine another" (which moves to the next seed); returns the seed."""
    if state.pop("attention.another", False):
        state[SEED] = int(state.get(SEED, 0)) + 1
    seed_column, button_column = st.columns([1, 1])
    seed = seed_column.number_input("Seed (pair and masks)", 0, 2**31 - 1, 0, key=SEED)
    button_column.button("Mine another", key="attention.another_button",
                         on_click=lambda: state.__setitem__("attention.another", True))
    return int(seed)


def show_losses(found: inspect.Inspection, pair: ViewPair) -> None:
    """The pair and the loss terms of this one forward pass."""
    score = "" if np.isnan(pair.score) else f", SAM score {pair.score:.2f}"
    st.caption(f"Pair ({pair.mode}{score}): query `{pair.query_case}` at voxel {pair.query_ijk}, key "
               f"`{pair.key_case}` at voxel {pair.key_ijk}; crops of {found.roi_voxels}³ voxels.")
    for column, (name, value) in zip(st.columns(len(found.losses)), found.losses.items()):
        column.metric(name, f"{value:.4f}")


def show_inputs(found: inspect.Inspection) -> None:
    """Per view: the crop, the student's masked input (mask in blue) and its reconstruction (axial centre plane)."""
    middle = found.roi_voxels // 2
    for view, name in enumerate(inspect.VIEWS):
        crop = _gray(viz.extract_slice(found.crops[view], "axial", middle))
        mask = viz.extract_slice(found.masks[view], "axial", middle)
        masked = crop.astype(np.float32)
        masked[mask] = 0.4 * masked[mask] + 0.6 * MASK_RGB
        recon = _gray(viz.extract_slice(found.recon[view], "axial", middle))
        columns = st.columns(3)
        for column, picture, caption in zip(columns, (crop, masked.astype(np.uint8), recon),
                                            ("teacher input", "student input (masked: blue)",
                                             "student reconstruction")):
            column.image(picture, caption=f"{name} · {caption} · axial", width=PLANE_PX)
    st.caption("All three on the network's [0, 1] scale (black = -125 HU or below, white = 225 HU or above), so an "
               "untrained or young model's reconstruction looks dark.")


def show_token_choice(found: inspect.Inspection) -> tuple[int, int, int | None, tuple[int, int, int]]:
    """Crop, head and query token (sliders over the encoder grid); returns (view, token index, head, cell)."""
    view_column, head_column = st.columns(2)
    view = view_column.radio("Crop", range(2), format_func=lambda v: inspect.VIEWS[v], horizontal=True,
                             key="attention.view")
    heads = 0 if found.attention is None else found.attention.shape[1]
    head = head_column.selectbox("Head", [None, *range(heads)], key="attention.head",
                                 format_func=lambda h: "mean over heads" if h is None else f"head {h}")
    grid = found.enc_grid
    apply_click(st.session_state, grid, found.roi_voxels)
    cell = tuple(column.slider(f"Query token {axis}'", 0, g - 1, g // 2, key=f"attention.token.{axis}")
                 for column, axis, g in zip(st.columns(3), "xyz", grid))
    return view, inspect.token_index(cell, grid), head, cell


def apply_click(state: MutableMapping, grid: Grid, roi_voxels: int) -> None:
    """Move the query-token sliders to the token under a new click on the attention figure (once per click)."""
    points = ((state.get(CHART) or {}).get("selection") or {}).get("points") or []
    if not points or points[0].get("customdata") is None:
        return
    data = points[0]["customdata"]
    ijk = tuple(int(data[str(i)] if isinstance(data, dict) else data[i]) for i in range(3))
    if state.get(CLICKED) == ijk:
        return
    state[CLICKED] = ijk
    for axis, value in zip("xyz", inspect.token_cell(ijk, grid, roi_voxels)):
        state[f"attention.token.{axis}"] = value


def planes_figure(crop: np.ndarray, heat: np.ndarray, centre_ijk, vmin: float, vmax: float, title: str,
                  box: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None,
                  click_stride: int | None = None) -> go.Figure:
    """Axial, coronal and sagittal planes of a crop through ``centre_ijk`` with a heat map laid over them.

    Args:
        crop: (R, R, R) in [0, 1].
        heat: (R, R, R) values.
        centre_ijk: the voxel the planes go through.
        vmin, vmax: the heat map's colour range.
        title: above the figure.
        box: voxel bounds [low, high) of a cell to outline (the query token), or None.
        click_stride: lay a transparent grid of clickable points (one every ``click_stride`` pixels, each carrying
            its crop voxel as customdata) over the planes; None for none.
    """
    figure = make_subplots(rows=1, cols=3, subplot_titles=viz.PLANES, horizontal_spacing=0.03)
    size = crop.shape
    for column, plane in enumerate(viz.PLANES, start=1):
        spec = viz.PLANE_SPECS[plane]
        index = int(centre_ijk[spec.fixed_axis])
        rgb = viz.blend_heat(_gray(viz.extract_slice(crop, plane, index)), viz.extract_slice(heat, plane, index),
                             vmin, vmax, opacity=0.6)
        figure.add_trace(go.Image(source=png_data_uri(rgb), hoverinfo="skip"), row=1, col=column)
        if click_stride:
            rows, cols = np.meshgrid(*(np.arange(0, n, click_stride) for n in viz.slice_shape(size, plane)),
                                     indexing="ij")
            voxels = [viz.pixel_to_ijk(r, c, index, size, plane) for r, c in zip(rows.ravel(), cols.ravel())]
            figure.add_trace(go.Scatter(x=cols.ravel(), y=rows.ravel(), mode="markers", customdata=voxels,
                                        marker={"opacity": 0, "size": 8}, hovertemplate="voxel %{customdata}"
                                        "<extra></extra>", showlegend=False), row=1, col=column)
        if box is not None:
            low, high = box
            rows, cols = viz.slice_shape(size, plane)
            figure.add_shape(type="rect", x0=cols - high[spec.col_axis] - 0.5, x1=cols - low[spec.col_axis] - 0.5,
                             y0=rows - high[spec.row_axis] - 0.5, y1=rows - low[spec.row_axis] - 0.5,
                             line={"color": CROSSHAIR_COLOR, "width": 2}, row=1, col=column)
        for letter, x, y in ((spec.edges["left"], 0.02, 0.5), (spec.edges["right"], 0.98, 0.5)):
            figure.add_annotation(text=letter, x=x, y=y, xref="x domain", yref="y domain", showarrow=False,
                                  font={"color": LETTER_COLOR}, row=1, col=column)
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(title=title, height=PLANE_PX + 60, margin={"l": 0, "r": 0, "t": 60, "b": 0})
    return figure


def show_attention(found: inspect.Inspection, view: int, token: int, head: int | None, cell) -> None:
    """The chosen query token's CAFA attention over the decoder tokens of the same crop, on the crop's voxels."""
    heat = inspect.attention_heatmap(found, view, token, head)
    grid, roi = found.enc_grid, found.roi_voxels
    low = tuple(c * roi // g for c, g in zip(cell, grid))
    high = tuple((c + 1) * roi // g for c, g in zip(cell, grid))
    peak = np.unravel_index(int(np.argmax(heat)), heat.shape)
    # The colour range spans this token's own minimum to maximum: near-uniform attention still shows its shape.
    st.plotly_chart(planes_figure(found.crops[view], heat, inspect.cell_centre_ijk(cell, grid, roi),
                                  float(heat.min()), float(heat.max()), f"CAFA attention of query token {tuple(cell)} (#{token}, "
                                  f"outlined) over the {found.dec_grid} decoder tokens; click to pick another",
                                  box=(low, high), click_stride=max(1, roi // 24)),
                    key=CHART, on_select="rerun", selection_mode=("points",))
    st.caption(f"Colours run from this token's least to its most attended voxels. Peak at crop voxel "
               f"{tuple(int(v) for v in peak)}: {heat.max() * heat.size:.3f}× the uniform share (least: "
               f"{heat.min() * heat.size:.3f}×); the heat map sums to {heat.sum():.3f} over the crop. Query token "
               f"cell: voxels {low} to {high}.")


def show_similarity(found: inspect.Inspection, view: int, cell) -> None:
    """Cosine between the student's and the teacher's tokens that the token loss compares, per position."""
    similarity = inspect.similarity_map(found, view)
    centre = inspect.cell_centre_ijk(cell, found.enc_grid, found.roi_voxels)
    low, high = float(similarity.min()), float(similarity.max())
    st.plotly_chart(planes_figure(found.crops[view], similarity, centre, low, high,
                                  f"Teacher-student token similarity (cosine over {found.similarity_grid} tokens; "
                                  f"colours from {low:.3f} to {high:.3f}); mean {similarity.mean():.3f}"),
                    key="attention.similarity")


def show_token_statistics(model_bundle: tuple, checkpoint: Path | None, cohort: Cohort) -> None:
    """On request (about 10 s on CPU): how much the model's tokens change from crop to crop and how much their place
    in the crop explains, over crops anywhere in the body of the cohort's cases (``alice.pretrain.positions``)."""
    st.markdown("Do the tokens describe the anatomy they see, only where in the crop they sit, or nothing? Over "
                f"{TOKEN_CROPS} crops taken anywhere in the body: the **crop variance**, how much the token at "
                "one place changes from crop to crop (near 0, every crop gives the same token there: such tokens "
                "cannot tell one anatomy from another, and their mean, the cls input, is the same for every crop), "
                "and the **position share**, how much of the tokens' variation their place in the crop alone "
                "explains (near 1, a sliding-window embedding matches places by their position in the window).")
    if not st.toggle("Measure what the tokens encode", key="attention.positions"):
        return
    statistics = _token_statistics(model_bundle, tuple(cohort.cases), _checkpoint_token(checkpoint),
                                   tuple(case_stamp(c) for c in cohort.cases))
    st.dataframe({"tokens": ["encoder (bottleneck)", "decoder (first stage)"],
                  **{f"{network} {measure.replace('_', ' ')}":
                     [round(statistics[network][t][measure], 3) for t in ("encoder", "decoder")]
                     for network in ("teacher", "student") for measure in positions.MEASURES}}, hide_index=True)
    st.caption("Pick the untrained model above for the starting point.")


@st.cache_data(max_entries=8, show_spinner="Running body crops through the model...")
def _token_statistics(_bundle: tuple, _cases: tuple[CaseRecord, ...], token: tuple | None,
                      stamps: tuple) -> dict[str, dict[str, dict[str, float]]]:
    model, config, _ = _bundle
    crops = positions.body_crops({r.case_id: anatomy.case_image(r) for r in _cases}, config, TOKEN_CROPS)
    return positions.token_statistics(model, crops)


def _gray(values: np.ndarray) -> np.ndarray:
    """[0, 1] values -> (H, W, 3) uint8 gray."""
    return viz.gray_to_rgb(np.round(np.clip(values, 0, 1) * 255).astype(np.uint8))
