"""The Segmentation page's pieces: a fine-tuned model on a case (prediction, ground truth, errors, scores), and
fine-tuning jobs started in the background.

A model is the ``checkpoints/last.pt`` of a fine-tuning run (``alice finetune``, runs folder ``segment``); it is
reloaded when that file changes (a running job rewrites it). Its prediction of a case is made once per checkpoint
version and case and kept (``st.cache_resource``). The case's own label map is turned into the model's classes
(``alice.segment.labels.remap``) to give the ground truth. The viewer draws one of three label overlays for the
structures picked, filled or as in-plane contours: the prediction, the ground truth, or the errors (false
positives and false negatives in two colours). Scores are MONAI's Dice and HD95 (``alice.segment.metrics``).

Fine-tuning jobs use the run panel of the Pretraining page (``alice.ui.runs``) with the segmentation metrics.

Session-state keys: ``segment.model``, ``segment.case``, ``segment.mode``, ``segment.structures.<label set>``,
``segment.contour``, ``segment.opacity``, ``segment.viewer.*`` (the viewer), ``segment.scores_csv``; the start form:
``segment.init``, ``segment.seed``, ``segment.steps``, ``segment.train_cases``, ``segment.settings``,
``segment.start``; the run panel: ``segment.follow``, ``segment.stop``, ``segment.compare``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from alice import paths, runs, viz
from alice.data.cohort import CaseRecord, Cohort, LoadedCase, load_manifest
from alice.data.io import Volume
from alice.errors import InputError
from alice.segment.labels import LabelSet, get_label_set, remap
from alice.segment.metrics import mean_of, segmentation_scores
from alice.segment.network import SCRATCH, SegmentationNet, load_segmentation_checkpoint, load_segmentation_net
from alice.segment.predict import predict_case
from alice.segment.train import RUN_KIND, FinetuneConfig, default_config, load_finetune_config
from alice.ui import cache
from alice.ui.cases import case_stamp, list_cohorts, load_case_cached
from alice.ui.runs import RunPanel, run_summary
from alice.ui.viewer import tri_planar_viewer

log = logging.getLogger(__name__)

KIND = RUN_KIND
PREDICTION, GROUND_TRUTH, ERRORS = "Prediction", "Ground truth", "Errors"
MODES = (PREDICTION, GROUND_TRUTH, ERRORS)
DEFAULT_OPACITY = 0.5
PRETRAINING_KIND = "alice"
MEAN_ROW = "mean"


# ----------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True, eq=False)
class Model:
    """A fine-tuned network ready to predict.

    Attributes:
        run_dir: its run folder.
        net: the network, in eval mode.
        label_set: the classes it predicts (from its config): the ground truth is mapped to them.
        manifest: the cohort it was trained on.
        stamp: the checkpoint's path, modification time and size; a rewritten checkpoint is another model.
    """

    run_dir: Path
    net: SegmentationNet
    label_set: LabelSet
    manifest: Path
    stamp: tuple[str, int, int]

    @property
    def class_names(self) -> dict[int, str]:
        """Class index -> name, the background (0) included."""
        return dict(enumerate(self.net.class_names))


def checkpoint_stamp(path: Path) -> tuple[str, int, int]:
    """A cache key of a checkpoint file: its path, modification time and size.

    Raises:
        InputError: the file does not exist.
    """
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(path, "no such checkpoint file") from exc
    return str(path), stat.st_mtime_ns, stat.st_size


def load_model(run_dir: Path) -> Model:
    """The last checkpoint of a fine-tuning run, loaded once per version of the file.

    Raises:
        InputError: a missing or unreadable checkpoint, or one whose classes differ from its label set.
    """
    return _load_model(str(run_dir), checkpoint_stamp(runs.checkpoint_path(run_dir)))


@st.cache_resource(max_entries=2, show_spinner="Loading the network...")
def _load_model(run_dir: str, stamp: tuple[str, int, int]) -> Model:
    import torch

    checkpoint = Path(stamp[0])
    # The checkpoint's own config (not config.yaml): it is the one its weights were trained with.
    config = FinetuneConfig.from_dict(load_segmentation_checkpoint(checkpoint)["config"])
    label_set = get_label_set(config.data.label_set)
    net = load_segmentation_net(checkpoint)
    if list(net.class_names) != label_set.class_names:
        raise InputError(checkpoint, f"predicts {list(net.class_names)}, but its label set {label_set.name!r} has "
                                     f"{label_set.class_names}")
    if torch.cuda.is_available():
        net = net.to("cuda")  # predict_case slides its windows on the network's device
    return Model(Path(run_dir), net, label_set, Path(config.data.manifest or paths.SAMPLE_MANIFEST), stamp)


def model_runs(listed: list[dict]) -> list[dict]:
    """The runs (as ``alice.runs.list_runs`` gives them) that have a last checkpoint, newest first."""
    return [run for run in listed if runs.checkpoint_path(run["path"]).is_file()]


def choose_model(state: MutableMapping, usable: list[dict]) -> Path:
    """A picker of the runs with a checkpoint (default: the newest); returns the chosen run folder."""
    by_name = {run["name"]: run for run in usable}
    if state.get("segment.model") not in by_name:
        state["segment.model"] = usable[0]["name"]

    def describe(name: str) -> str:
        status = by_name[name]["status"] or {}
        return f"{name} ({status.get('state', 'unknown')}, step {status.get('step', '?')})"

    name = st.selectbox("Model (fine-tuning run)", list(by_name), format_func=describe, key="segment.model",
                        help="The run's checkpoints/last.pt; a running job's newest checkpoint is used.")
    return Path(by_name[name]["path"])


# ----------------------------------------------------------------------------------------------- the case


@dataclass(frozen=True)
class CaseChoice:
    """A case offered on the page: its cohort's name and its manifest record."""

    cohort: str
    record: CaseRecord

    @property
    def key(self) -> str:
        return f"{self.cohort}/{self.record.case_id}"

    def describe(self) -> str:
        labels = "labelled" if self.record.label else "no label map"
        return f"{self.record.case_id} ({self.cohort}, {self.record.split}, {labels})"


def case_choices(model: Model) -> tuple[list[CaseChoice], list[str]]:
    """The cases of the model's training cohort, then of the sample and user cohorts (each cohort once), and a
    message for each cohort that cannot be read."""
    cohorts, problems = list_cohorts()
    known = {paths.SAMPLE_MANIFEST.resolve(): "sample", (paths.user_cohort_dir() / "manifest.csv").resolve(): "user"}
    ordered: dict[str, Cohort] = {}
    own = known.get(model.manifest.resolve())
    if own is None:
        try:
            ordered[f"{model.manifest.parent.name} (training cohort)"] = load_manifest(model.manifest)
        except InputError as exc:
            problems.append(f"The model's training cohort cannot be read: {exc}")
    elif own in cohorts:
        ordered[own] = cohorts[own]
    ordered.update(cohorts)
    return [CaseChoice(name, record) for name, cohort in ordered.items() for record in cohort.cases], problems


def default_case(choices: list[CaseChoice]) -> CaseChoice:
    """A held-out case of the first cohort (the model's own): its first labelled ``test`` case, else its first
    labelled case, else the first case."""
    first = [c for c in choices if c.cohort == choices[0].cohort]
    labelled = [c for c in first if c.record.label]
    return next((c for c in labelled if c.record.split == "test"), (labelled or first)[0])


def choose_case(state: MutableMapping, choices: list[CaseChoice]) -> CaseChoice:
    """A picker of the cases (default: ``default_case``); returns the chosen one."""
    by_key = {choice.key: choice for choice in choices}
    if state.get("segment.case") not in by_key:
        state["segment.case"] = default_case(choices).key
    key = st.selectbox("Case", list(by_key), format_func=lambda k: by_key[k].describe(), key="segment.case",
                       help="Cases of the model's training cohort come first; its `test` split is held out.")
    return by_key[key]


def predict(model: Model, case: LoadedCase) -> Volume:
    """The model's class map of a case on the case's grid, computed once per checkpoint version and case."""
    with st.spinner(f"Predicting {case.record.case_id} with {model.run_dir.name} (about 15 s for a sample case on "
                    "CPU; once per checkpoint and case)..."):
        return _prediction(model, case, model.stamp, case_stamp(case.record))


# A class map is one byte per voxel (~5 MB for a sample case).
@st.cache_resource(max_entries=6, show_spinner=False)
def _prediction(_model: Model, _case: LoadedCase, model_stamp: tuple, case_token: tuple) -> Volume:
    return predict_case(_model.net, _case.image)


def ground_truth(case: LoadedCase, label_set: LabelSet) -> Volume | None:
    """The case's label map as class indices of ``label_set``; None when the case has no label map.

    Raises:
        InputError: label values outside a dataset label set (named with the file).
    """
    if case.label is None:
        return None
    return _ground_truth(case, label_set, case_stamp(case.record), label_set.name, tuple(label_set.class_names))


@st.cache_resource(max_entries=6, show_spinner=False)
def _ground_truth(_case: LoadedCase, _label_set: LabelSet, case_token: tuple, name: str, classes: tuple) -> Volume:
    return _case.label.with_array(remap(_case.label.array, _case.label_names, _label_set, _case.record.label))


def error_volume(prediction: Volume, truth: Volume, classes: tuple[int, ...]) -> Volume:
    """``viz.error_map`` of the prediction for these classes, kept for reruns (the viewer's slice cache keys on it)."""
    return _error_volume(prediction, truth, (cache.volume_token(prediction), cache.volume_token(truth)), classes)


@st.cache_resource(max_entries=6, show_spinner=False)
def _error_volume(_prediction: Volume, _truth: Volume, tokens: tuple, classes: tuple[int, ...]) -> Volume:
    return _prediction.with_array(viz.error_map(_prediction.array, _truth.array, classes))


# ----------------------------------------------------------------------------------------------- display


@dataclass(frozen=True)
class Display:
    """What the viewer draws: a mode of ``MODES``, the classes shown, contours or filled, and the opacity."""

    mode: str
    classes: tuple[int, ...]
    contour: bool
    opacity: float


def display_controls(state: MutableMapping, model: Model, has_truth: bool) -> Display:
    """Mode (ground truth and errors only for a case with labels), structures, contour toggle and opacity."""
    modes = MODES if has_truth else (PREDICTION,)
    if state.get("segment.mode") not in modes:
        state["segment.mode"] = PREDICTION
    mode_column, contour_column, opacity_column = st.columns([3, 1, 1.6], vertical_alignment="bottom")
    mode = mode_column.radio("Show", modes, horizontal=True, key="segment.mode",
                             help="Errors: false positives and false negatives of the structures picked.")
    contour = contour_column.toggle("Contours", False, key="segment.contour",
                                    help="Draw only each structure's outline in each view's plane.")
    opacity = opacity_column.slider("Overlay opacity", 0.0, 1.0, DEFAULT_OPACITY, 0.05, key="segment.opacity")
    names = {value: name for value, name in model.class_names.items() if value}
    classes = st.multiselect("Structures", list(names), default=list(names), format_func=names.get,
                             key=f"segment.structures.{model.label_set.name}")
    return Display(mode, tuple(sorted(classes)), contour, opacity)


def overlay(display: Display, model: Model, prediction: Volume, truth: Volume | None) -> viz.LabelOverlay:
    """The label overlay the viewer draws for ``display``."""
    names = {value: name for value, name in model.class_names.items() if value}
    if display.mode == ERRORS and truth is not None:
        return viz.LabelOverlay(error_volume(prediction, truth, display.classes), "Errors of the prediction",
                                viz.ERROR_NAMES, display.opacity, None, display.contour, viz.ERROR_COLORS)
    if display.mode == GROUND_TRUTH and truth is not None:
        return viz.LabelOverlay(truth, f"Ground truth ({model.label_set.name} classes)", names, display.opacity,
                                display.classes, display.contour, viz.CLASS_COLORS)
    return viz.LabelOverlay(prediction, f"Prediction of {model.run_dir.name}", names, display.opacity,
                            display.classes, display.contour, viz.CLASS_COLORS)


def truth_note(case: LoadedCase, truth: Volume | None, label_set: LabelSet) -> str | None:
    """Why a case has no ground truth to compare with (``truth`` as ``ground_truth`` gave it), or None."""
    if truth is None:
        return f"{case.record.case_id} has no label map: the prediction is shown alone, without scores."
    if not truth.array.any():
        return (f"{case.record.case_id}'s label map holds none of the {label_set.name} structures: the prediction "
                "is shown alone, without scores.")
    return None


def show_case(state: MutableMapping, model: Model, case: LoadedCase, choice: CaseChoice) -> None:
    """Prediction, ground truth or errors of one case in the tri-planar viewer, then the per-structure scores."""
    prediction = predict(model, case)
    try:
        truth = ground_truth(case, model.label_set)
    except InputError as exc:
        st.warning(f"The label map cannot be turned into the model's classes, so the prediction is shown alone: "
                   f"{exc}")
        truth = None
    else:
        note = truth_note(case, truth, model.label_set)
        if note:
            st.info(note)
            truth = None
    display = display_controls(state, model, truth is not None)
    tri_planar_viewer("segment.viewer", case.image, case.label, case.label_names, case_key=choice.key,
                      overlays=(overlay(display, model, prediction, truth),), height_px=340, labels_shown=False)
    st.caption("The viewer's *Labels* toggle draws the case's own label map (every structure it names) under the "
               "overlay, as on the other pages; the readout names the structure under the crosshair.")
    if truth is not None:
        show_scores(prediction, truth, model, choice)


# ----------------------------------------------------------------------------------------------- scores


def scores_frame(prediction: Volume, truth: Volume, class_names: tuple[str, ...]) -> pd.DataFrame:
    """One row per structure of the label set (Dice, HD95 in mm, volumes in mL), then the mean over structures.

    A structure absent from the truth has no Dice; HD95 needs the structure in both maps (MONAI's conventions).
    """
    return _scores_frame(prediction, truth, (cache.volume_token(prediction), cache.volume_token(truth)),
                         tuple(class_names))


@st.cache_data(max_entries=16, show_spinner="Scoring the prediction (Dice, HD95)...")
def _scores_frame(_prediction: Volume, _truth: Volume, tokens: tuple, class_names: tuple[str, ...]) -> pd.DataFrame:
    spacing_mm = tuple(float(s) for s in _truth.spacing_mm)
    scores = segmentation_scores(_prediction.array, _truth.array, class_names, spacing_mm)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    truth_voxels = np.bincount(_truth.array.ravel(), minlength=len(class_names))
    predicted_voxels = np.bincount(_prediction.array.ravel(), minlength=len(class_names))
    rows = [{"structure": name, "Dice": score["dice"], "HD95 (mm)": score["hd95"],
             "truth (mL)": truth_voxels[value] * voxel_ml, "predicted (mL)": predicted_voxels[value] * voxel_ml}
            for value, (name, score) in enumerate(scores.items(), start=1)]
    rows.append({"structure": MEAN_ROW, "Dice": mean_of(scores, "dice"), "HD95 (mm)": mean_of(scores, "hd95")})
    return pd.DataFrame(rows)


def show_scores(prediction: Volume, truth: Volume, model: Model, choice: CaseChoice) -> None:
    """The per-structure score table and its CSV download."""
    st.subheader("Scores")
    table = scores_frame(prediction, truth, model.net.class_names)
    st.caption(f"{choice.record.case_id} scored against its labels mapped to the {model.label_set.name} classes. "
               "Dice is None where the structure is not in the truth, HD95 where it is missing from either map; "
               "the mean is over the structures where the score exists.")
    st.dataframe(table, hide_index=True,
                 column_config={"Dice": st.column_config.NumberColumn(format="%.3f"),
                                "HD95 (mm)": st.column_config.NumberColumn(format="%.1f"),
                                "truth (mL)": st.column_config.NumberColumn(format="%.1f"),
                                "predicted (mL)": st.column_config.NumberColumn(format="%.1f")})
    st.download_button("Download the scores (CSV)", table.to_csv(index=False),
                       file_name=f"segmentation-{model.run_dir.name}-{choice.record.case_id}.csv", mime="text/csv",
                       key="segment.scores_csv")


def show_inspection(state: MutableMapping, listed: list[dict]) -> None:
    """Pick a model and a case, see the prediction against the truth and the scores (errors shown, never raised)."""
    usable = model_runs(listed)
    if not usable:
        st.info("No fine-tuned model yet: start a fine-tuning run below (or `alice finetune`); a run is listed here "
                "once it has written checkpoints/last.pt.")
        return
    model_column, case_column = st.columns(2)
    with model_column:
        run_dir = choose_model(state, usable)
    try:
        model = load_model(run_dir)
    except InputError as exc:
        st.error(f"Cannot use the model of run {run_dir.name}: {exc}")
        return
    choices, problems = case_choices(model)
    for problem in problems:
        st.error(problem)
    if not choices:
        st.info("No case to segment: build the sample cohort (`alice data prepare-samples`) or add a case.")
        return
    with case_column:
        choice = choose_case(state, choices)
    try:
        case = load_case_cached(choice.record)
    except InputError as exc:
        st.error(f"Cannot load case {choice.record.case_id}: {exc}")
        return
    show_case(state, model, case, choice)


# ----------------------------------------------------------------------------------------------- fine-tuning jobs


def runs_table(listed: list[dict]) -> pd.DataFrame:
    """One row per run: state, steps, the last loss and validation Dice, and the config values a user varies."""
    rows = []
    for run in listed:
        row, config, metrics = run_summary(run)
        val_dice = next((m["val_dice"] for m in reversed(metrics) if m.get("val_dice") is not None), None)
        data, init = config.get("data", {}), config.get("init")
        rows.append({**row, "loss": metrics[-1].get("loss") if metrics else None,
                     "val_dice": val_dice, "init": init if init in (None, SCRATCH) else Path(init).name,
                     "label_set": data.get("label_set"), "train_cases": data.get("train_cases"),
                     "seed": config.get("run", {}).get("seed"), "checkpoint": runs.checkpoint_path(
                         run["path"]).is_file()})
    return pd.DataFrame(rows)


PANEL = RunPanel(KIND, "segment", ("loss", "val_dice"), ("lr",), "Learning rate: linear warm-up, then cosine decay.",
                 runs_table)


def init_choices() -> dict[str, str]:
    """Where fine-tuning may start: scratch, the shipped Alice checkpoint, Alice pretraining runs; value -> label."""
    found = {SCRATCH: "scratch (random backbone)"}
    shipped = paths.alice_checkpoint()
    if shipped.is_file():
        found[str(shipped)] = f"Alice, shipped checkpoint ({shipped.name})"
    for run in runs.list_runs(PRETRAINING_KIND):
        if runs.checkpoint_path(run["path"]).is_file():
            found[str(run["path"])] = f"Alice pretraining run {run['name']}"
    return found


def parse_settings(text: str) -> list[str]:
    """``KEY=VALUE`` lines of the settings box (blank lines and ``#`` comments skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def finetune_argv(init: str, seed: int, steps: int, train_cases: int, settings: list[str]) -> list[str]:
    """The ``alice finetune`` command line (without ``--out``), checked before anything starts.

    Raises:
        InputError: the config the command would load is invalid (the message names every problem).
    """
    # The same order as the CLI: --set values first, then the shortcut flags.
    flags = [f"run.steps={steps}", f"run.seed={seed}", f"data.train_cases={train_cases}"]
    load_finetune_config([*settings, *flags], default_config(init))
    argv = ["finetune", "--init", init, "--seed", str(int(seed)), "--steps", str(int(steps)),
            "--train-cases", str(int(train_cases))]
    for item in settings:
        argv += ["--set", item]
    return argv


def start_run(state: MutableMapping, argv: list[str], slug: str) -> Path:
    """Launch a fine-tuning job in the background and follow it."""
    run_dir, pid = runs.launch(KIND, argv, slug=slug)
    log.info("started fine-tuning job %d in %s", pid, run_dir)
    state[PANEL.followed] = run_dir.name
    return run_dir


def show_start_form(state: MutableMapping) -> None:
    """Initialisation, seed, steps, training cases and extra settings, and the Start button (errors shown,
    nothing started)."""
    inits = init_choices()
    init_column, seed_column, steps_column, cases_column = st.columns([2.4, 1, 1, 1])
    init = init_column.selectbox("Initialisation", list(inits), format_func=inits.get, key="segment.init",
                                 help="Alice: the pretrained encoder and decoder (their architecture is used); the "
                                      "class head is always new.")
    seed = seed_column.number_input("Seed", 0, 2**31 - 1, 0, key="segment.seed")
    steps = steps_column.number_input("Steps", 1, 1_000_000, FinetuneConfig().run.steps, key="segment.steps",
                                      help="About 0.75 s per step on 2 CPU cores with the cpu-tiny network.")
    train_cases = cases_column.number_input("Training cases", 1, 1000, FinetuneConfig().data.train_cases,
                                            key="segment.train_cases",
                                            help="The first labelled cases of the training split.")
    with st.expander("More settings"):
        settings = st.text_area("One KEY=VALUE per line, as `alice finetune --set`", key="segment.settings",
                                placeholder="optim.lr=1e-4\ndata.label_set=btcv\nrun.val_every=100")
    if st.button("Start fine-tuning", type="primary", key="segment.start"):
        try:
            argv = finetune_argv(init, int(seed), int(steps), int(train_cases), parse_settings(settings))
            slug = f"{SCRATCH if init == SCRATCH else Path(init).stem}-seed{int(seed)}"
            run_dir = start_run(state, argv, slug)
        except (InputError, OSError) as exc:
            st.error(f"Cannot start: {exc}")
        else:
            st.success(f"Started `{run_dir.name}`; it runs in the background (closing this tab does not stop it).")
