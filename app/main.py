"""Alice Explorer: the router. Page config and navigation only; each page lives in ``pages/``."""

import streamlit as st

st.set_page_config(page_title="Alice Explorer", layout="wide")
st.navigation([
    st.Page("../pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("../pages/viewer.py", title="Cohort viewer", icon=":material/view_in_ar:"),
    st.Page("../pages/add_case.py", title="Add a case", icon=":material/upload_file:"),
    st.Page("../pages/view_mining.py", title="View mining", icon=":material/join_inner:"),
    st.Page("../pages/pretraining.py", title="Pretraining", icon=":material/model_training:"),
    st.Page("../pages/attention.py", title="Attention (CAFA)", icon=":material/center_focus_strong:"),
    st.Page("../pages/retrieval.py", title="Landmark retrieval", icon=":material/my_location:"),
    st.Page("../pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
    st.Page("../pages/segmentation.py", title="Segmentation", icon=":material/grid_view:"),
]).run()
