"""Home: what the app does, a guided tour, the cohorts, the compute device and the pipeline stages."""

import streamlit as st

from alice import system
from alice.ui.cases import list_cohorts

st.title("Alice Explorer")
st.markdown(
    "Alice learns anatomy from unlabelled 3D CT by self-supervision (Jiang et al., ICCV 2023): two views of "
    "different scans that show the **same anatomical place**, found by a SAM anatomical embedding, are pulled "
    "together. This app shows the data, each stage of the pipeline, and what the model learned.")

st.subheader("Guided tour")
st.markdown(
    "1. **Meet the data.** The cohort table below lists real chest CTs (`lidc0001` has 89 labelled structures, "
    "`lung1` and `lung2` one lesion each) and pseudo-subjects with known voxel correspondence.\n"
    "2. **Look at a scan.** Open the *Cohort viewer*, pick `lidc0001` and click the liver: the readout names the "
    "structure and gives its position in world mm (RAS+). The liver sits on the image's **left**, next to the "
    "**R**: scans are shown the radiological way, as if facing the patient. Try the *Lung* and *Bone* windows.\n"
    "3. **Bring your own.** *Add a case* takes a NIfTI or NRRD CT (and a label map) and converts it into your "
    "user cohort; the original file is never changed.\n"
    "4. **Follow the pipeline.** The stages below run in order, each made by one command; a stage shows as "
    "present once its output exists. Commands marked *planned* are not written yet.\n"
    "5. **Segment.** The *Segmentation* page fine-tunes a network in the background (from scratch or from Alice) "
    "and shows its prediction against a held-out case's labels: where it errs, and its Dice per structure.")
st.page_link("../pages/viewer.py", label="Open the cohort viewer", icon=":material/view_in_ar:")

st.subheader("Cohorts")
cohorts, problems = list_cohorts()
for problem in problems:
    st.error(problem)
for name, cohort in cohorts.items():
    st.markdown(f"**{name}** ({len(cohort.cases)} cases)")
    st.dataframe(cohort.to_frame(), hide_index=True)

st.subheader("Compute device")
device = system.device_summary()
st.markdown(f"**{device['device']}** · torch {device['torch']} · {device['threads']} CPU threads "
            f"({device['cpus']} cores visible)")

st.subheader("Pipeline stages")
st.dataframe([{"stage": s.name, "state": "present" if s.present else "absent",
               "command": f"{s.command} (planned)" if s.planned else s.command, "path checked": str(s.path)}
              for s in system.pipeline_stages()], hide_index=True)
st.markdown("Commands available today:\n" + "\n".join(
    f"- `{command}`: {purpose}" for command, purpose in system.AVAILABLE_COMMANDS.items()))
