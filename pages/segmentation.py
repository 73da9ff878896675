"""Segmentation: a fine-tuned model on a case (prediction, ground truth, errors, Dice), and fine-tuning jobs."""

import streamlit as st

from alice import runs as run_folders
from alice.ui import runs, segmentation

ss = st.session_state
st.title("Segmentation")
st.markdown("A segmentation network fine-tuned from scratch or from Alice (`alice finetune`) predicts the structures "
            "of its label set in a scan. Pick a model and a case, compare the prediction with the ground truth "
            "(the case's labels mapped to the model's classes), look at where it errs, and read the Dice and HD95 "
            "per structure. Below, start a fine-tuning run: it runs in the background and this page follows it.")
st.subheader("Inspect a model")
segmentation.show_inspection(ss, run_folders.list_runs(segmentation.KIND))

st.subheader("Fine-tune")
segmentation.show_start_form(ss)
listed = run_folders.list_runs(segmentation.KIND)  # after the form: Start may have added a run
if listed:
    followed = runs.show_runs(ss, listed, segmentation.PANEL)
    st.subheader(f"Run {followed.name}")
    runs.show_live(followed, segmentation.PANEL)
