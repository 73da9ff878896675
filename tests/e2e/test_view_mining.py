"""View mining in a real browser: a click in the query scan moves the match, and a pair can be mined."""

import pytest

from tests.e2e.conftest import screenshot

pytestmark = pytest.mark.e2e

QUERY_READOUT = ".st-key-mining-query_view-readout"
KEY_READOUT = ".st-key-mining-key_view-readout"
VIEW = ".js-plotly-plot .nsewdrag"
TRIES_IS_A_NUMBER = """() => [...document.querySelectorAll("[data-testid='stMetric']")].some(
    m => m.innerText.includes("Tries") && /^\\d+$/.test(m.querySelector("[data-testid='stMetricValue']").innerText.trim()))"""
CHANGED = "([selector, old]) => { const e = document.querySelector(selector); return e && e.innerText !== old; }"


def test_a_click_moves_the_match_and_mining_counts_tries(app_server, browser_page, sample_cohort_available):
    page = browser_page
    try:
        page.goto(f"{app_server}/view_mining")
        page.wait_for_selector(f"{KEY_READOUT} p", timeout=120_000)
        page.wait_for_function(f"document.querySelectorAll('{VIEW}').length === 6", timeout=60_000)
        key_before = page.locator(KEY_READOUT).inner_text()

        axial = page.locator(VIEW).first
        box = axial.bounding_box()
        axial.click(position={"x": box["width"] * 0.35, "y": box["height"] * 0.5})
        page.wait_for_function(CHANGED, arg=[KEY_READOUT, key_before], timeout=60_000)

        query_before = page.locator(QUERY_READOUT).inner_text()
        page.get_by_role("button", name="Mine a pair").click()
        page.wait_for_function(CHANGED, arg=[QUERY_READOUT, query_before], timeout=60_000)
        # The metrics are drawn after the query viewer in the same run: wait for the count of tries.
        page.wait_for_function(TRIES_IS_A_NUMBER, timeout=60_000)
        screenshot(page, "view_mining_after_mining")
    except BaseException:
        screenshot(page, "view_mining_failure")
        raise
