"""View mining: how Alice picks its two views, a query point, its SAM match in another patient, and the crops."""

import streamlit as st

from alice import paths
from alice.errors import InputError
from alice.mining.views import DEFAULT_THRESHOLD, MODES
from alice.ui import anatomy, mining
from alice.ui.cases import list_cohorts, load_case_cached
from alice.ui.viewer import tri_planar_viewer

ss = st.session_state
st.title("View mining")
st.markdown("Alice trains on two views of **different patients at the same anatomical place**: a random point "
            "in the query scan, its SAM match in the key scan, kept when the score reaches the threshold. Click "
            "the query scan to move the point; the key scan shows the match and SAM's similarity as a heat map.")
cohorts, problems = list_cohorts()
for problem in problems:
    st.error(problem)
sam = anatomy.sam_state(paths.sam_checkpoint())
if not sam.ready:
    st.error(sam.problem)
else:
    st.caption(f"SAM checkpoint `{sam.path}` (step {sam.step}).")
names = [name for name, cohort in cohorts.items() if cohort.cases]
if not names:
    st.info("No cases yet: build the sample cohort (`alice data prepare-samples`) or add a case.")
    st.stop()

mode = st.radio("Mode", MODES, format_func=mining.MODE_LABELS.get, horizontal=True, key="mining.mode")
cohort_column, query_column, key_column, threshold_column = st.columns(4)
cohort = cohorts[cohort_column.selectbox("Cohort", names, key="mining.cohort")]
query_id = query_column.selectbox("Query case", cohort.case_ids, key="mining.query_case")
key_ids = mining.key_choices(cohort.case_ids, query_id, mode)
if not key_ids:
    st.info(f"The {mode} mode pairs two patients and this cohort has one case: add a case, or pick same_volume.")
    st.stop()
key_id = key_column.selectbox("Key case", key_ids, disabled=mode == "same_volume",
                              key="mining.same_case" if mode == "same_volume" else "mining.key_case")
threshold = threshold_column.slider("Threshold", 0.0, 1.0, DEFAULT_THRESHOLD, 0.05, key="mining.threshold")
try:
    query, key = load_case_cached(cohort.get(query_id)), load_case_cached(cohort.get(key_id))
except InputError as exc:
    st.error(f"Cannot load the case: {exc}")
    st.stop()
query_key = f"{cohort.name}/{query_id}"

random_column, mine_column, _ = st.columns([1, 1, 4])
try:
    if random_column.button("Random point", key="mining.random", help="Above -125 HU, away from the border."):
        mining.request_random_point(ss, query_key, query.image)
    if mine_column.button("Mine a pair", key="mining.mine", help="Random points until one reaches the threshold."):
        mining.mine_pair(ss, sam, mode, query, key, query_key, threshold)
except InputError as exc:
    st.error(str(exc))

st.subheader(f"Query view: {query_id}")
point = tri_planar_viewer("mining.query_view", query.image, query.label, query.label_names, case_key=query_key,
                          crosshair_ijk=mining.requested_ijk(ss, query_key), height_px=300)
try:
    shown = mining.shown_pair(ss, sam, mode, query, key, point.ijk, threshold)
except InputError as exc:
    st.error(str(exc))
    st.stop()
mining.show_pair_summary(shown, threshold, key.image)
st.subheader(f"Key view: {key_id}")
tri_planar_viewer("mining.key_view", key.image, key.label, key.label_names, case_key=f"{cohort.name}/{key_id}",
                  crosshair_ijk=shown.key_ijk, overlays=shown.overlays(), markers=shown.markers(key.image),
                  height_px=300, labels_shown=False)

mining.show_crops(query.image, point.ijk, key.image, shown.key_ijk)
mining.show_gallery(sam, cohort, mode, threshold)
mining.show_landmark_query(sam, cohort, query, point)
