"""Display helpers for CT volumes (numpy only): HU windows, plane slices, label colours and overlays.

Display convention (one per plane, the radiological habit): every in-plane axis is shown with its positive
direction (patient Right, Anterior, Superior) toward the image's left or top.

- axial (fixed k): patient's Right on the image's LEFT, anterior at the top.
- coronal (fixed j): patient's Right on the image's LEFT, superior at the top.
- sagittal (fixed i): anterior on the image's LEFT, superior at the top.

Volumes are in canonical RAS+ (see ``alice.data.io``): axis 0 toward R, 1 toward A, 2 toward S. A displayed slice
is a 2D array indexed (row, col), row 0 at the top, col 0 at the left.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np

from alice.data.io import AIR_HU, Volume

PLANES = ("axial", "coronal", "sagittal")


class Window(NamedTuple):
    """A CT display window in Hounsfield units."""

    width: float
    level: float


# W/L as in OHIF; other tools differ (Slicer's abdomen is 350/40), so the numbers are always shown.
WINDOW_PRESETS: dict[str, Window] = {
    "Soft tissue / abdomen": Window(400, 40),
    "Lung": Window(1500, -600),
    "Bone": Window(2500, 480),
    "Liver": Window(150, 90),
    "Brain": Window(80, 40),
    "Mediastinum": Window(500, 50),
}
CUSTOM_WINDOW = "Custom"
DEFAULT_WINDOW = "Soft tissue / abdomen"
# What Alice's network sees: intensities clipped to [-125, 225] HU, then scaled to [0, 1].
ALICE_WINDOW = Window(350, 50)
# Alice's crop edge in voxels at native spacing (the cpu-tiny preset; the paper's GPU preset uses 64).
ALICE_CROP_VOXELS = 48


@dataclass(frozen=True)
class PlaneSpec:
    """How one plane is cut from an RAS+ array and how it is shown.

    Attributes:
        fixed_axis: the array axis held constant (the slice index runs along it).
        row_axis: the array axis that runs down the displayed rows (reversed: its positive end is at the top).
        col_axis: the array axis that runs across the displayed columns (reversed: its positive end is at the left).
        edges: orientation letter at each image edge: top, bottom, left, right.
    """

    fixed_axis: int
    row_axis: int
    col_axis: int
    edges: dict[str, str]


PLANE_SPECS: dict[str, PlaneSpec] = {
    "axial": PlaneSpec(2, 1, 0, {"top": "A", "bottom": "P", "left": "R", "right": "L"}),
    "coronal": PlaneSpec(1, 2, 0, {"top": "S", "bottom": "I", "left": "R", "right": "L"}),
    "sagittal": PlaneSpec(0, 2, 1, {"top": "S", "bottom": "I", "left": "A", "right": "P"}),
}


def window_to_uint8(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU to 0..255 grey: ``level - width/2`` -> 0 and ``level + width/2`` -> 255, clipped outside.

    Raises:
        ValueError: ``width`` is not positive.
    """
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - np.float32(low)) * np.float32(255.0 / width)
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def preset_name(width: float, level: float) -> str:
    """The preset whose W/L match exactly, else ``CUSTOM_WINDOW``."""
    for name, window in WINDOW_PRESETS.items():
        if window == (width, level):
            return name
    return CUSTOM_WINDOW


def slice_shape(shape: tuple[int, int, int], plane: str) -> tuple[int, int]:
    """(rows, cols) of a displayed slice of a volume of ``shape``."""
    spec = PLANE_SPECS[plane]
    return shape[spec.row_axis], shape[spec.col_axis]


def extract_slice(array: np.ndarray, plane: str, index: int) -> np.ndarray:
    """The displayed 2D slice (rows, cols) at ``index`` along the plane's fixed axis, in the display convention.

    Trailing axes beyond the first three (e.g. RGB channels) are kept. Returns a view of ``array`` (no copy).
    """
    spec = PLANE_SPECS[plane]
    section = np.take(array, index, axis=spec.fixed_axis)
    # np.take keeps the two remaining axes in ascending order; put the row axis first.
    if spec.col_axis < spec.row_axis:
        section = section.swapaxes(0, 1)
    return section[::-1, ::-1]


def crop_cube(array: np.ndarray, center_ijk, size_voxels: int = ALICE_CROP_VOXELS,
              fill: float = AIR_HU) -> np.ndarray:
    """A cube of ``size_voxels`` per side cut from ``array``, voxel ``size_voxels // 2`` on ``center_ijk``.

    Voxels beyond the array are ``fill``: air by default, which Alice's window clips to the same 0 as its zero
    padding of the scaled crop. Returns float32 (size, size, size).

    Raises:
        ValueError: ``size_voxels`` is not positive.
    """
    if size_voxels < 1:
        raise ValueError(f"crop size must be positive, got {size_voxels}")
    out = np.full((size_voxels,) * 3, fill, dtype=np.float32)
    start = np.rint(np.asarray(center_ijk, dtype=np.float64)).astype(int) - size_voxels // 2
    source, target = [], []
    for begin, n in zip(start, array.shape):
        low, high = max(begin, 0), min(begin + size_voxels, n)
        if low >= high:  # the cube lies wholly outside the array
            return out
        source.append(slice(low, high))
        target.append(slice(low - begin, high - begin))
    out[tuple(target)] = array[tuple(source)]
    return out


def crop_planes(array: np.ndarray, center_ijk, size_voxels: int = ALICE_CROP_VOXELS,
                fill: float = AIR_HU) -> dict[str, np.ndarray]:
    """The axial, coronal and sagittal slices through the centre of a cube crop (see :func:`crop_cube`).

    Returns:
        Plane name -> (size, size) slice in the display convention; the crop centre shows at
        ``ijk_to_pixel((size // 2,) * 3, (size,) * 3, plane)``.
    """
    cube = crop_cube(array, center_ijk, size_voxels, fill)
    middle = size_voxels // 2
    return {plane: extract_slice(cube, plane, middle) for plane in PLANES}


def pixel_spacing_mm(spacing_mm, plane: str) -> tuple[float, float]:
    """(row height, column width) of one displayed pixel, in mm."""
    spec = PLANE_SPECS[plane]
    return float(spacing_mm[spec.row_axis]), float(spacing_mm[spec.col_axis])


def extent_mm(shape: tuple[int, int, int], spacing_mm, plane: str) -> tuple[float, float]:
    """(width, height) of a displayed slice in mm, so anisotropic voxels keep their physical aspect."""
    rows, cols = slice_shape(shape, plane)
    row_mm, col_mm = pixel_spacing_mm(spacing_mm, plane)
    return cols * col_mm, rows * row_mm


def ijk_to_pixel(ijk, shape: tuple[int, int, int], plane: str) -> tuple[int, int]:
    """Where voxel ``ijk`` shows in ``plane``'s slice: (row, col)."""
    spec = PLANE_SPECS[plane]
    rows, cols = slice_shape(shape, plane)
    return rows - 1 - int(ijk[spec.row_axis]), cols - 1 - int(ijk[spec.col_axis])


def pixel_to_ijk(row: int, col: int, index: int, shape: tuple[int, int, int], plane: str) -> tuple[int, int, int]:
    """The voxel shown at (row, col) of ``plane``'s slice number ``index``."""
    spec = PLANE_SPECS[plane]
    rows, cols = slice_shape(shape, plane)
    ijk = [0, 0, 0]
    ijk[spec.fixed_axis] = int(index)
    ijk[spec.row_axis] = rows - 1 - int(row)
    ijk[spec.col_axis] = cols - 1 - int(col)
    return ijk[0], ijk[1], ijk[2]


def _label_color_table(n: int = 256) -> np.ndarray:
    """Distinct colours by golden-ratio hue steps, alternating saturation/value bands; entry 0 is black."""
    table = np.zeros((n, 3), dtype=np.uint8)
    for value in range(1, n):
        hue = (value * 0.618033988749895) % 1.0
        saturation = (0.95, 0.65, 0.8)[value % 3]
        brightness = (1.0, 0.8)[(value // 3) % 2]
        table[value] = np.round(np.array(colorsys.hsv_to_rgb(hue, saturation, brightness)) * 255)
    return table


LABEL_COLORS = _label_color_table()
"""(256, 3) uint8 RGB per label value; value 0 (background) is never drawn."""


# Trubetskoy's "20 simple, distinct colours" without the greys, black and white, which vanish on CT.
_DISTINCT = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
             (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
             (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
             (0, 0, 128)]
CLASS_COLORS = LABEL_COLORS.copy()
CLASS_COLORS[1:len(_DISTINCT) + 1] = _DISTINCT
"""(256, 3) uint8 RGB for the few classes of a segmentation label set: values 1..19 far apart (``LABEL_COLORS``
repeats near hues every 8 values, too close when 9 organs show at once), then ``LABEL_COLORS``."""


def label_color_index(values: np.ndarray) -> np.ndarray:
    """Row of ``LABEL_COLORS`` for each label value: values above 255 wrap onto 1..255; 0 stays 0."""
    values = np.asarray(values).astype(np.int64, copy=False)
    return np.where(values > 0, (values - 1) % 255 + 1, 0)


def label_color_hex(value: int) -> str:
    """``#rrggbb`` of a label value, for legends."""
    r, g, b = LABEL_COLORS[int(label_color_index(np.array(value)))]
    return f"#{r:02x}{g:02x}{b:02x}"


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3) uint8."""
    return np.repeat(gray[..., None], 3, axis=-1)


def blend_labels(rgb: np.ndarray, labels: np.ndarray, opacity: float, colours: np.ndarray | None = None
                 ) -> np.ndarray:
    """Alpha-blend label colours onto an RGB slice; background (0) stays unchanged.

    Args:
        rgb: (H, W, 3) uint8 slice.
        labels: (H, W) integer label slice.
        opacity: 0 (invisible) .. 1 (opaque).
        colours: (N, 3) uint8 RGB per label value, N above the largest value (default: ``LABEL_COLORS``).
    """
    out = rgb.copy()
    mask = labels > 0
    if opacity <= 0 or not mask.any():
        return out
    table = LABEL_COLORS if colours is None else colours
    values = labels[mask]
    colors = table[label_color_index(values) if colours is None else values].astype(np.float32)
    out[mask] = np.round((1 - opacity) * rgb[mask].astype(np.float32) + opacity * colors).astype(np.uint8)
    return out


def heat_colors(fraction: np.ndarray) -> np.ndarray:
    """A black-red-yellow-white heat map: values in 0..1 -> (..., 3) uint8."""
    f = np.clip(np.asarray(fraction, dtype=np.float32), 0, 1)
    rgb = np.stack([np.clip(3 * f, 0, 1), np.clip(3 * f - 1, 0, 1), np.clip(3 * f - 2, 0, 1)], axis=-1)
    return np.round(rgb * 255).astype(np.uint8)


def blend_heat(rgb: np.ndarray, values: np.ndarray, vmin: float, vmax: float, opacity: float,
               threshold: float | None = None) -> np.ndarray:
    """Alpha-blend a scalar map (e.g. a similarity heat map) onto an RGB slice.

    Args:
        rgb: (H, W, 3) uint8 slice.
        values: (H, W) scalars; NaN and values below ``threshold`` are not drawn.
        vmin, vmax: values mapped to the cold and hot ends of the colour map.
        opacity: 0 .. 1.
        threshold: draw only values >= threshold (None: draw every finite value).
    """
    values = np.asarray(values, dtype=np.float32)
    mask = np.isfinite(values)
    if threshold is not None:
        mask &= values >= threshold
    out = rgb.copy()
    if opacity <= 0 or not mask.any():
        return out
    span = max(float(vmax) - float(vmin), 1e-12)
    colors = heat_colors((values[mask] - vmin) / span).astype(np.float32)
    out[mask] = np.round((1 - opacity) * rgb[mask].astype(np.float32) + opacity * colors).astype(np.uint8)
    return out


def blend_rgb(rgb: np.ndarray, colours: np.ndarray, opacity: float) -> np.ndarray:
    """Alpha-blend a colour picture onto an RGB slice.

    Args:
        rgb: (H, W, 3) uint8 slice.
        colours: (H, W, 3) floats in 0..1; pixels with any NaN channel are not drawn.
        opacity: 0 .. 1.
    """
    colours = np.asarray(colours, dtype=np.float32)
    mask = np.isfinite(colours).all(axis=-1)
    out = rgb.copy()
    if opacity <= 0 or not mask.any():
        return out
    painted = np.clip(colours[mask], 0, 1) * 255
    out[mask] = np.round((1 - opacity) * rgb[mask].astype(np.float32) + opacity * painted).astype(np.uint8)
    return out


def contour_mask(labels: np.ndarray) -> np.ndarray:
    """The boundary pixels of each labelled region of a 2D slice.

    A pixel is on a boundary when it is labelled (non-zero) and one of its four in-plane neighbours holds another
    value; outside the slice counts as background, so a region touching the edge is closed there.

    Args:
        labels: (H, W) integer labels.

    Returns:
        (H, W) bool.
    """
    padded = np.pad(labels, 1)
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return differs & (centre != 0)


# Values of an error map (see ``error_map``) and their colours: two contrasting hues, plus one for their overlap.
FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_STRUCTURE = 1, 2, 3
ERROR_NAMES = {FALSE_POSITIVE: "false positive (predicted, not in the truth)",
               FALSE_NEGATIVE: "false negative (in the truth, missed)",
               WRONG_STRUCTURE: "wrong structure (one shown structure predicted as another)"}
ERROR_COLORS = np.zeros((256, 3), dtype=np.uint8)
ERROR_COLORS[[FALSE_POSITIVE, FALSE_NEGATIVE, WRONG_STRUCTURE]] = [(255, 60, 30), (30, 144, 255), (255, 215, 0)]


def error_map(pred: np.ndarray, truth: np.ndarray, classes) -> np.ndarray:
    """Where a prediction is wrong about the given classes, as ``FALSE_POSITIVE`` / ``FALSE_NEGATIVE`` values.

    A voxel predicted as one of ``classes`` that the truth gives another value is a false positive; a voxel of
    one of ``classes`` in the truth predicted as another value is a false negative; a voxel that is both (one of
    the classes predicted as another of them) is ``WRONG_STRUCTURE``. Everything else is 0.

    Args:
        pred, truth: class-index maps of the same shape.
        classes: the class values looked at.

    Returns:
        uint8 map of the same shape.
    """
    classes = np.asarray(list(classes), dtype=np.int64)
    wrong = pred != truth
    false_positive = wrong & np.isin(pred, classes)
    false_negative = wrong & np.isin(truth, classes)
    out = np.zeros(pred.shape, dtype=np.uint8)
    out[false_positive] = FALSE_POSITIVE
    out[false_negative] = FALSE_NEGATIVE
    out[false_positive & false_negative] = WRONG_STRUCTURE
    return out


def slice_label_values(label: np.ndarray, plane: str, index: int) -> tuple[int, ...]:
    """Label values (without 0) present in one slice."""
    values = np.unique(np.take(label, index, axis=PLANE_SPECS[plane].fixed_axis))
    return tuple(int(v) for v in values if v != 0)


def visible_labels(label: np.ndarray, ijk) -> list[int]:
    """Label values (without 0) present in the axial, coronal and sagittal slices through voxel ``ijk``."""
    found: set[int] = set()
    for plane in PLANES:
        found.update(slice_label_values(label, plane, int(ijk[PLANE_SPECS[plane].fixed_axis])))
    return sorted(found)


@dataclass(frozen=True, eq=False)
class HeatOverlay:
    """A scalar map on the image's grid (e.g. a similarity heat map) drawn over the slices.

    Attributes:
        volume: values on the same grid as the image (same shape and affine).
        name: shown in the legend.
        opacity: 0 .. 1.
        vmin, vmax: values at the cold and hot ends (None: the volume's finite min and max).
        threshold: draw only values >= threshold (None: every finite value).
    """

    volume: Volume
    name: str
    opacity: float = 0.5
    vmin: float | None = None
    vmax: float | None = None
    threshold: float | None = None

    @cached_property
    def value_range(self) -> tuple[float, float]:
        """(vmin, vmax) with None replaced by the volume's finite extremes (computed once)."""
        finite = self.volume.array[np.isfinite(self.volume.array)]
        low = self.vmin if self.vmin is not None else float(finite.min()) if finite.size else 0.0
        high = self.vmax if self.vmax is not None else float(finite.max()) if finite.size else 1.0
        return low, high


@dataclass(frozen=True, eq=False)
class RGBOverlay:
    """Colours on the image's grid drawn over the slices (e.g. an embedding's principal components as RGB).

    Attributes:
        volume: (X, Y, Z, 3) colours in 0..1 on the image's grid (same affine); NaN where nothing is drawn.
        name: shown in the legend.
        opacity: 0 .. 1.
    """

    volume: Volume
    name: str
    opacity: float = 0.5


@dataclass(frozen=True, eq=False)
class LabelOverlay:
    """A label map drawn over the slices with its own colours, filled or as in-plane contours (e.g. a prediction).

    Contours are found in each displayed slice (``contour_mask``), so every view shows the outline in its own plane.

    Attributes:
        volume: integer labels (at most 255) on the image's grid; 0 is never drawn.
        name: shown in the legend.
        names: value -> name of the values the legend lists.
        opacity: 0 .. 1.
        shown: the values drawn (None: every non-zero value).
        contour: draw only each region's boundary.
        colours: (256, 3) uint8 RGB per value (None: ``LABEL_COLORS``, as the label map of the viewer).
    """

    volume: Volume
    name: str
    names: dict[int, str]
    opacity: float = 0.5
    shown: tuple[int, ...] | None = None
    contour: bool = False
    colours: np.ndarray | None = None

    def color_hex(self, value: int) -> str:
        """``#rrggbb`` of one value, for legends."""
        if self.colours is None:
            return label_color_hex(value)
        r, g, b = self.colours[int(value)]
        return f"#{r:02x}{g:02x}{b:02x}"

    def draw(self, rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Blend this overlay's slice ``labels`` (H, W) onto the RGB slice ``rgb`` (H, W, 3) uint8."""
        if self.shown is not None:
            labels = np.where(np.isin(labels, self.shown), labels, 0)
        if self.contour:
            labels = np.where(contour_mask(labels), labels, 0)
        return blend_labels(rgb, labels, self.opacity, self.colours)


@dataclass(frozen=True)
class Marker:
    """A point to show on the views, in world RAS+ mm (points travel in mm, never as voxel indices)."""

    xyz_mm: tuple[float, float, float]
    text: str = ""


def compose_slice(image: np.ndarray, plane: str, index: int, window: Window, label: np.ndarray | None = None,
                  label_opacity: float = 0.0,
                  overlays: tuple[tuple[np.ndarray, HeatOverlay | RGBOverlay | LabelOverlay], ...] = ()) -> np.ndarray:
    """The RGB picture of one slice: windowed grey, then label colours, then the overlays in order.

    Args:
        image: (X, Y, Z) HU volume array.
        plane, index: which slice.
        window: HU window.
        label: (X, Y, Z) label array on the same grid, or None.
        label_opacity: 0 hides the labels.
        overlays: (values array, overlay settings) pairs; the arrays share the image's grid (an RGB overlay's has
            a trailing axis of 3).

    Returns:
        (rows, cols, 3) uint8.
    """
    rgb = gray_to_rgb(window_to_uint8(extract_slice(image, plane, index), window.width, window.level))
    if label is not None and label_opacity > 0:
        rgb = blend_labels(rgb, extract_slice(label, plane, index), label_opacity)
    for values, overlay in overlays:
        section = extract_slice(values, plane, index)
        if isinstance(overlay, RGBOverlay):
            rgb = blend_rgb(rgb, section, overlay.opacity)
        elif isinstance(overlay, LabelOverlay):
            rgb = overlay.draw(rgb, section)
        else:
            rgb = blend_heat(rgb, section, *overlay.value_range, overlay.opacity, overlay.threshold)
    return rgb


def markers_in_plane(markers, image: Volume, plane: str, index: int) -> list[tuple[int, int, str, bool]]:
    """Where each marker shows in a view: (row, col, text, on_slice); markers outside the grid are left out.

    ``on_slice`` is True when the marker's nearest voxel lies in slice ``index``.
    """
    fixed_axis = PLANE_SPECS[plane].fixed_axis
    placed = []
    for marker in markers:
        ijk = np.rint(image.xyz_to_ijk(marker.xyz_mm)).astype(int)
        if not image.contains_ijk(ijk):
            continue
        row, col = ijk_to_pixel(ijk, image.shape, plane)
        placed.append((row, col, marker.text, int(ijk[fixed_axis]) == int(index)))
    return placed


@dataclass(frozen=True)
class VoxelReadout:
    """What the crosshair points at."""

    ijk: tuple[int, int, int]
    xyz_mm: tuple[float, float, float]
    value: float
    label: int | None
    structure: str


def read_voxel(image: Volume, ijk, label: Volume | None = None, label_names: dict[int, str] | None = None
               ) -> VoxelReadout:
    """Voxel index, world RAS+ mm, image value, label value and structure name at ``ijk``."""
    ijk = tuple(int(v) for v in ijk)
    xyz = tuple(float(v) for v in image.ijk_to_xyz(ijk))
    value = float(image.array[ijk])
    label_value = int(label.array[ijk]) if label is not None else None
    structure = ""
    if label_value:
        structure = (label_names or {}).get(label_value, f"label {label_value}")
    return VoxelReadout(ijk, xyz, value, label_value, structure)
