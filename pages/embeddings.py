"""Embeddings: a map of every patch's embedding, coloured by structure, case or HU; a selection on it, in the scans."""

import streamlit as st

from alice.errors import InputError
from alice.ui import dense, embeddings
from alice.ui.cases import list_cohorts, load_case_cached
from alice.ui.viewer import tri_planar_viewer

ss = st.session_state
st.title("Embeddings")
st.markdown("Every few mm inside the body, the model turns the scan into a vector. The map puts these patch "
            "vectors on a plane (PCA, or UMAP on request): patches the model finds alike lie close together. "
            "Colour the map by structure to see whether anatomy groups, by case to see whether scans mix. "
            "**Draw a box or a lasso** on the map to see where the selected patches lie in the scans.")
cohorts, problems = list_cohorts()
for problem in problems:
    st.error(problem)
names = [name for name, cohort in cohorts.items() if cohort.cases]
if not names:
    st.info("No cases yet: build the sample cohort (`alice data prepare-samples`) or add a case.")
    st.stop()

source_column, cohort_column = st.columns([1, 1])
choices = list(dense.SOURCE_LABELS)
source_name = source_column.selectbox("Embedding source", choices, index=choices.index(embeddings.default_source()),
                                      format_func=dense.SOURCE_LABELS.get, key="embeddings.source")
source = dense.source(source_name)
if source.problem:
    st.error(source.problem)
    st.stop()
cohort = cohorts[cohort_column.selectbox("Cohort", names, key="embeddings.cohort")]
cases_key = f"embeddings.cases.{cohort.name}"
ss.setdefault(cases_key, cohort.case_ids)
case_ids = st.multiselect("Cases", cohort.case_ids, key=cases_key,
                          help="Cases not embedded yet are embedded once and cached on disk.")
if not case_ids:
    st.info("Pick at least one case.")
    st.stop()
records = [cohort.get(case_id) for case_id in case_ids]
try:
    found = dense.cohort_embeddings(records, source.settings)
    label_names = embeddings.label_names(records)
except InputError as exc:
    st.error(f"Cannot embed the cases: {exc}")
    st.stop()

colour_column, method_column = st.columns([1, 1])
colour_by = colour_column.radio("Colour by", embeddings.COLOURINGS, horizontal=True, key="embeddings.colour")
method = method_column.radio("Map", list(embeddings.METHOD_LABELS), format_func=embeddings.METHOD_LABELS.get,
                             horizontal=True, key="embeddings.method")
shown = embeddings.choose_projection(ss, records, found, source.settings, method)
st.caption(embeddings.caption(shown, source.label))
ids = embeddings.map_chart(shown, label_names, colour_by)

table = embeddings.selection(shown, ids, label_names)
embeddings.show_selection(table, f"selection-{source_name}-{shown.method}.csv")

st.subheader("In the scan")
view_column, rgb_column = st.columns([2, 1], vertical_alignment="bottom")
view_id = view_column.selectbox("Case", embeddings.viewed_cases(table, case_ids), key="embeddings.view_case",
                                help="Cases with selected patches (all cases while nothing is selected).")
rgb = rgb_column.checkbox("PCA-to-RGB overlay", key="embeddings.rgb",
                          help="Colour each patch by the case's first three principal components (red, green, blue): "
                               "alike colours are alike vectors.")
try:
    case = load_case_cached(cohort.get(view_id))
except InputError as exc:
    st.error(f"Cannot load case {view_id}: {exc}")
    st.stop()
overlays = embeddings.overlays(records, source.settings, shown, ids, found[case_ids.index(view_id)], case, rgb)
tri_planar_viewer("embeddings.viewer", case.image, case.label, case.label_names, case_key=f"{cohort.name}/{view_id}",
                  crosshair_ijk=embeddings.first_selected_ijk(table, view_id), overlays=overlays, height_px=320,
                  labels_shown=False)
