"""Plotly figures for the slice viewer: one windowed slice as a PNG image, a click grid, crosshair and letters.

The slice is sent as a PNG (uint8, windowed on the server) in a ``go.Image`` whose pixels are placed in mm, so
anisotropic voxels keep their physical aspect. Plotly returns nothing for clicks on images, so a transparent
``go.Scattergl`` grid (one point every ``stride`` pixels) lies on top: its points come back as x, y in mm.
Axes are display mm from the top-left pixel centre: x grows to the right, y grows downward.
"""

from __future__ import annotations

import base64
import io
import math
from functools import lru_cache

import numpy as np
import plotly.graph_objects as go
from PIL import Image

from alice.viz import PLANE_SPECS

# At most about this many click points per view: enough for 2-4 voxel precision, light to send and select.
MAX_GRID_POINTS = 12_000
CROSSHAIR_COLOR = "rgba(0, 230, 255, 0.75)"
LETTER_COLOR = "#ffd54a"
MARKER_COLOR = "#ff4fd8"


def png_data_uri(rgb: np.ndarray) -> str:
    """Encode an (H, W, 3) uint8 image as a ``data:image/png;base64`` URI (fast, light compression)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def grid_stride(rows: int, cols: int) -> int:
    """Pixels between click points, so a view carries at most about ``MAX_GRID_POINTS`` points."""
    return max(1, math.ceil(math.sqrt(rows * cols / MAX_GRID_POINTS)))


@lru_cache(maxsize=32)
def _click_grid(rows: int, cols: int, row_mm: float, col_mm: float, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y (mm) of the click points; cached because every rerun draws the same grid for a case."""
    r = np.arange(0, rows, stride, dtype=np.float32)
    c = np.arange(0, cols, stride, dtype=np.float32)
    # Always include the last row/column so the far edges are clickable too.
    r = np.unique(np.append(r, rows - 1))
    c = np.unique(np.append(c, cols - 1))
    cc, rr = np.meshgrid(c * col_mm, r * row_mm)
    return cc.ravel(), rr.ravel()


def click_to_pixel(x_mm: float, y_mm: float, pixel_mm: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    """(row, col) of the pixel under a clicked point (x, y in mm), clipped to the slice."""
    row_mm, col_mm = pixel_mm
    rows, cols = size
    row = min(max(round(y_mm / row_mm), 0), rows - 1)
    col = min(max(round(x_mm / col_mm), 0), cols - 1)
    return int(row), int(col)


def slice_figure(png_uri: str, plane: str, size: tuple[int, int], pixel_mm: tuple[float, float],
                 crosshair_px: tuple[int, int], *, title: str, markers: list[tuple[int, int, str, bool]] = (),
                 height_px: int = 380) -> go.Figure:
    """One plane's view.

    Args:
        png_uri: the rendered slice (see :func:`png_data_uri`).
        plane: "axial", "coronal" or "sagittal" (chooses the edge letters).
        size: (rows, cols) of the slice in pixels.
        pixel_mm: (row height, column width) of a pixel in mm.
        crosshair_px: (row, col) of the crosshair.
        title: text above the view.
        markers: (row, col, text, on_slice) per marker; markers off the slice are drawn hollow.
        height_px: figure height; the width follows the page column and the aspect stays physical.
    """
    rows, cols = size
    row_mm, col_mm = pixel_mm
    x_max, y_max = (cols - 0.5) * col_mm, (rows - 0.5) * row_mm
    x_min, y_min = -0.5 * col_mm, -0.5 * row_mm
    grid_x, grid_y = _click_grid(rows, cols, row_mm, col_mm, grid_stride(rows, cols))

    fig = go.Figure()
    fig.add_trace(go.Image(source=png_uri, x0=0, dx=col_mm, y0=0, dy=row_mm, hoverinfo="skip"))
    # hoverinfo "none" (not "skip"): hover events must fire, since plotly turns a hover into the click point.
    fig.add_trace(go.Scattergl(x=grid_x, y=grid_y, mode="markers", hoverinfo="none", showlegend=False,
                               marker={"size": 6, "opacity": 0}, selected={"marker": {"opacity": 0}},
                               unselected={"marker": {"opacity": 0}}))
    if markers:
        fig.add_trace(go.Scatter(
            x=[c * col_mm for _, c, _, _ in markers], y=[r * row_mm for r, _, _, _ in markers],
            text=[t for _, _, t, _ in markers], mode="markers+text",
            # Labels point inward, so a marker near the right edge keeps its text on the view.
            textposition=["top left" if c > cols / 2 else "top right" for _, c, _, _ in markers],
            textfont={"color": MARKER_COLOR, "size": 12}, hoverinfo="skip", showlegend=False,
            marker={"size": 11, "color": MARKER_COLOR, "line": {"width": 2, "color": MARKER_COLOR},
                    "symbol": ["circle" if on else "circle-open" for _, _, _, on in markers]}))

    row, col = crosshair_px
    line = {"color": CROSSHAIR_COLOR, "width": 1}
    fig.add_shape(type="line", x0=col * col_mm, x1=col * col_mm, y0=y_min, y1=y_max, line=line)
    fig.add_shape(type="line", x0=x_min, x1=x_max, y0=row * row_mm, y1=row * row_mm, line=line)

    edges = PLANE_SPECS[plane].edges
    x_mid, y_mid = (x_min + x_max) / 2, (y_min + y_max) / 2
    letter = {"font": {"color": LETTER_COLOR, "size": 16}, "showarrow": False, "bgcolor": "rgba(0,0,0,0.45)"}
    for text, x, y, xanchor, yanchor in ((edges["left"], x_min, y_mid, "left", "middle"),
                                         (edges["right"], x_max, y_mid, "right", "middle"),
                                         (edges["top"], x_mid, y_min, "center", "top"),
                                         (edges["bottom"], x_mid, y_max, "center", "bottom")):
        fig.add_annotation(text=f"<b>{text}</b>", x=x, y=y, xanchor=xanchor, yanchor=yanchor, **letter)

    fig.update_layout(
        height=height_px, margin={"l": 0, "r": 0, "t": 24, "b": 0}, showlegend=False,
        title={"text": title, "x": 0.0, "xanchor": "left", "y": 1.0, "yanchor": "top", "yref": "container",
               "pad": {"t": 4, "l": 4}, "font": {"color": "#e0e0e0", "size": 13}},
        paper_bgcolor="black", plot_bgcolor="black", hovermode="closest", dragmode="zoom",
        xaxis={"range": [x_min, x_max], "visible": False, "constrain": "domain"},
        # y grows downward (row 0 at the top); equal mm per screen pixel on both axes.
        yaxis={"range": [y_max, y_min], "visible": False, "scaleanchor": "x", "scaleratio": 1,
               "constrain": "domain"},
    )
    return fig
