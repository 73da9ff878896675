"""The Segmentation page through AppTest: a real 2-step fine-tuning run of the tiny network on a tiny labelled
cohort, its prediction against the truth, the error view, bad checkpoints and bad start settings."""

import os
import shutil

import pytest
import torch
from streamlit.testing.v1 import AppTest

from alice import paths, runs
from alice.errors import InputError
from alice.segment.labels import get_label_set
from alice.segment.train import finetune, load_finetune_config
from alice.ui import runs as run_panels
from alice.ui import segmentation
from tests.app.jobs import wait_until_done
from tests.segment.conftest import TINY_MODEL, tiny_finetune_config, write_labelled_cohort

MAIN = str(paths.REPO_ROOT / "app" / "main.py")
RUN_NAME = "20260101-000000-scratch-seed0"
TRAINING_COHORT = "cohort (training cohort)"


@pytest.fixture(scope="module")
def tiny_cohort(tmp_path_factory):
    """Four synthetic 40 x 36 x 32 cases (one unlabelled): a prediction takes a second, not 15 s."""
    return write_labelled_cohort(tmp_path_factory.mktemp("segment") / "cohort")


@pytest.fixture(scope="module")
def made_run(tmp_path_factory, tiny_cohort):
    """A finished 2-step scratch run on the tiny cohort (one training case, no validation), made in this process."""
    root = tmp_path_factory.mktemp("segment-made")
    manifest = tiny_cohort
    config = load_finetune_config(["data.train_cases=1", "data.val_cases=0", "run.steps=2", "run.val_every=1000",
                                   "run.tensorboard=false"], tiny_finetune_config(manifest))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        finetune(config, root / "runs" / RUN_NAME)
    finally:
        torch.set_num_threads(threads)
    return root / "runs" / RUN_NAME


@pytest.fixture
def workspace_run(made_run):
    """The run copied into this test's workspace."""
    target = paths.runs_dir(segmentation.KIND) / RUN_NAME
    shutil.copytree(made_run, target)
    return target


def open_segmentation() -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=300)  # generous: a loaded 2-core machine predicts slowly
    at.run()
    at.switch_page("../pages/segmentation.py")
    at.run()
    assert not at.exception, at.exception
    return at


def scores(at: AppTest):
    found = [frame.value for frame in at.dataframe if "Dice" in frame.value.columns]
    return found[0] if found else None


def test_the_page_renders_without_runs():
    at = open_segmentation()
    assert any("No fine-tuned model yet" in i.value for i in at.info)
    assert at.button(key="segment.start")
    assert not at.error


def test_the_run_is_listed_and_its_prediction_scored_per_structure(workspace_run):
    at = open_segmentation()
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="segment.model").value == RUN_NAME
    assert at.selectbox(key="segment.case").value == f"{TRAINING_COHORT}/case2"  # the held-out test case
    table = scores(at)
    structures = get_label_set("organs").class_names[1:]
    assert list(table["structure"]) == [*structures, segmentation.MEAN_ROW]
    assert table["Dice"].between(0, 1).any()  # scored where the structure is in the truth
    assert table.loc[table["structure"] == "liver", "truth (mL)"].item() > 0
    assert len(at.get("plotly_chart")) >= 3 + 1  # three views, then the followed run's curves
    runs_table = next(frame.value for frame in at.dataframe if "val_dice" in frame.value.columns)
    assert list(runs_table["run"]) == [RUN_NAME] and runs_table["state"].item() == "finished"


def test_the_error_view_and_contours_draw_without_error(workspace_run):
    at = open_segmentation()
    assert at.radio(key="segment.mode").options == list(segmentation.MODES)
    at.radio(key="segment.mode").set_value(segmentation.ERRORS).run()
    assert not at.exception, at.exception
    assert at.radio(key="segment.mode").value == segmentation.ERRORS
    at.toggle(key="segment.contour").set_value(True).run()
    at.multiselect(key="segment.structures.organs").set_value([1])  # liver only.run()
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) >= 3
    assert scores(at) is not None


def test_a_case_without_labels_shows_the_prediction_alone_with_a_note(workspace_run):
    at = open_segmentation()
    at.radio(key="segment.mode").set_value(segmentation.ERRORS).run()
    at.selectbox(key="segment.case").select(f"{TRAINING_COHORT}/nolabel").run()
    assert not at.exception, at.exception
    assert any("has no label map" in i.value for i in at.info)
    assert at.radio(key="segment.mode").options == [segmentation.PREDICTION]
    assert scores(at) is None


def test_a_broken_checkpoint_is_named_in_an_error_and_the_page_carries_on(workspace_run):
    checkpoint = runs.checkpoint_path(workspace_run)
    checkpoint.write_bytes(b"not a checkpoint")
    at = open_segmentation()
    assert any("Cannot use the model" in e.value and str(checkpoint) in e.value for e in at.error)
    assert at.button(key="segment.start")
    assert any("val_dice" in frame.value.columns for frame in at.dataframe)  # the runs table still shows


def test_start_with_an_invalid_setting_shows_the_error_and_launches_nothing(monkeypatch):
    launched = []
    monkeypatch.setattr(runs, "launch", lambda *args, **kwargs: launched.append(args))
    at = open_segmentation()
    at.text_area(key="segment.settings").input("optim.lr=-1")
    at.button(key="segment.start").click().run()
    assert any("Cannot start" in e.value and "optim.lr" in e.value for e in at.error)
    assert not launched and runs.list_runs(segmentation.KIND) == []


def test_start_launches_the_checked_finetune_command_and_follows_it(monkeypatch):
    made = paths.runs_dir(segmentation.KIND) / "20260101-000100-scratch-seed3"
    calls = []

    def launch(kind, argv, slug=None):
        calls.append((kind, argv, slug))
        made.mkdir(parents=True)
        runs.write_status(made, "starting", 0, None, pid=0)
        return made, 0

    monkeypatch.setattr(runs, "launch", launch)
    at = open_segmentation()
    at.number_input(key="segment.seed").set_value(3)
    at.number_input(key="segment.steps").set_value(5)
    at.text_area(key="segment.settings").input("optim.lr=1e-4\n# a comment\n")
    at.button(key="segment.start").click().run()
    assert not at.error, [e.value for e in at.error]
    assert calls == [("segment", ["finetune", "--init", "scratch", "--seed", "3", "--steps", "5", "--train-cases",
                                  "4", "--set", "optim.lr=1e-4"], "scratch-seed3")]
    assert at.selectbox(key="segment.follow").value == made.name


def test_finetune_argv_refuses_bad_values_and_an_unreadable_init(tmp_path):
    assert segmentation.parse_settings(" a=1 \n\n# note\nb=2") == ["a=1", "b=2"]
    with pytest.raises(InputError, match="run.steps"):
        segmentation.finetune_argv("scratch", 0, 0, 1, [])
    with pytest.raises(InputError, match="not key=value"):
        segmentation.finetune_argv("scratch", 0, 2, 1, ["optim.lr"])
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"nope")
    with pytest.raises(InputError, match="broken.pt"):
        segmentation.finetune_argv(str(broken), 0, 2, 1, [])


def test_curves_leave_out_steps_that_did_not_log_a_term():
    figure = run_panels.curves_figure({"run": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "val_dice": 0.3}]},
                                      ("loss", "val_dice"))
    loss, dice = figure.data
    assert list(loss.x) == [1, 2] and list(dice.x) == [2] and list(dice.y) == [0.3]



def test_the_live_panel_shows_progress_and_stops_a_running_job(workspace_run):
    runs.write_status(workspace_run, "running", 1, 2, "step 1/2", eta_seconds=30, pid=os.getpid())
    at = open_segmentation()
    assert at.selectbox(key="segment.follow").value == RUN_NAME
    assert "about 30 s left" in at.get("progress")[0].proto.text
    at.button(key="segment.stop").click().run()
    assert runs.stop_requested(workspace_run)
    assert any("Stop requested" in i.value for i in at.info)


@pytest.mark.slow
def test_start_runs_a_real_background_job_that_the_page_lists_and_then_uses(tiny_cohort):
    at = open_segmentation()
    at.number_input(key="segment.steps").set_value(2)
    at.number_input(key="segment.train_cases").set_value(1)
    model = [f"model.{key}={value}" for key, value in TINY_MODEL.to_dict().items()]
    at.text_area(key="segment.settings").input("\n".join([f"data.manifest={tiny_cohort}", "data.val_cases=0",
                                                          "run.tensorboard=false", *model]))
    at.button(key="segment.start").click().run()
    assert not at.error, [e.value for e in at.error]
    (listed,) = runs.list_runs(segmentation.KIND)
    assert at.selectbox(key="segment.follow").value == listed["name"]
    wait_until_done(listed["path"])
    at.run()
    assert at.selectbox(key="segment.model").value == listed["name"]
    assert scores(at) is not None
