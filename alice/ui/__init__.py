"""The app's building blocks: the only part of ``alice`` that imports Streamlit and Plotly."""
