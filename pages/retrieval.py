"""Landmark retrieval: click a voxel in one scan and find the same anatomy in every other scan of the cohort."""

import streamlit as st

from alice.errors import InputError
from alice.ui import dense, retrieval
from alice.ui.cases import list_cohorts, load_case_cached
from alice.ui.viewer import tri_planar_viewer

st.title("Landmark retrieval")
st.markdown("Click a voxel of the query scan: each embedding source finds the most similar place in every other "
            "scan (cosine similarity of dense embeddings, refined between lattice points). The **cycle error** "
            "sends the match back to the query scan (small = consistent); the **error to truth** is known for the "
            "pseudo-subjects, whose exact correspondence to their source scan is stored.")
st.caption("How well each source finds landmarks on the sample cohort: the Alice model card "
           "(`checkpoints/alice_cpu_tiny.md`) and `alice eval retrieval`. With the shipped models, Alice's matches "
           "are on average the closest, then SAM's; the untrained control's are far off. Each Alice vector joins "
           "the backbone's views of the scan at a fine and at coarser voxel sizes, each averaged over several "
           "placements of the sliding windows (README, *Representation explorer*).")
cohorts, problems = list_cohorts()
for problem in problems:
    st.error(problem)
names = [name for name, cohort in cohorts.items() if len(cohort.cases) >= 2]
if not names:
    st.info("Retrieval needs a cohort of at least two cases: build the sample cohort (`alice data prepare-samples`) "
            "or add cases.")
    st.stop()

cohort_column, case_column = st.columns(2)
cohort = cohorts[cohort_column.selectbox("Cohort", names, key="retrieval.cohort")]
query_id = case_column.selectbox("Query case", cohort.case_ids, key="retrieval.query_case")
sources = {name: dense.source(name) for name in dense.SOURCE_LABELS}
available = [name for name, s in sources.items() if s.settings is not None]
chosen = st.multiselect("Embedding sources (several: compared side by side)", list(sources),
                        default=[n for n in ("alice", "sam") if n in available][:2] or available[:1],
                        format_func=dense.SOURCE_LABELS.get, key="retrieval.sources")
for name in chosen:
    if sources[name].problem:
        st.error(sources[name].problem)
chosen = [name for name in chosen if sources[name].settings is not None]

try:
    query = load_case_cached(cohort.get(query_id))
except InputError as exc:
    st.error(f"Cannot load case {query_id}: {exc}")
    st.stop()
st.subheader(f"Query: {query_id}")
point = tri_planar_viewer("retrieval.query_view", query.image, query.label, query.label_names,
                          case_key=f"{cohort.name}/{query_id}", height_px=300)
st.caption(f"Query point: voxel {point.ijk}, ({', '.join(f'{v:.1f}' for v in point.xyz_mm)}) mm, "
           f"{point.value:.0f} HU{', ' + point.structure if point.structure else ''}.")
if not chosen:
    st.info("Choose at least one embedding source.")
    st.stop()

records = list(cohort.cases)
results = {}
for name in chosen:
    try:
        results[name] = retrieval.run_query(sources[name], records, query_id, point.xyz_mm)
    except InputError as exc:
        st.warning(f"{dense.SOURCE_LABELS[name]}: {exc}")
if not results:
    st.stop()

if len(results) > 1:
    st.subheader("Sources side by side")
    st.dataframe(retrieval.comparison_frame(results))
st.download_button("Download the matches (CSV)", retrieval.export_csv(results), file_name=f"retrieval-{query_id}.csv",
                   mime="text/csv", key="retrieval.download")
for column, (name, result) in zip(st.columns(len(results)), results.items()):
    with column:
        st.subheader(dense.SOURCE_LABELS[name])
        st.dataframe(retrieval.matches_frame(result), hide_index=True)
        with st.expander("Cohort-wide top-10 (FAISS)"):
            st.dataframe(result.top_k, hide_index=True)
        retrieval.show_gallery(result, {r.case_id: r for r in records}, point.ijk, cohort.name,
                               key=f"retrieval.{name}", per_row=2 if len(results) > 1 else 4)
