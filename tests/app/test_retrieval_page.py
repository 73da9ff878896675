"""The Landmark retrieval page through AppTest: a tiny SAM checkpoint on the real sample cohort."""

import re

import pytest
from streamlit.testing.v1 import AppTest

from alice import paths
from alice.data.cohort import sample_cohort

MAIN = str(paths.REPO_ROOT / "app" / "main.py")


@pytest.fixture(scope="module")
def module_workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("retrieval-workspace")


@pytest.fixture
def isolated_workspace(module_workspace, monkeypatch):
    """One workspace for the module: the cohort is embedded and indexed once, as in a real session."""
    monkeypatch.setenv("ALICE_WORKSPACE", str(module_workspace))
    return module_workspace


@pytest.fixture(autouse=True)
def use_tiny_sam_checkpoint(tiny_sam_checkpoint, monkeypatch, sample_cohort_available):
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(tiny_sam_checkpoint))


def open_retrieval(sources=("sam",)) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=300)
    at.run()
    at.switch_page("../pages/retrieval.py")
    at.session_state["retrieval.sources"] = list(sources)
    at.run()
    assert not at.exception, at.exception
    return at


def match_rows(at: AppTest):
    return next(frame.value for frame in at.dataframe if "cycle error (mm)" in frame.value.columns)


def test_a_click_finds_the_point_in_every_other_case_with_a_gallery_and_a_csv():
    at = open_retrieval()
    others = set(sample_cohort().case_ids) - {at.selectbox(key="retrieval.query_case").value}
    before = match_rows(at)
    caption_before = next(c.value for c in at.caption if c.value.startswith("Query point"))
    assert set(before["case"]) == others
    assert before["error to truth (mm)"].notna().sum() >= 6  # the pseudo-subjects and their source have a truth
    assert len(at.get("imgs")) >= 1 or len(at.get("image")) >= len(others)  # the gallery
    # A click 60 mm right of and 80 mm below the top-left corner of the query's axial view.
    at.session_state["retrieval.query_view.chart.axial"] = {"selection": {"points": [{"x": 60.0, "y": 80.0}]}}
    at.run()
    assert not at.exception, at.exception
    after = match_rows(at)
    assert not after[["x (mm)", "y (mm)", "z (mm)"]].equals(before[["x (mm)", "y (mm)", "z (mm)"]])
    caption = next(c.value for c in at.caption if c.value.startswith("Query point"))
    i = int(re.search(r"voxel \((\d+), \d+, \d+\)", caption).group(1))
    assert caption != caption_before and i == 181 - 1 - 30  # 60 mm at 2 mm voxels from the left edge, R on the left


def test_a_missing_alice_checkpoint_is_explained_and_sam_still_answers(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "DEFAULT_ALICE_CHECKPOINT", tmp_path / "missing.pt")
    at = open_retrieval(("alice", "sam"))
    assert any("not available" in e.value and "alice pretrain" in e.value and "alice ship-checkpoint" in e.value
               for e in at.error)
    assert len(match_rows(at)) == len(sample_cohort().case_ids) - 1


def test_a_click_in_the_air_explains_itself():
    at = open_retrieval()
    at.session_state["retrieval.query_view.chart.axial"] = {"selection": {"points": [{"x": 1.0, "y": 1.0}]}}
    at.run()
    assert not at.exception, at.exception
    assert any("air outside the body" in w.value for w in at.warning)
