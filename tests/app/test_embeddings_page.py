"""The Embeddings page through AppTest: two sample cases under a tiny SAM checkpoint, selections injected as the
browser sends them."""

import re

import pytest
from streamlit.testing.v1 import AppTest

from alice import paths
from alice.explore import maps

MAIN = str(paths.REPO_ROOT / "app" / "main.py")
CASES = ["lidc0001", "lung1"]  # ~140,000 patches at 6 mm: more than the map shows


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory):
    """One workspace for the module, so each case is SAM-embedded once."""
    return tmp_path_factory.mktemp("embeddings-workspace")


@pytest.fixture(autouse=True)
def tiny_sam_and_no_alice(isolated_workspace, shared_workspace, tiny_sam_checkpoint, sample_cohort_available,
                          monkeypatch):
    monkeypatch.setenv("ALICE_WORKSPACE", str(shared_workspace))
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(tiny_sam_checkpoint))
    monkeypatch.delenv("ALICE_PRETRAINED_CHECKPOINT", raising=False)
    monkeypatch.setattr(paths, "DEFAULT_ALICE_CHECKPOINT", paths.REPO_ROOT / "checkpoints" / "absent.pt")


def open_embeddings(**state) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.run()
    at.switch_page("../pages/embeddings.py")
    at.session_state["embeddings.cases.sample"] = CASES
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    return at


def select(at: AppTest, ids: list[int]) -> None:
    """A box selection of these points, as Streamlit stores it (each point carries its id as customdata)."""
    points = [{"curve_number": 0, "point_number": n, "point_index": n, "x": 0.0, "y": 0.0, "customdata": i}
              for n, i in enumerate(ids)]
    at.session_state["embeddings.map"] = {"selection": {"points": points, "point_indices": list(range(len(ids))),
                                                        "box": [{"x": [0, 1], "y": [0, 1]}], "lasso": []}}
    at.run()
    assert not at.exception, at.exception


def captions(at: AppTest) -> str:
    return " ".join(c.value for c in at.caption)


def crosshair(at: AppTest) -> tuple[int, ...]:
    text = next(m.value for m in at.markdown if m.value.startswith("**Crosshair**"))
    return tuple(int(v) for v in re.search(r"ijk \((\d+), (\d+), (\d+)\)", text).groups())


def test_the_page_maps_two_cases_with_sam_and_says_it_shows_a_sample():
    at = open_embeddings()
    assert at.selectbox(key="embeddings.source").value == "sam"  # Alice's checkpoint is missing
    assert not at.error, [e.value for e in at.error]
    assert re.search(r"PCA.* showing 50,000 of [\d,]+ patches", captions(at))
    assert len(at.get("plotly_chart")) == 4  # the map and the viewer's three views
    assert any("No patch selected" in m.value for m in at.markdown)
    assert at.get("download_button")[0].proto.disabled
    assert at.selectbox(key="embeddings.view_case").options == CASES

    at.radio(key="embeddings.method").set_value("umap").run()
    assert at.button(key="embeddings.umap") and "PCA" in captions(at)  # UMAP waits for its button
    at.radio(key="embeddings.colour").set_value("intensity (HU)").run()
    assert not at.exception


def test_a_selection_becomes_a_table_a_csv_and_highlighted_patches_in_the_viewer():
    at = open_embeddings()
    ids = [3, 17, 4_000, 25_000, 49_999]
    select(at, ids)
    table = at.dataframe[0].value
    assert list(table["id"]) == ids
    assert list(table.columns) == ["id", "case", "row", "i", "j", "k", "x_mm", "y_mm", "z_mm", "label", "structure"]
    assert set(table["case"]) <= set(CASES) and any("5 patches selected" in m.value for m in at.markdown)
    button = at.get("download_button")[0]
    assert button.label == "Download the selection (CSV)" and not button.proto.disabled
    view = at.selectbox(key="embeddings.view_case")
    assert view.options == list(dict.fromkeys(table["case"]))
    first = table[table["case"] == view.value].iloc[0]
    assert crosshair(at) == (first["i"], first["j"], first["k"])
    legends = " ".join(str(h.proto) for h in at.get("html"))
    assert "Selected patches" in legends and "PCA to RGB" not in legends

    at.checkbox(key="embeddings.rgb").check().run()
    assert not at.exception
    assert "PCA to RGB" in " ".join(str(h.proto) for h in at.get("html"))


def test_a_missing_alice_checkpoint_is_explained_with_the_command_that_makes_it():
    at = open_embeddings(**{"embeddings.source": "alice"})
    assert any("alice pretrain" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("plotly_chart")


@pytest.mark.slow
def test_umap_is_computed_on_request_and_then_shown(monkeypatch):
    monkeypatch.setattr(maps, "MAX_POINTS", 1_500)  # a small map: UMAP in seconds (after numba compiles)
    at = open_embeddings(**{"embeddings.method": "umap"})
    assert "PCA" in captions(at) and "showing 1,500 of" in captions(at)
    at.button(key="embeddings.umap").click().run()
    assert not at.exception, at.exception
    assert "UMAP" in captions(at) and not at.get("button")  # shown, and no longer asked for
    select(at, [0, 1, 2])
    assert len(at.dataframe[0].value) == 3
