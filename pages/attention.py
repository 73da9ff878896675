"""Attention (CAFA): one mined pair through the Alice model: masks, reconstruction, CAFA attention, token agreement."""

import streamlit as st

from alice import paths
from alice.errors import InputError
from alice.ui import anatomy, attention
from alice.ui.cases import list_cohorts

ss = st.session_state
st.title("Attention (CAFA)")
st.markdown("One mined pair through the Alice model, as in one training step: the student sees masked crops and "
            "reconstructs them; CAFA lets each encoder token of a crop attend to the decoder tokens of the same "
            "crop. Pick a query token to see where it looks.")
sources = attention.model_sources()
label = st.selectbox("Model", list(sources), key="attention.model")
try:
    bundle = attention.load_model(sources[label])
except (InputError, OSError) as exc:
    st.error(f"Cannot load the model: {exc}")
    st.stop()
if sources[label] is None:
    st.warning("Untrained model, for illustration only: its attention, reconstruction and similarities are random. "
               "Train one on the Pretraining page and pick its run here.")
else:
    st.caption(f"Checkpoint `{sources[label]}` at step {bundle[2]}.")

cohorts, problems = list_cohorts()
for problem in problems:
    st.error(problem)
cohort = next((c for c in cohorts.values() if len(c.cases) >= 2), None)
if cohort is None:
    st.info("Needs a cohort of at least two cases: build the sample cohort (`alice data prepare-samples`).")
    st.stop()
sam = anatomy.sam_state(paths.sam_checkpoint())
st.caption(f"Cohort `{cohort.name}`; mining mode " + ("sam (SAM-matched, as Alice)." if sam.ready else
                                                    "random_cross (no usable SAM checkpoint)."))
seed = attention.show_pair_choice(ss)
try:
    pair = attention.mine_pair(sam, cohort, seed)
    found = attention.run_inspection(bundle, sources[label], sam, cohort, pair, seed)
except InputError as exc:
    st.error(str(exc))
    st.stop()
attention.show_losses(found, pair)
st.subheader("Masks and reconstruction")
attention.show_inputs(found)
st.subheader("CAFA attention")
view, token, head, cell = attention.show_token_choice(found)
if found.attention is None:
    st.info("This model was trained without CAFA: there is no attention to show.")
else:
    attention.show_attention(found, view, token, head, cell)
st.subheader("Teacher-student agreement")
attention.show_similarity(found, view, cell)
st.subheader("What the tokens encode")
attention.show_token_statistics(bundle, sources[label], cohort)
