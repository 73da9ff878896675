"""The app in a real browser: the viewer page renders, and clicking a voxel moves the crosshair."""

import pytest

from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e

READOUT = ".st-key-viewer-readout"
VIEW = ".js-plotly-plot .nsewdrag"


def test_clicking_a_voxel_moves_the_crosshair(app_server, browser_page, sample_cohort_available):
    page = browser_page
    try:
        page.goto(f"{app_server}/viewer")
        page.wait_for_selector(f"{READOUT} p", timeout=60_000)
        page.wait_for_function(f"document.querySelectorAll('{VIEW}').length === 3", timeout=60_000)
        before = page.locator(READOUT).inner_text()
        assert "ijk" in before and "HU" in before

        axial = page.locator(VIEW).first
        box = axial.bounding_box()
        axial.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.55})
        page.wait_for_function(
            "([selector, old]) => { const e = document.querySelector(selector); return e && e.innerText !== old; }",
            arg=[READOUT, before], timeout=30_000)
        after = page.locator(READOUT).inner_text()
        assert after != before and "ijk" in after
        screenshot(page, "viewer_after_click")
    except BaseException:
        screenshot(page, "viewer_failure")
        raise
