"""Pretraining runs in the app: start a background ``alice pretrain`` job, follow it, stop it, compare runs.

Jobs are separate processes started with :func:`alice.runs.launch`; the page only reads their run folders
(``status.json``, ``metrics.jsonl``, ``config.yaml``), so a job survives a page reload and the UI never waits
for it. The live panel is a fragment that re-runs every 2 s.

Session-state keys (all widgets): ``pretrain.follow`` (the followed run's name; Start sets it), ``pretrain.preset``,
``pretrain.mode``, ``pretrain.steps``, ``pretrain.cafa``, ``pretrain.rec``, ``pretrain.start``, ``pretrain.stop``,
``pretrain.compare``.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from alice import runs
from alice.errors import InputError
from alice.pretrain.config import load_config

log = logging.getLogger(__name__)

KIND = "alice"
FOLLOWED = "pretrain.follow"
LOSS_TERMS = ("loss", "loss/cls", "loss/patch", "loss/rec", "cls_agreement")
SCHEDULE_TERMS = ("lr", "wd", "momentum", "teacher_temp")
POLL_SECONDS = 2


def ablation_overrides(mode: str, cafa: bool, reconstruction: bool) -> list[str]:
    """``--set`` values for the app's ablation switches (see ALICE_METHOD.md section 3)."""
    found = [f"views.mode={mode}"]
    if not cafa:
        found.append("loss.cafa=false")
    if not reconstruction:
        found.append("loss.rec_weight=0")
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


def runs_table(listed: list[dict]) -> pd.DataFrame:
    """One row per run: state, steps, the last logged losses and the config values the ablations change."""
    rows = []
    for run in listed:
        status = run["status"] or {}
        config = runs.read_config(run["path"]) or {}
        metrics = runs.read_metrics(run["path"])
        last = metrics[-1] if metrics else {}
        loss, model = config.get("loss", {}), config.get("model", {})
        rows.append({"run": run["name"], "state": status.get("state", "unknown"), "step": status.get("step"),
                     "total": status.get("total"), **{term: last.get(term) for term in LOSS_TERMS},
                     "views.mode": config.get("views", {}).get("mode"), "loss.cafa": loss.get("cafa"),
                     "loss.rec_weight": loss.get("rec_weight"), "model.roi": model.get("roi"),
                     "optim.lr": config.get("optim", {}).get("lr")})
    return pd.DataFrame(rows)


def curves_figure(metrics_by_run: dict[str, list[dict]], terms: tuple[str, ...], log_y: bool = False) -> go.Figure:
    """One panel per term, one line per run (overlaid), against the optimiser step."""
    figure = make_subplots(rows=1, cols=len(terms), subplot_titles=terms, horizontal_spacing=0.06)
    colours = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
    for number, (name, metrics) in enumerate(metrics_by_run.items()):
        steps = [m["step"] for m in metrics]
        for column, term in enumerate(terms, start=1):
            figure.add_trace(go.Scatter(x=steps, y=[m.get(term) for m in metrics], mode="lines+markers", name=name,
                                        legendgroup=name, showlegend=column == 1,
                                        line={"color": colours[number % len(colours)]}, marker={"size": 4}),
                             row=1, col=column)
            figure.update_xaxes(title_text="step", row=1, col=column)
            if log_y:
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
    cafa_column, rec_column, start_column = st.columns(3)
    cafa = cafa_column.toggle("CAFA", True, key="pretrain.cafa",
                              help="Off: the token loss compares student and teacher decoder tokens directly.")
    reconstruction = rec_column.toggle("Reconstruction loss", True, key="pretrain.rec",
                                       help="Off: loss.rec_weight=0.")
    if start_column.button("Start", type="primary", key="pretrain.start"):
        try:
            run_dir = start_run(state, preset, int(steps), ablation_overrides(mode, cafa, reconstruction))
        except (InputError, OSError) as exc:
            st.error(f"Cannot start: {exc}")
        else:
            st.success(f"Started `{run_dir.name}`; it runs in the background (closing this tab does not stop it).")


@st.fragment(run_every=POLL_SECONDS)
def show_live(run_dir: Path) -> None:
    """Progress, ETA, stop button, loss curves and schedules of one run, refreshed every 2 s."""
    status = runs.read_status(run_dir) or {"state": "unknown", "step": 0, "total": None, "message": ""}
    step, total = status.get("step") or 0, status.get("total")
    eta = status.get("eta_seconds") if status["state"] in runs.ACTIVE_STATES else None
    eta_text = "" if eta is None else f", about {eta / 60:.1f} min left" if eta >= 60 else f", about {eta:.0f} s left"
    st.progress(min(step / total, 1.0) if total else 0.0,
                text=f"`{run_dir.name}`: {status['state']}, step {step}/{total or '?'}{eta_text}")
    if status.get("message"):
        (st.error if status["state"] in ("failed", runs.INTERRUPTED) else st.caption)(status["message"])
    if status["state"] in runs.ACTIVE_STATES and st.button("Stop", key="pretrain.stop",
                                                           help="The job saves a checkpoint and ends at its next step."):
        runs.request_stop(run_dir)
        st.info("Stop requested: the job saves a checkpoint and ends at its next step.")
    metrics = runs.read_metrics(run_dir)
    if not metrics:
        st.caption("No metrics yet.")
        return
    st.plotly_chart(curves_figure({run_dir.name: metrics}, LOSS_TERMS), key="pretrain.live.losses")
    st.caption("Schedules: learning rate, weight decay, teacher EMA momentum, teacher temperature.")
    st.plotly_chart(curves_figure({run_dir.name: metrics}, SCHEDULE_TERMS), key="pretrain.live.schedules")


def show_runs(state: MutableMapping, listed: list[dict]) -> Path:
    """The table of past runs, a picker for the followed run (returned), and two runs' curves overlaid."""
    st.dataframe(runs_table(listed), hide_index=True)
    names = [r["name"] for r in listed]
    by_name = {r["name"]: Path(r["path"]) for r in listed}
    if state.get(FOLLOWED) not in names:
        state[FOLLOWED] = default_followed(listed)
    follow = st.selectbox("Follow run", names, key=FOLLOWED)
    compared = st.multiselect("Compare runs (two)", names, default=names[:2], max_selections=2,
                              key="pretrain.compare")
    if compared:
        st.plotly_chart(curves_figure({name: runs.read_metrics(by_name[name]) for name in compared}, LOSS_TERMS),
                        key="pretrain.compare.losses")
    return by_name[follow]
