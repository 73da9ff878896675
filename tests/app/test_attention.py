"""The Attention (CAFA) page through AppTest: an untrained cpu-tiny model, a tiny SAM checkpoint, the sample cohort."""

import pytest
from streamlit.testing.v1 import AppTest

from alice import paths
from alice.ui import attention

MAIN = str(paths.REPO_ROOT / "app" / "main.py")


@pytest.fixture(autouse=True)
def use_tiny_sam_checkpoint(tiny_sam_checkpoint, monkeypatch, sample_cohort_available):
    monkeypatch.setenv("ALICE_SAM_CHECKPOINT", str(tiny_sam_checkpoint))
    monkeypatch.setattr(paths, "DEFAULT_ALICE_CHECKPOINT", paths.REPO_ROOT / "checkpoints" / "absent.pt")


def open_attention() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    at.switch_page("../pages/attention.py")
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def heat_spec(at: AppTest) -> str:
    return next(c.proto.spec for c in at.get("plotly_chart") if "CAFA attention" in c.proto.spec)


def test_the_page_shows_an_untrained_model_clearly_labelled_with_masks_attention_and_similarity():
    at = open_attention()
    assert at.selectbox(key="attention.model").value == attention.UNTRAINED
    assert any("Untrained model" in w.value for w in at.warning)
    assert any("mining mode sam" in c.value for c in at.caption)
    assert len(at.get("imgs")) + len(at.get("image")) >= 6  # crop, masked input, reconstruction per view
    charts = at.get("plotly_chart")
    assert len(charts) == 2
    assert "Teacher-student token similarity" in charts[1].proto.spec
    assert {m.label for m in at.metric} >= {"loss", "loss/patch", "cls_agreement"}
    assert any("sums to 1.000" in c.value for c in at.caption)


def test_choosing_another_query_token_or_head_changes_the_attention_map():
    at = open_attention()
    before = heat_spec(at)
    at.slider(key="attention.token.x").set_value(0).run()
    after_token = heat_spec(at)
    assert after_token != before
    at.selectbox(key="attention.head").select(0).run()
    assert heat_spec(at) != after_token
    assert not at.exception


def test_mine_another_moves_to_the_next_seed():
    at = open_attention()
    caption = next(c.value for c in at.caption if c.value.startswith("Pair ("))
    at.button(key="attention.another_button").click().run()
    assert at.number_input(key="attention.seed").value == 1
    assert next(c.value for c in at.caption if c.value.startswith("Pair (")) != caption


def test_a_click_on_the_attention_figure_picks_the_query_token_under_it():
    at = open_attention()
    before = heat_spec(at)
    at.session_state["attention.heat"] = {"selection": {"points": [{"customdata": {"0": 0, "1": 0, "2": 47}}]}}
    at.run()
    assert not at.exception, at.exception
    grid_z = at.slider(key="attention.token.z").max
    assert [at.slider(key=f"attention.token.{a}").value for a in "xyz"] == [0, 0, grid_z]
    assert heat_spec(at) != before
    at.slider(key="attention.token.x").set_value(1).run()  # a slider still moves after the click
    assert at.slider(key="attention.token.x").value == 1


def test_the_toggle_measures_what_the_tokens_encode():
    at = open_attention()
    assert not at.dataframe  # nothing measured until asked
    at.toggle(key="attention.positions").set_value(True).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["tokens"]) == ["encoder (bottleneck)", "decoder (first stage)"]
    for network in ("teacher", "student"):
        assert table[f"{network} position share"].between(0.0, 1.0).all()
        assert (table[f"{network} crop variance"] > 0).all()  # untrained tokens differ from crop to crop
    # The untrained model on this page: teacher and student start as one network.
    for measure in ("position share", "crop variance"):
        assert list(table[f"teacher {measure}"]) == list(table[f"student {measure}"])
