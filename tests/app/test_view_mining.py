"""The View mining page through AppTest, with a tiny SAM checkpoint and the real sample cohort."""

import re

import pytest
from streamlit.testing.v1 import AppTest

from alice import paths
from alice.data.cohort import add_user_case, sample_cohort
from alice.data.io import save_volume
from tests.anatomy.conftest import synthetic_ct

MAIN = str(paths.REPO_ROOT / "app" / "main.py")


@pytest.fixture(autouse=True)
def use_tiny_sam_checkpoint(tiny_sam_checkpoint, monkeypatch, sample_cohort_available):
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(tiny_sam_checkpoint))


def open_mining() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    at.switch_page("../pages/view_mining.py")
    at.run()
    assert not at.exception, at.exception
    return at


def readouts(at: AppTest) -> list[tuple[int, ...]]:
    """The crosshair voxel of the query viewer, then of the key viewer."""
    texts = [m.value for m in at.markdown if m.value.startswith("**Crosshair**")]
    return [tuple(int(v) for v in re.search(r"ijk \((\d+), (\d+), (\d+)\)", t).groups()) for t in texts]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_the_page_shows_both_viewers_the_match_and_its_heat_map():
    at = open_mining()
    ids = sample_cohort().case_ids
    assert at.selectbox(key="mining.query_case").value == ids[0]
    assert at.selectbox(key="mining.key_case").value == ids[1]
    assert len(at.get("plotly_chart")) == 6
    assert len(readouts(at)) == 2
    assert re.fullmatch(r"-?\d\.\d{3}", metric(at, "SAM score"))
    assert metric(at, "Tries") == "picked by hand"
    assert any("SAM similarity to the query point" in str(h.proto) for h in at.get("html"))
    assert len(at.get("image")) >= 2 and not at.error  # the two crop pictures, at least


def test_a_click_in_the_query_view_moves_the_match_and_updates_the_score():
    at = open_mining()
    query_before, key_before = readouts(at)
    before = (key_before, metric(at, "SAM score"), metric(at, "Cycle error"))
    # A click on the query's axial view, 40 mm right of and 60 mm below its top-left corner (2 mm voxels).
    at.session_state["mining.query_view.chart.axial"] = {"selection": {"points": [{"x": 40.0, "y": 60.0}]}}
    at.run()
    query_after, key_after = readouts(at)
    assert query_after != query_before
    assert (key_after, metric(at, "SAM score"), metric(at, "Cycle error")) != before


def test_a_point_in_the_air_outside_the_body_has_no_match_and_says_why():
    at = open_mining()
    at.session_state["mining.query_view.chart.axial"] = {"selection": {"points": [{"x": 0.0, "y": 0.0}]}}
    at.run()
    assert not at.exception
    assert any("No match" in w.value and "in air outside the body" in w.value for w in at.warning)
    assert metric(at, "SAM score") == "–" and metric(at, "Cycle error") == "–"


def test_random_point_moves_the_query_point_and_mine_a_pair_counts_its_tries():
    at = open_mining()
    query_before, _ = readouts(at)
    at.button(key="mining.random").click().run()
    assert readouts(at)[0] != query_before
    at.button(key="mining.mine").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert re.fullmatch(r"\d+", metric(at, "Tries")) and 1 <= int(metric(at, "Tries")) <= 100
    # The crosshair may be moved afterwards: the pair is then a hand-picked one.
    at.session_state["mining.query_view.chart.coronal"] = {"selection": {"points": [{"x": 50.0, "y": 40.0}]}}
    at.run()
    assert metric(at, "Tries") == "picked by hand"


def test_switching_modes_shows_random_and_same_volume_pairs():
    at = open_mining()
    at.radio(key="mining.mode").set_value("random_cross").run()
    assert not at.exception
    assert re.fullmatch(r"-?\d\.\d{3}", metric(at, "SAM similarity at the key point"))
    assert at.selectbox(key="mining.key_case").value != at.selectbox(key="mining.query_case").value
    key_point = readouts(at)[1]
    at.run()
    assert readouts(at)[1] == key_point  # a rerun draws the same random key point
    at.button(key="mining.mine").click().run()
    assert metric(at, "Tries") == "1"

    at.radio(key="mining.mode").set_value("same_volume").run()
    assert not at.exception
    query_id = at.selectbox(key="mining.query_case").value
    assert at.selectbox(key="mining.same_case").value == query_id
    assert at.selectbox(key="mining.same_case").disabled
    assert [s.value for s in at.subheader][:2] == [f"Query view: {query_id}", f"Key view: {query_id}"]
    assert "same_volume" in at.dataframe[0].value["mode"].iloc[0]
    assert (at.dataframe[0].value["query_case"] == at.dataframe[0].value["key_case"]).all()


def test_the_gallery_has_the_asked_number_of_pairs_and_a_csv():
    at = open_mining()
    at.slider(key="mining.gallery_count").set_value(3).run()
    table = at.dataframe[0].value
    assert len(table) == 3 and list(table["#"]) == [1, 2, 3]
    assert (table["query_case"] != table["key_case"]).all()
    assert at.get("download_button")[0].label == "Download the pairs (CSV)"


def test_the_landmark_query_has_a_row_per_other_case_and_a_csv():
    at = open_mining()
    tables = [df.value for df in at.dataframe if "cycle error (mm)" in df.value]
    assert len(tables) == 1
    others = set(sample_cohort().case_ids) - {at.selectbox(key="mining.query_case").value}
    assert set(tables[0]["case"]) == others
    # Pseudo-subjects of the query's source have a known truth; two real patients do not.
    assert tables[0].set_index("case")["distance to truth (mm)"].notna().any()
    assert {b.label for b in at.get("download_button")} == {"Download the pairs (CSV)", "Download the matches (CSV)"}


def test_a_missing_checkpoint_is_an_error_and_the_baselines_still_work(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere.pt"
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(missing))
    at = open_mining()
    errors = " ".join(e.value for e in at.error)
    assert str(missing) in errors and "alice sam train" in errors
    assert len(at.get("plotly_chart")) == 6 and metric(at, "SAM score") == "–"
    at.button(key="mining.mine").click().run()
    assert not at.exception and "alice sam train" in " ".join(e.value for e in at.error)
    at.radio(key="mining.mode").set_value("random_cross").run()
    assert not at.exception and metric(at, "SAM similarity at the key point") == "–"
    assert len(at.dataframe[0].value) == 8  # the random_cross gallery needs no SAM


def test_a_broken_checkpoint_is_an_error_naming_the_file(monkeypatch, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(broken))
    at = open_mining()
    assert any(str(broken) in e.value and "alice sam train" in e.value for e in at.error)


def test_a_one_case_cohort_explains_the_cross_modes_and_mines_within_the_case(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "SAMPLE_MANIFEST", tmp_path / "missing.csv")
    add_user_case(save_volume(synthetic_ct(), tmp_path / "only.nii.gz"), case_id="only")
    at = open_mining()
    assert any("has one case" in i.value for i in at.info)
    at.radio(key="mining.mode").set_value("same_volume").run()
    assert not at.exception and at.selectbox(key="mining.same_case").value == "only"
    at.button(key="mining.mine").click().run()
    assert not at.exception and metric(at, "Tries") == "1"
    assert len(at.dataframe[0].value) == 8 and set(at.dataframe[0].value["key_case"]) == {"only"}
