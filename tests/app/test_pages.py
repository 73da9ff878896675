"""Each page through Streamlit's AppTest: real reruns, widgets and session state, no browser."""

import re

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from alice import paths
from alice.data.cohort import add_user_case, sample_cohort, user_cohort
from tests.conftest import write_nifti

MAIN = str(paths.REPO_ROOT / "app" / "main.py")


def open_page(page: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    at.switch_page(f"../pages/{page}.py")
    at.run()
    assert not at.exception, at.exception
    return at


def readout(at: AppTest) -> str:
    texts = [m.value for m in at.markdown if m.value.startswith("**Crosshair**")]
    assert len(texts) == 1, [m.value for m in at.markdown]
    return texts[0]


def readout_ijk(at: AppTest) -> tuple[int, ...]:
    return tuple(int(v) for v in re.search(r"ijk \((\d+), (\d+), (\d+)\)", readout(at)).groups())


def tiny_ct(tmp_path, name="tiny") -> tuple:
    image = (np.arange(8 * 6 * 5).reshape(8, 6, 5) * 10 - 500).astype(np.int16)
    label = np.zeros(image.shape, np.uint8)
    label[:4] = 1
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    return (write_nifti(tmp_path / f"{name}.nii.gz", image, affine),
            write_nifti(tmp_path / f"{name}_label.nii.gz", label, affine))


def test_home_shows_cohorts_device_and_stages(sample_cohort_available):
    at = open_page("home")
    cases = [set(df.value["case"]) for df in at.dataframe if "case" in df.value]
    assert set(sample_cohort().case_ids) in cases
    assert any("CPU" in m.value or "GPU" in m.value or "torch" in m.value for m in at.markdown)
    stages = [df.value for df in at.dataframe if "stage" in df.value]
    assert stages and {"alice sam train", "alice index", "alice finetune"} <= set(stages[0]["command"])
    assert not at.error


def test_home_survives_a_missing_sample_cohort(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "SAMPLE_MANIFEST", tmp_path / "missing.csv")
    at = open_page("home")
    assert any("sample cohort cannot be read" in e.value for e in at.error)


def test_viewer_draws_three_views_and_a_readout_for_the_first_sample_case(sample_cohort_available):
    at = open_page("viewer")
    first = sample_cohort().cases[0]
    assert at.selectbox(key="viewer_page.case").value == first.case_id
    assert len(at.get("plotly_chart")) == 3
    assert readout_ijk(at) == tuple(n // 2 for n in first.shape)
    assert "HU" in readout(at)
    assert not at.error


def test_a_click_in_a_view_moves_the_crosshair(sample_cohort_available):
    at = open_page("viewer")
    before = readout_ijk(at)
    # A click on the coronal view at 10 mm right and 20 mm down from its top-left pixel (2 mm voxels).
    at.session_state["viewer.chart.coronal"] = {"selection": {"points": [{"x": 10.0, "y": 20.0}]}}
    at.run()
    after = readout_ijk(at)
    shape = sample_cohort().cases[0].shape
    assert after == (shape[0] - 1 - 5, before[1], shape[2] - 1 - 10)
    assert at.slider(key="viewer.slice.sagittal").value == after[0]
    assert at.slider(key="viewer.slice.axial").value == after[2]
    # The same selection seen again (any other rerun) does not move it back.
    at.slider(key="viewer.slice.coronal").set_value(before[1] + 3).run()
    assert readout_ijk(at) == (after[0], before[1] + 3, after[2])


def test_a_slider_moves_the_slice(sample_cohort_available):
    at = open_page("viewer")
    i, j, k = readout_ijk(at)
    at.slider(key="viewer.slice.axial").set_value(k + 7).run()
    assert readout_ijk(at) == (i, j, k + 7)
    assert f"k={k + 7}" in str(at.get("plotly_chart")[0].proto.spec)


def test_window_preset_sets_numbers_and_is_remembered_per_case(sample_cohort_available):
    at = open_page("viewer")
    at.selectbox(key="viewer.preset").set_value("Lung").run()
    assert (at.number_input(key="viewer.width").value, at.number_input(key="viewer.level").value) == (1500, -600)
    at.number_input(key="viewer.level").set_value(-500).run()
    assert at.selectbox(key="viewer.preset").value == "Custom"
    second = sample_cohort().cases[1]
    at.selectbox(key="viewer_page.case").set_value(second.case_id).run()
    assert at.selectbox(key="viewer.preset").value == "Soft tissue / abdomen"
    assert readout_ijk(at) == tuple(n // 2 for n in second.shape)
    at.selectbox(key="viewer_page.case").set_value(sample_cohort().case_ids[0]).run()
    assert (at.number_input(key="viewer.width").value, at.number_input(key="viewer.level").value) == (1500, -500)


def test_viewer_shows_a_broken_case_as_an_error_and_keeps_running(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "SAMPLE_MANIFEST", tmp_path / "missing.csv")
    image, _ = tiny_ct(tmp_path)
    record = add_user_case(image, case_id="broken")
    record.image.write_bytes(b"not a nifti any more")
    at = open_page("viewer")
    assert at.selectbox(key="viewer_page.cohort").value == "user"
    errors = " ".join(e.value for e in at.error)
    assert "sample cohort cannot be read" in errors
    assert "Cannot load case broken" in errors and "broken.nii.gz" in errors


def test_add_case_with_a_bad_file_shows_an_error(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("this is not an image")
    at = open_page("add_case")
    at.text_input(key="add_case.image_path").input(str(bad))
    at.button(key="FormSubmitter:add_case.paths-Add case from paths").click().run()
    assert not at.exception
    assert any("bad.nii.gz" in e.value for e in at.error)
    assert user_cohort().cases == ()


def test_add_case_with_an_unsupported_upload_shows_an_error():
    at = open_page("add_case")
    at.file_uploader(key="add_case.image").set_value(("scan.nii.gz", b"x" * 10, "application/gzip"))
    at.button(key="FormSubmitter:add_case.upload-Add uploaded case").click().run()
    assert not at.exception
    assert any("scan.nii.gz" in e.value for e in at.error)


def test_add_case_from_an_upload_adds_it_and_points_to_the_viewer(tmp_path):
    image, label = tiny_ct(tmp_path)
    at = open_page("add_case")
    at.file_uploader(key="add_case.image").set_value(("tiny.nii.gz", image.read_bytes(), "application/gzip"))
    at.file_uploader(key="add_case.label").set_value(("tiny_label.nii.gz", label.read_bytes(), "application/gzip"))
    at.text_input(key="add_case.upload_id").input("mine")
    at.button(key="FormSubmitter:add_case.upload-Add uploaded case").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "mine" in at.success[0].value
    assert user_cohort().case_ids == ["mine"]
    assert user_cohort().cases[0].label is not None

    at.switch_page("../pages/viewer.py")
    at.run()
    assert at.selectbox(key="viewer_page.cohort").value == "user"
    assert at.selectbox(key="viewer_page.case").value == "mine"
    assert readout_ijk(at) == (4, 3, 2)


def test_add_case_from_a_server_path(tmp_path):
    image, _ = tiny_ct(tmp_path)
    at = open_page("add_case")
    at.text_input(key="add_case.image_path").input(str(image))
    at.button(key="FormSubmitter:add_case.paths-Add case from paths").click().run()
    assert not at.error, [e.value for e in at.error]
    assert user_cohort().case_ids == ["tiny"]


@pytest.mark.parametrize("page", ["home", "viewer", "add_case", "view_mining", "pretraining", "attention"])
def test_every_page_runs_without_a_sample_cohort(page, monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "SAMPLE_MANIFEST", tmp_path / "missing.csv")
    open_page(page)
