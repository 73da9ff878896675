"""Alice Explorer: Alice self-supervised learning for 3D CT (Jiang et al., ICCV 2023) and the tools to see it.

The package is organised by pipeline stage: ``alice.data`` (volumes, sample cohort, pseudo-subjects, cohorts),
then the later stages. ``alice.ui`` is the only module that imports Streamlit.
"""

__version__ = "0.1.0"
