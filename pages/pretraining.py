"""Pretraining: start Alice pretraining in the background, follow its progress and losses, compare runs."""

import streamlit as st

from alice import paths
from alice import runs as run_folders
from alice.mining.views import MODES
from alice.pretrain.config import PRESETS
from alice.ui import anatomy, runs

ss = st.session_state
st.title("Pretraining")
st.markdown("Alice pretraining runs as a background job (`alice pretrain`) that writes to its run folder; this "
            "page reads that folder every 2 s. Reloading the page or closing the tab does not stop the job.")
sam_ready = anatomy.sam_state(paths.sam_checkpoint()).ready
if not sam_ready:
    st.caption("No usable SAM checkpoint: the `sam` mining mode would fail; pick random_cross or same_volume.")
runs.show_start_form(ss, sorted(PRESETS), MODES, sam_ready)

listed = run_folders.list_runs(runs.KIND)
if not listed:
    st.info("No pretraining runs yet: start one above.")
    st.stop()
st.subheader("Runs")
followed = runs.show_runs(ss, listed)
st.subheader(f"Run {followed.name}")
runs.show_live(followed)
