"""Add a case: upload a CT (and label map) or name files on the server; it joins the user cohort."""

import streamlit as st

from alice.data.uploads import MAX_UPLOAD_MB, Upload, add_case
from alice.errors import InputError

st.title("Add a case")
st.markdown("A CT in NIfTI (`.nii`, `.nii.gz`) or NRRD (`.nrrd`), optionally with a label map on the same grid "
            "and a label-names CSV (columns `value,name`). The case is converted to canonical RAS+ NIfTI in the "
            f"workspace's user cohort; your files are only read. Uploads up to {MAX_UPLOAD_MB} MB each.")

upload_tab, path_tab = st.tabs(["Upload files", "Files on the server"])
with upload_tab, st.form("add_case.upload"):
    image = st.file_uploader("CT image", type=["nii", "gz", "nrrd"], key="add_case.image")
    label = st.file_uploader("Label map (optional)", type=["nii", "gz", "nrrd"], key="add_case.label")
    names = st.file_uploader("Label names CSV (optional)", type=["csv"], key="add_case.names")
    upload_id = st.text_input("Case id (optional: taken from the file name)", key="add_case.upload_id")
    uploaded = st.form_submit_button("Add uploaded case")
with path_tab, st.form("add_case.paths"):
    image_path = st.text_input("CT image path (a file, or a DICOM series folder)", key="add_case.image_path")
    label_path = st.text_input("Label map path (optional)", key="add_case.label_path")
    names_path = st.text_input("Label names CSV path (optional)", key="add_case.names_path")
    path_id = st.text_input("Case id (optional: taken from the file name)", key="add_case.path_id")
    from_paths = st.form_submit_button("Add case from paths")

if uploaded or from_paths:
    try:
        with st.spinner("Reading and converting..."):
            if uploaded:
                record = add_case(Upload.of(image), Upload.of(label), Upload.of(names), upload_id)
            else:
                record = add_case(image_path, label_path, names_path, path_id)
    except (InputError, OSError) as exc:
        st.error(str(exc))
    else:
        st.success(f"Added case **{record.case_id}** to the user cohort: {' x '.join(map(str, record.shape))} "
                   f"voxels of {' x '.join(f'{s:.3g}' for s in record.spacing_mm)} mm"
                   f"{', with labels' if record.label else ''}.")
        st.session_state["viewer_page.cohort"] = "user"
        st.session_state["viewer_page.case"] = record.case_id
        st.page_link("../pages/viewer.py", label=f"View {record.case_id} in the cohort viewer",
                     icon=":material/view_in_ar:")
