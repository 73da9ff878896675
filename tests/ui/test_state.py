"""Viewer state logic on a plain dict (no Streamlit server): case switching, clicks, sliders, windows."""

from alice import viz
from alice.ui import state

SHAPE = (20, 16, 12)
SPACING = (2.0, 2.0, 3.0)
KEYS = state.ViewerKeys("v")


def click(ss: dict, plane: str, x_mm: float, y_mm: float) -> None:
    ss[KEYS.chart(plane)] = {"selection": {"points": [{"x": x_mm, "y": y_mm}]}}


def test_a_new_case_starts_centred_with_the_default_window_and_fills_the_widgets():
    ss = {}
    view = state.activate_case(ss, KEYS, "a", SHAPE)
    assert view.ijk == (10, 8, 6)
    assert ss[KEYS.slice("axial")] == 6 and ss[KEYS.slice("sagittal")] == 10
    assert ss[KEYS.preset] == viz.DEFAULT_WINDOW


def test_a_click_moves_the_crosshair_once_and_a_repeat_after_a_reset_counts_again():
    ss = {}
    state.activate_case(ss, KEYS, "a", SHAPE)
    click(ss, "axial", 4.0, 6.0)  # col 2, row 3 of the axial slice k=6
    state.sync_clicks(ss, KEYS, SHAPE, SPACING)
    assert state.current_view(ss, KEYS).ijk == (17, 12, 6)
    assert ss[KEYS.slice("sagittal")] == 17

    ss[KEYS.slice("axial")] = 2
    state.on_slider(ss, KEYS, "axial")
    state.sync_clicks(ss, KEYS, SHAPE, SPACING)  # the old selection is still there: it must not apply again
    assert state.current_view(ss, KEYS).ijk == (17, 12, 2)

    ss[KEYS.chart("axial")] = {"selection": {"points": []}}  # the figure changed, plotly cleared the selection
    state.sync_clicks(ss, KEYS, SHAPE, SPACING)
    click(ss, "axial", 4.0, 6.0)
    state.sync_clicks(ss, KEYS, SHAPE, SPACING)
    assert state.current_view(ss, KEYS).ijk == (17, 12, 2)


def test_switching_cases_remembers_each_and_ignores_stale_selections():
    ss = {}
    state.activate_case(ss, KEYS, "a", SHAPE)
    ss[KEYS.preset] = "Lung"
    state.on_preset(ss, KEYS)
    assert (ss[KEYS.width], ss[KEYS.level]) == (1500, -600)
    click(ss, "coronal", 0.0, 0.0)
    state.activate_case(ss, KEYS, "b", (10, 10, 10))  # the coronal selection belongs to case a
    state.sync_clicks(ss, KEYS, (10, 10, 10), SPACING)
    assert state.current_view(ss, KEYS).ijk == (5, 5, 5)
    assert ss[KEYS.preset] == viz.DEFAULT_WINDOW

    ss[KEYS.width], ss[KEYS.level] = 1500, -500
    state.on_window(ss, KEYS)
    assert ss[KEYS.preset] == viz.CUSTOM_WINDOW
    state.activate_case(ss, KEYS, "a", SHAPE)
    assert (ss[KEYS.width], ss[KEYS.level], ss[KEYS.preset]) == (1500, -600, "Lung")


def test_missing_widget_values_are_refilled_and_a_requested_crosshair_applies_once():
    ss = {}
    state.activate_case(ss, KEYS, "a", SHAPE, requested_ijk=(1, 2, 3))
    assert state.current_view(ss, KEYS).ijk == (1, 2, 3)
    del ss[KEYS.slice("axial")]  # Streamlit drops values of widgets a run did not draw
    ss[KEYS.slice("coronal")] = 9
    state.on_slider(ss, KEYS, "coronal")
    state.activate_case(ss, KEYS, "a", SHAPE, requested_ijk=(1, 2, 3))  # same request: the slider move stays
    assert state.current_view(ss, KEYS).ijk == (1, 9, 3)
    assert ss[KEYS.slice("axial")] == 3
    state.activate_case(ss, KEYS, "a", SHAPE, requested_ijk=(99, -5, 4))  # a new request, clipped to the grid
    assert state.current_view(ss, KEYS).ijk == (19, 0, 4)
