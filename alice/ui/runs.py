"""Training runs in the app: start a background job, follow it, stop it, compare runs.

Jobs are separate processes started with :func:`alice.runs.launch`; the pages only read their run folders
(``status.json``, ``metrics.jsonl``, ``config.yaml``), so a job survives a page reload and the UI never waits
for it. The live panel is a fragment that re-runs every 2 s. A :class:`RunPanel` says how one kind of run is shown
(its folder, curves, table and key prefix); the Pretraining page uses ``PRETRAINING`` and the start form below, the
Segmentation page its own panel (``alice.ui.segmentation``).

Session-state keys of a panel with prefix ``p`` (all widgets): ``p.follow`` (the followed run's name; Start sets
it), ``p.stop``, ``p.compare``. The pretraining start form adds ``pretrain.preset``, ``pretrain.mode``,
``pretrain.steps``, ``pretrain.cafa``, ``pretrain.rec``, ``pretrain.correspondence``, ``pretrain.start``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from alice import runs
from alice.errors import InputError
from alice.pretrain.config import PRESETS, load_config
from alice.pretrain.positions import MEASURES

log = logging.getLogger(__name__)

KIND = "alice"
FOLLOWED = "pretrain.follow"
LOSS_TERMS = ("loss", "loss/cls", "loss/patch", "loss/rec", "loss/correspondence", "cls_agreement", "cls_logit_range",
              "crop_variance/student", "position_share/student")
SCHEDULE_TERMS = ("lr", "wd", "momentum", "teacher_temp")
POLL_SECONDS = 2


def ablation_overrides(mode: str, cafa: bool, reconstruction: bool, correspondence: bool | None = None) -> list[str]:
    """``--set`` values for the app's ablation switches (see ALICE_METHOD.md section 3); ``correspondence`` turns
    the token correspondence term (not in Alice) on or off, None keeps the preset's."""
    found = [f"views.mode={mode}"]
    if not cafa:
        found.append("loss.cafa=false")
    if not reconstruction:
        found.append("loss.rec_weight=0")
    if correspondence is not None:
        found.append(f"loss.correspondence_weight={1 if correspondence else 0}")
    return found


def pretrain_argv(preset: str, steps: int, overrides: list[str]) -> list[str]:
    """The ``alice`` command line of a pretraining run (without ``--out``), checked before anything starts.

    Raises:
        InputError: the config the command would load is invalid (the message names every problem).
    """
    load_config(preset, None, [*overrides, f"run.steps={steps}"])
    argv = ["pretrain", "--preset", preset, "--steps", str(int(steps))]
    for item in overrides:
        argv += ["--set", item]
    return argv


def start_run(state: MutableMapping, preset: str, steps: int, overrides: list[str]) -> Path:
    """Launch a pretraining job in the background and follow it.

    Raises:
        InputError: an invalid config (nothing is started).
    """
    run_dir, pid = runs.launch(KIND, pretrain_argv(preset, steps, overrides), slug=preset)
    log.info("started pretraining job %d in %s", pid, run_dir)
    state[FOLLOWED] = run_dir.name
    return run_dir


def default_followed(listed: list[dict]) -> str:
    """The run to follow when none is picked: the newest active run, else the newest run."""
    active = [r for r in listed if r["status"] and r["status"]["state"] in runs.ACTIVE_STATES]
    return (active or listed)[0]["name"]


def run_summary(run: dict) -> tuple[dict, dict, list[dict]]:
    """The first cells of a runs-table row (run, state, step, total), the run's config and its metrics."""
    status = run["status"] or {}
    row = {"run": run["name"], "state": status.get("state", "unknown"), "step": status.get("step"),
           "total": status.get("total")}
    return row, runs.read_config(run["path"]) or {}, runs.read_metrics(run["path"])


def runs_table(listed: list[dict]) -> pd.DataFrame:
    """One row per run: state, steps, the last logged losses and the config values the ablations change."""
    rows = []
    for run in listed:
        row, config, metrics = run_summary(run)
        last = metrics[-1] if metrics else {}
        loss, model = config.get("loss", {}), config.get("model", {})
        rows.append({**row, **{term: last.get(term) for term in LOSS_TERMS},
                     "views.mode": config.get("views", {}).get("mode"), "loss.cafa": loss.get("cafa"),
                     "loss.rec_weight": loss.get("rec_weight"),
                     "loss.correspondence_weight": loss.get("correspondence_weight", 0.0),
                     "model.roi": model.get("roi"),
                     "optim.lr": config.get("optim", {}).get("lr")})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class RunPanel:
    """How the pages show one kind of run.

    Attributes:
        kind: the runs folder (``alice.runs``), e.g. ``alice``.
        key: prefix of the panel's session-state and chart keys, e.g. ``pretrain``.
        curve_terms: metrics plotted live and when runs are compared.
        schedule_terms: metrics plotted below the curves of the followed run (empty: none).
        schedule_caption: what the schedules are.
        table: the runs table, one row per listed run.
    """

    kind: str
    key: str
    curve_terms: tuple[str, ...]
    schedule_terms: tuple[str, ...]
    schedule_caption: str
    table: Callable[[list[dict]], pd.DataFrame]

    @property
    def followed(self) -> str:
        """Session-state key of the followed run's name."""
        return f"{self.key}.follow"


def curves_figure(metrics_by_run: dict[str, list[dict]], terms: tuple[str, ...], log_y: bool = False) -> go.Figure:
    """One panel per term, one line per run (overlaid), against the optimiser step.

    Steps that did not log a term (e.g. validation scores, logged every few steps) are left out of its line.
    """
    figure = make_subplots(rows=1, cols=len(terms), subplot_titles=terms, horizontal_spacing=0.06)
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    for number, (name, metrics) in enumerate(metrics_by_run.items()):
        for column, term in enumerate(terms, start=1):
            logged = [m for m in metrics if m.get(term) is not None]
            figure.add_trace(go.Scatter(x=[m["step"] for m in logged], y=[m[term] for m in logged],
                                        mode="lines+markers", name=name,
                                        legendgroup=name, showlegend=column == 1,
                                        line={"color": colours[number % len(colours)]}, marker={"size": 4}),
                             row=1, col=column)
            figure.update_xaxes(title_text="step", row=1, col=column)
            if term.split("/")[0] in MEASURES:  # in [0, 1]: the whole range, so 0.99 does not look like 0.5
                figure.update_yaxes(range=[0, 1.05], row=1, col=column)
            elif log_y:
                figure.update_yaxes(type="log", row=1, col=column)
    figure.update_layout(height=300, margin={"l": 40, "r": 10, "t": 40, "b": 40},
                         legend={"orientation": "h", "y": -0.3})
    return figure


def show_start_form(state: MutableMapping, presets: list[str], modes: tuple[str, ...], sam_ready: bool) -> None:
    """Preset, mining mode, steps and ablation switches, and the Start button (errors shown, nothing started)."""
    preset_column, mode_column, steps_column = st.columns(3)
    preset = preset_column.selectbox("Preset", presets, index=presets.index("cpu-tiny"), key="pretrain.preset")
    mode = mode_column.selectbox("View mining", modes, index=0 if sam_ready else 1, key="pretrain.mode",
                                 help="sam = Alice (needs a SAM checkpoint); the others are the ablations.")
    steps = steps_column.number_input("Steps", 1, 1_000_000, 200, key="pretrain.steps")
    cafa_column, rec_column, correspondence_column, start_column = st.columns(4)
    cafa = cafa_column.toggle("CAFA", True, key="pretrain.cafa",
                              help="Off: the token loss compares student and teacher decoder tokens directly.")
    reconstruction = rec_column.toggle("Reconstruction loss", True, key="pretrain.rec",
                                       help="Off: loss.rec_weight=0.")
    correspondence = correspondence_column.toggle(
        "Correspondence term", PRESETS[preset].loss.correspondence_weight > 0, key="pretrain.correspondence",
        help="Not in Alice: token-level InfoNCE across window placements and the pair's two patients "
             "(loss.correspondence_weight 1 or 0; README).")
    if start_column.button("Start", type="primary", key="pretrain.start"):
        try:
            run_dir = start_run(state, preset, int(steps),
                                ablation_overrides(mode, cafa, reconstruction, correspondence))
        except (InputError, OSError) as exc:
            st.error(f"Cannot start: {exc}")
        else:
            st.success(f"Started `{run_dir.name}`; it runs in the background (closing this tab does not stop it).")


PRETRAINING = RunPanel(KIND, "pretrain", LOSS_TERMS, SCHEDULE_TERMS,
                       "Schedules: learning rate, weight decay, teacher EMA momentum, teacher temperature.", runs_table)


@st.fragment(run_every=POLL_SECONDS)
def show_live(run_dir: Path, panel: RunPanel = PRETRAINING) -> None:
    """Progress, ETA, stop button, curves and schedules of one run, refreshed every 2 s."""
    status = runs.read_status(run_dir) or {"state": "unknown", "step": 0, "total": None, "message": ""}
    step, total = status.get("step") or 0, status.get("total")
    eta = status.get("eta_seconds") if status["state"] in runs.ACTIVE_STATES else None
    eta_text = "" if eta is None else f", about {eta / 60:.1f} min left" if eta >= 60 else f", about {eta:.0f} s left"
    st.progress(min(step / total, 1.0) if total else 0.0,
                text=f"`{run_dir.name}`: {status['state']}, step {step}/{total or '?'}{eta_text}")
    if status.get("message"):
        (st.error if status["state"] in ("failed", runs.INTERRUPTED) else st.caption)(status["message"])
    if status["state"] in runs.ACTIVE_STATES and st.button(
            "Stop", key=f"{panel.key}.stop", help="The job saves a checkpoint and ends at its next step."):
        runs.request_stop(run_dir)
        st.info("Stop requested: the job saves a checkpoint and ends at its next step.")
    metrics = runs.read_metrics(run_dir)
    if not metrics:
        st.caption("No metrics yet.")
        return
    st.plotly_chart(curves_figure({run_dir.name: metrics}, panel.curve_terms), key=f"{panel.key}.live.losses")
    if panel.schedule_terms:
        st.caption(panel.schedule_caption)
        st.plotly_chart(curves_figure({run_dir.name: metrics}, panel.schedule_terms),
                        key=f"{panel.key}.live.schedules")


def show_runs(state: MutableMapping, listed: list[dict], panel: RunPanel = PRETRAINING) -> Path:
    """The table of past runs, a picker for the followed run (returned), and two runs' curves overlaid."""
    st.dataframe(panel.table(listed), hide_index=True)
    names = [r["name"] for r in listed]
    by_name = {r["name"]: Path(r["path"]) for r in listed}
    if state.get(panel.followed) not in names:
        state[panel.followed] = default_followed(listed)
    follow = st.selectbox("Follow run", names, key=panel.followed)
    compared = st.multiselect("Compare runs (two)", names, default=names[:2], max_selections=2,
                              key=f"{panel.key}.compare")
    if compared:
        st.plotly_chart(curves_figure({name: runs.read_metrics(by_name[name]) for name in compared},
                                      panel.curve_terms), key=f"{panel.key}.compare.losses")
    return by_name[follow]
