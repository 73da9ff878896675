"""Viewer state in ``st.session_state``: the keys, the per-case view, and the updates that widgets trigger.

Every function takes the session state as a plain mutable mapping, so the logic runs (and is tested) without a
Streamlit server. All updates happen before the viewer creates its widgets in a run (in widget callbacks or at
the top of the viewer), which is the only time Streamlit allows writing a widget's value.

Keys for a viewer with prefix ``p`` (one viewer per prefix; a page may hold several):

- ``p.cases``: dict case key -> :class:`CaseView` (crosshair and window remembered per case).
- ``p.case``: the case key shown in the last run.
- ``p.requested``: the last crosshair a caller asked for, so it is applied once and clicks still work after it.
- ``p.seen``: dict plane -> the last chart selection seen, so a selection moves the crosshair once.
- widgets: ``p.slice.<plane>`` (sliders), ``p.chart.<plane>`` (plotly charts), ``p.preset``, ``p.width``,
  ``p.level`` (window), ``p.labels`` (overlay toggle), ``p.opacity`` (overlay opacity).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from alice import viz
from alice.ui.figures import click_to_pixel


@dataclass
class CaseView:
    """What the viewer remembers per case: the crosshair voxel and the HU window."""

    ijk: tuple[int, int, int]
    window: viz.Window


@dataclass(frozen=True)
class ViewerKeys:
    """Session-state keys of one viewer instance."""

    prefix: str

    @property
    def cases(self) -> str:
        return f"{self.prefix}.cases"

    @property
    def case(self) -> str:
        return f"{self.prefix}.case"

    @property
    def requested(self) -> str:
        return f"{self.prefix}.requested"

    @property
    def seen(self) -> str:
        return f"{self.prefix}.seen"

    @property
    def preset(self) -> str:
        return f"{self.prefix}.preset"

    @property
    def width(self) -> str:
        return f"{self.prefix}.width"

    @property
    def level(self) -> str:
        return f"{self.prefix}.level"

    @property
    def labels(self) -> str:
        return f"{self.prefix}.labels"

    @property
    def opacity(self) -> str:
        return f"{self.prefix}.opacity"

    @property
    def readout(self) -> str:
        """Key of the readout container (its CSS class is ``st-key-<key>``, for browser tests)."""
        return f"{self.prefix}-readout"

    def slice(self, plane: str) -> str:
        return f"{self.prefix}.slice.{plane}"

    def chart(self, plane: str) -> str:
        return f"{self.prefix}.chart.{plane}"


def clip_ijk(ijk, shape: tuple[int, int, int]) -> tuple[int, int, int]:
    """Nearest voxel inside the grid."""
    return tuple(min(max(round(float(v)), 0), n - 1) for v, n in zip(ijk, shape))


def current_view(state: Mapping, keys: ViewerKeys) -> CaseView:
    """The view of the case shown now."""
    return state[keys.cases][state[keys.case]]


def activate_case(state: MutableMapping, keys: ViewerKeys, case_key: str, shape: tuple[int, int, int],
                  requested_ijk=None) -> CaseView:
    """Make ``case_key`` the shown case and bring the widget values in line with its remembered view.

    A new case starts at the volume centre with the default window. ``requested_ijk`` (from the calling page)
    moves the crosshair when it differs from the last request, so later clicks are not overridden.
    """
    views = state.setdefault(keys.cases, {})
    view = views.get(case_key)
    if view is None:
        view = CaseView(tuple(n // 2 for n in shape), viz.WINDOW_PRESETS[viz.DEFAULT_WINDOW])
        views[case_key] = view
    overwrite = state.get(keys.case) != case_key
    state[keys.case] = case_key
    if overwrite:
        # Selections still held by the charts belong to the previous case: mark them seen, never apply them.
        state[keys.seen] = {plane: _selected_point(state.get(keys.chart(plane))) for plane in viz.PLANES}
    if requested_ijk is not None:
        request = (case_key, clip_ijk(requested_ijk, shape))
        if state.get(keys.requested) != request:
            state[keys.requested] = request
            view.ijk = request[1]
            overwrite = True
    _write_widgets(state, keys, view, overwrite)
    return view


def _write_widgets(state: MutableMapping, keys: ViewerKeys, view: CaseView, overwrite: bool) -> None:
    """Set widget values from the view; without ``overwrite`` only the missing ones.

    Streamlit drops a widget's value when a run does not draw it (e.g. after visiting another page), so missing
    values are refilled from the view on every run.
    """
    values = {keys.slice(p): view.ijk[viz.PLANE_SPECS[p].fixed_axis] for p in viz.PLANES}
    values.update({keys.preset: viz.preset_name(*view.window), keys.width: view.window.width,
                   keys.level: view.window.level})
    for key, value in values.items():
        if overwrite or key not in state:
            state[key] = value


def move_crosshair(state: MutableMapping, keys: ViewerKeys, ijk) -> None:
    """Put the crosshair on voxel ``ijk`` and the three sliders on its slices."""
    view = current_view(state, keys)
    view.ijk = tuple(int(v) for v in ijk)
    for plane in viz.PLANES:
        state[keys.slice(plane)] = view.ijk[viz.PLANE_SPECS[plane].fixed_axis]


def on_slider(state: MutableMapping, keys: ViewerKeys, plane: str) -> None:
    """A slice slider moved: move the crosshair along that plane's axis."""
    view = current_view(state, keys)
    ijk = list(view.ijk)
    ijk[viz.PLANE_SPECS[plane].fixed_axis] = int(state[keys.slice(plane)])
    view.ijk = tuple(ijk)


def on_preset(state: MutableMapping, keys: ViewerKeys) -> None:
    """A window preset was picked: set W/L to its numbers (Custom keeps the current ones)."""
    window = viz.WINDOW_PRESETS.get(state[keys.preset])
    if window is not None:
        state[keys.width], state[keys.level] = window
        current_view(state, keys).window = window


def on_window(state: MutableMapping, keys: ViewerKeys) -> None:
    """W or L was typed: remember it and show which preset (or Custom) it matches."""
    window = viz.Window(state[keys.width], state[keys.level])
    current_view(state, keys).window = window
    state[keys.preset] = viz.preset_name(*window)


def sync_clicks(state: MutableMapping, keys: ViewerKeys, shape: tuple[int, int, int], spacing_mm) -> None:
    """Move the crosshair to a newly clicked point in any view.

    Runs at the top of the viewer, before its widgets exist. A chart's selection stays in the state after a click
    (and resets when its figure changes), so only a selection that differs from the last one seen counts; an
    empty selection (a second click on the same point deselects it) is only recorded.
    """
    seen = state.setdefault(keys.seen, {})
    for plane in viz.PLANES:
        point = _selected_point(state.get(keys.chart(plane)))
        if point == seen.get(plane):
            continue
        seen[plane] = point
        if point is None:
            continue
        index = state[keys.slice(plane)]
        size = viz.slice_shape(shape, plane)
        row, col = click_to_pixel(point[0], point[1], viz.pixel_spacing_mm(spacing_mm, plane), size)
        move_crosshair(state, keys, viz.pixel_to_ijk(row, col, index, shape, plane))


def _selected_point(selection) -> tuple[float, float] | None:
    """(x, y) in mm of the last point in a chart's selection state, or None."""
    try:
        points = selection["selection"]["points"]
    except (KeyError, TypeError):
        return None
    if not points:
        return None
    return float(points[-1]["x"]), float(points[-1]["y"])


def viewer_crosshair_key(cohort_name: str, case_id: str) -> str:
    """Where another page asks the Cohort viewer page to put its crosshair on a case."""
    return f"viewer_page.crosshair.{cohort_name}/{case_id}"
