"""Landmark retrieval in a real browser: a click in the query scan brings up the gallery of matches."""

import re
import time

import pytest

from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e

READOUT = ".st-key-retrieval-query_view-readout"
VIEW = ".js-plotly-plot .nsewdrag"
CAPTION = re.compile(r"score -?\d\.\d{3}, cycle")
CHANGED = "([selector, old]) => { const e = document.querySelector(selector); return e && e.innerText !== old; }"


def wait_for_gallery(page, other_than: list[str], timeout_s: float) -> list[str]:
    """The gallery's captions once it shows a match for every other case (8) and differs from ``other_than``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        captions = page.get_by_text(CAPTION).all_inner_texts()
        if len(captions) >= 8 and captions != other_than:
            return captions
        time.sleep(0.5)
    raise TimeoutError(f"no new gallery within {timeout_s} s (last captions: {captions})")


def test_a_click_shows_the_match_in_every_other_case(app_server, browser_page, sample_cohort_available):
    page = browser_page
    try:
        page.goto(f"{app_server}/retrieval")
        page.wait_for_selector(f"{READOUT} p", timeout=240_000)
        before = wait_for_gallery(page, [], timeout_s=240)
        readout_before = page.locator(READOUT).inner_text()

        axial = page.locator(VIEW).first
        box = axial.bounding_box()
        axial.click(position={"x": box["width"] * 0.4, "y": box["height"] * 0.55})
        page.wait_for_function(CHANGED, arg=[READOUT, readout_before], timeout=60_000)
        wait_for_gallery(page, before, timeout_s=120)
        page.get_by_text(CAPTION).first.scroll_into_view_if_needed()
        screenshot(page, "retrieval_after_click")
    except BaseException:
        screenshot(page, "retrieval_failure")
        raise
