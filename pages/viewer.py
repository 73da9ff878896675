"""Cohort viewer: pick a cohort and a case, then look at it in three planes."""

import streamlit as st

from alice.errors import InputError
from alice.ui.cases import list_cohorts, load_case_cached
from alice.ui.state import viewer_crosshair_key
from alice.ui.viewer import tri_planar_viewer

st.title("Cohort viewer")
cohorts, problems = list_cohorts()
for problem in problems:
    st.error(problem)
names = [name for name, cohort in cohorts.items() if cohort.cases]
if not names:
    st.info("No cases to show yet: build the sample cohort (`alice data prepare-samples`) or add a case.")
    st.page_link("../pages/add_case.py", label="Add a case", icon=":material/upload_file:")
else:
    left, right = st.columns(2)
    cohort = cohorts[left.selectbox("Cohort", names, key="viewer_page.cohort")]
    case_id = right.selectbox("Case", cohort.case_ids, key="viewer_page.case")
    try:
        case = load_case_cached(cohort.get(case_id))
    except InputError as exc:
        st.error(f"Cannot load case {case_id}: {exc}")
    else:
        shape = " x ".join(map(str, case.image.shape))
        spacing = " x ".join(f"{s:.3g}" for s in case.image.spacing_mm)
        st.caption(f"{case_id}: {shape} voxels of {spacing} mm, shown in RAS+ world mm (radiological: the "
                   "patient's right is on the image's left). Click a view to move the crosshair.")
        tri_planar_viewer("viewer", case.image, case.label, case.label_names, case_key=f"{cohort.name}/{case_id}",
                          crosshair_ijk=st.session_state.get(viewer_crosshair_key(cohort.name, case_id)))
