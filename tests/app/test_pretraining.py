"""The Pretraining page through AppTest: start a real background job, list runs, curves, stop, compare."""

import os
import shutil

import pytest
import torch
from streamlit.testing.v1 import AppTest

from alice import paths, runs
from alice.errors import InputError
from alice.pretrain.config import LossConfig
from alice.pretrain.train import pretrain
from alice.ui import runs as run_panels
from tests.app.jobs import wait_until_done
from tests.pretrain.conftest import tiny_pretrain_config, write_cohort

MAIN = str(paths.REPO_ROOT / "app" / "main.py")


@pytest.fixture(scope="module")
def made_runs(tmp_path_factory):
    """Two finished 2-step runs of the tiny model (CAFA on, CAFA off), made in this process."""
    root = tmp_path_factory.mktemp("made")
    manifest = write_cohort(root / "cohort")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, cafa in (("20260101-000000-cafa", True), ("20260101-000100-nocafa", False)):
            loss = LossConfig(teacher_temp_warmup_steps=2, cafa=cafa)
            pretrain(tiny_pretrain_config(manifest, steps=2, loss=loss), root / "runs" / name)
    finally:
        torch.set_num_threads(threads)
    return root / "runs"


@pytest.fixture
def workspace_runs(made_runs):
    """The two runs copied into this test's workspace."""
    target = paths.runs_dir("alice")
    shutil.copytree(made_runs, target)
    return sorted(target.iterdir())


def open_pretraining() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    at.switch_page("../pages/pretraining.py")
    at.run()
    assert not at.exception, at.exception
    return at


def test_the_page_renders_without_runs():
    at = open_pretraining()
    assert any("No pretraining runs yet" in i.value for i in at.info)
    assert at.button(key="pretrain.start")


def test_runs_are_listed_with_their_curves_and_two_are_compared(workspace_runs):
    at = open_pretraining()
    table = at.dataframe[0].value
    assert list(table["run"]) == [p.name for p in reversed(workspace_runs)]
    assert set(table["state"]) == {"finished"} and set(table["step"]) == {2}
    assert list(table["loss.cafa"]) == [False, True]
    assert table["loss/patch"].notna().all()
    for measure in ("position_share/student", "crop_variance/student"):  # measured at the runs' last checkpoint
        assert table[measure].between(0.0, 1.0).all()
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # the comparison, then the followed run's losses and schedules
    compared = charts[0].proto.spec
    assert all(p.name in compared for p in workspace_runs)
    assert "position_share\\u002fstudent" in compared and "crop_variance\\u002fstudent" in compared  # "/" escaped
    assert '"range":[0,1.05]' in compared.replace(" ", "")  # a share's whole range
    assert at.multiselect(key="pretrain.compare").value == [p.name for p in reversed(workspace_runs)]


def test_stop_writes_the_stop_file_of_a_running_job(workspace_runs):
    run_dir = workspace_runs[0]
    runs.write_status(run_dir, "running", 1, 2, "step 1/2", eta_seconds=90, pid=os.getpid())
    at = open_pretraining()
    at.selectbox(key="pretrain.follow").select(run_dir.name).run()
    assert "about 1.5 min left" in at.get("progress")[0].proto.text
    at.button(key="pretrain.stop").click().run()
    assert runs.stop_requested(run_dir)
    assert any("Stop requested" in i.value for i in at.info)


def test_a_start_that_fails_shows_an_error(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no room")

    monkeypatch.setattr(runs, "launch", refuse)
    at = open_pretraining()
    at.button(key="pretrain.start").click().run()
    assert any("Cannot start" in e.value and "no room" in e.value for e in at.error)


def test_ablation_switches_become_config_overrides_and_bad_ones_are_refused():
    assert run_panels.ablation_overrides("same_volume", False, False) == [
        "views.mode=same_volume", "loss.cafa=false", "loss.rec_weight=0"]
    assert run_panels.ablation_overrides("sam", True, True, correspondence=False) == [
        "views.mode=sam", "loss.correspondence_weight=0"]
    argv = run_panels.pretrain_argv("cpu-tiny", 3, ["loss.cafa=false"])
    assert argv == ["pretrain", "--preset", "cpu-tiny", "--steps", "3", "--set", "loss.cafa=false"]
    with pytest.raises(InputError, match="loss.cafa"):
        run_panels.pretrain_argv("cpu-tiny", 3, ["loss.cafa=maybe"])


@pytest.mark.slow
def test_start_launches_a_background_job_that_the_page_follows(sample_cohort_available):
    at = open_pretraining()
    at.selectbox(key="pretrain.mode").select("random_cross")
    at.number_input(key="pretrain.steps").set_value(2)
    assert at.toggle(key="pretrain.correspondence").value  # the cpu-tiny preset's
    at.toggle(key="pretrain.correspondence").set_value(False)
    at.button(key="pretrain.start").click().run()
    assert not at.error, [e.value for e in at.error]
    (listed,) = runs.list_runs("alice")
    assert at.selectbox(key="pretrain.follow").value == listed["name"]
    wait_until_done(listed["path"])
    assert runs.read_config(listed["path"])["loss"]["correspondence_weight"] == 0  # the switch reached the job
    at.run()
    assert at.dataframe[0].value["step"].tolist() == [2]
    assert len(at.get("plotly_chart")) == 3
